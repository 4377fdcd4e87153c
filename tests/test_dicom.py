"""DICOM input: display pipeline, frames, series, compressed syntaxes, no patient data out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from PIL import Image
from tests.dicom_factory import PATIENT, make_dicom

from mri_tumor.cli import main
from mri_tumor.data.reading import ImageReadError, NotMRIError, read_frames, read_image

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture
def slice_pixels(fixture_paths: list[Path]) -> np.ndarray:
    return np.asarray(Image.open(fixture_paths[0]).convert("L"))


def test_8_bit_monochrome2_round_trips_exactly(tmp_path: Path, slice_pixels: np.ndarray) -> None:
    path = make_dicom(slice_pixels, tmp_path / "a.dcm", bits=8)
    decoded = np.asarray(read_image(path))
    low, high = int(slice_pixels.min()), int(slice_pixels.max())
    expected = np.round((slice_pixels.astype(float) - low) / (high - low) * 255)
    assert np.array_equal(decoded, expected.astype(np.uint8))


def test_16_bit_with_rescale_and_window(tmp_path: Path, slice_pixels: np.ndarray) -> None:
    stored = slice_pixels.astype(np.uint16) * 16  # 12-bit-like values
    # Rescale to "real" values v = 2 * stored - 100, then a window over 0..4000.
    path = make_dicom(stored, tmp_path / "b.dcm", slope=2.0, intercept=-100.0,
                      window=(2000.0, 4000.0))
    decoded = np.asarray(read_image(path)).astype(float)
    real = stored.astype(float) * 2.0 - 100.0
    expected = np.clip(((real - 1999.5) / 3999 + 0.5) * 255, 0, 255)
    assert np.abs(decoded - expected).max() <= 1.0


def test_monochrome1_is_inverted(tmp_path: Path, slice_pixels: np.ndarray) -> None:
    normal = read_image(make_dicom(slice_pixels, tmp_path / "m2.dcm", bits=8))
    inverted = read_image(make_dicom(slice_pixels, tmp_path / "m1.dcm", bits=8,
                                     photometric="MONOCHROME1"))
    assert np.array_equal(np.asarray(inverted), 255 - np.asarray(normal))


def test_multi_frame_gives_one_frame_each(tmp_path: Path, slice_pixels: np.ndarray) -> None:
    stack = np.stack([slice_pixels, np.flipud(slice_pixels), slice_pixels // 2])
    frames = read_frames(make_dicom(stack, tmp_path / "multi.dcm"))
    assert [f.name.rsplit("#", 1)[1] for f in frames] == ["0", "1", "2"]
    assert frames[0].series == frames[2].series


def test_extension_less_dicom_is_detected_by_content(tmp_path: Path,
                                                      slice_pixels: np.ndarray) -> None:
    path = make_dicom(slice_pixels, tmp_path / "IM000123", bits=8)
    assert read_image(path).size == (slice_pixels.shape[1], slice_pixels.shape[0])


def test_pydicom_sample_mr_files_decode() -> None:
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):
        image = read_image(PYDICOM_FILES / name)
        assert image.size == (64, 64) and np.asarray(image).std() > 10, name


def test_undecodable_syntax_and_truncated_file_give_clear_messages(tmp_path: Path) -> None:
    lossy = pydicom.dcmread(PYDICOM_FILES / "JPEG-lossy.dcm")  # a nuclear medicine image
    lossy.Modality = "MR"  # so that the pixels are tried, not refused by the header
    lossy.save_as(tmp_path / "lossy.dcm")
    with pytest.raises(ImageReadError, match="JPEG Extended"):
        read_image(tmp_path / "lossy.dcm")
    with pytest.raises(ImageReadError, match="damaged or truncated"):
        read_image(PYDICOM_FILES / "MR_truncated.dcm")


def test_cli_series_summary_and_no_patient_data(tmp_path: Path, slice_pixels: np.ndarray,
                                                capsys) -> None:
    series = tmp_path / "series"
    series.mkdir()
    uid = "1.2.826.0.1.3680043.8.498.1"
    for index, pixels in enumerate([slice_pixels, np.fliplr(slice_pixels), slice_pixels]):
        make_dicom(pixels, series / f"slice{index:02d}", bits=8, series_uid=uid,
                   instance=index + 1)
    assert main(["predict", "--json", str(series)]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    per_slice = [line for line in lines if "path" in line]
    summaries = [line["series_summary"] for line in lines if "series_summary" in line]
    assert len(per_slice) == 3 and len(summaries) == 1
    assert summaries[0]["slices"] + summaries[0]["refused"] == 3
    assert set(summaries[0]["key_slices"] if summaries[0]["status"] == "ok" else []) <= {
        line.get("slice_index", line["path"]) for line in per_slice}
    assert uid not in captured.out
    for value in PATIENT.values():
        assert value not in captured.out and value not in captured.err
    assert main(["predict", str(series)]) == 0  # the table has the summary line too
    table = capsys.readouterr().out
    assert "scan " in table and "3 slices read)" in table and "scan-level probability" in table
    assert all(value not in table for value in PATIENT.values())
    # A slice of the series that the guard refuses (here a blank one) is counted, not
    # summarised.
    make_dicom(np.full_like(slice_pixels, 90), series / "slice03", bits=8, series_uid=uid,
               instance=4)
    assert main(["predict", str(series)]) == 0
    assert "(3 slices read, 1 refused as not brain MRI)" in capsys.readouterr().out


@pytest.mark.parametrize(("modality", "shown"), [
    ("CT", "CT (computed tomography)"), ("US", "US (ultrasound)"),
    ("CR", "CR (computed radiography)"), ("ZZ", "ZZ, not MR")])
def test_non_mr_modality_is_refused_by_the_header(tmp_path: Path, slice_pixels: np.ndarray,
                                                   modality: str, shown: str) -> None:
    path = make_dicom(slice_pixels, tmp_path / "slice.dcm", modality=modality)
    with pytest.raises(NotMRIError) as refused:
        read_frames(path, "slice.dcm")
    message = str(refused.value)
    assert isinstance(refused.value, ImageReadError) and refused.value.modality == modality
    assert message.startswith(f"slice.dcm: DICOM Modality is {shown}")
    assert "brain MRI only" in message and "\n" not in message
    assert all(value not in message for value in PATIENT.values())


def test_real_non_mr_samples_are_refused_naming_their_modality() -> None:
    for name, modality in (("CT_small.dcm", "CT"), ("JPEG-lossy.dcm", "NM")):
        with pytest.raises(NotMRIError, match=f"Modality is {modality} "):
            read_image(PYDICOM_FILES / name)


@pytest.mark.parametrize("modality", [
    "MR", "", None, "OT", "SC",  # OT/SC (secondary capture): judged by content, not the header
    pytest.param("mr", marks=pytest.mark.filterwarnings("ignore:Invalid value for VR CS"))])
def test_mr_and_untagged_dicom_are_still_read(tmp_path: Path, slice_pixels: np.ndarray,
                                              modality: str | None) -> None:
    path = make_dicom(slice_pixels, tmp_path / "slice.dcm", bits=8, modality=modality)
    assert ("Modality" in pydicom.dcmread(path)) == (modality is not None)
    [frame] = read_frames(path)
    assert frame.image.size == (slice_pixels.shape[1], slice_pixels.shape[0])


def test_cli_rejects_non_mr_dicom_and_exits_0(tmp_path: Path, fixture_paths: list[Path],
                                              capsys) -> None:
    pixels = np.asarray(Image.open(fixture_paths[0]).convert("L")).astype(np.uint16) * 16
    for name, modality in (("ct.dcm", "CT"), ("us.dcm", "US"), ("mr.dcm", "MR"),
                           ("untagged.dcm", None)):
        make_dicom(pixels, tmp_path / name, modality=modality)
    files = [str(tmp_path / n) for n in ("ct.dcm", "us.dcm", "mr.dcm", "untagged.dcm")]
    assert main(["predict", "--json", *files]) == 0  # a rejection is not a read failure
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["status"] for r in results] == ["rejected", "rejected", "ok", "ok"]
    assert "Modality is CT (computed tomography)" in results[0]["message"]
    assert "Modality is US (ultrasound)" in results[1]["message"]
    assert results[0]["label"] is None and results[0]["probabilities"] is None
    for value in PATIENT.values():
        assert value not in captured.out and value not in captured.err
    assert main(["predict", files[0]]) == 0
    table = capsys.readouterr().out
    assert "rejected" in table and "DICOM Modality is CT" in table


@pytest.mark.parametrize(("attributes", "keyword", "part"), [
    ({"BodyPartExamined": "LSPINE"}, "BodyPartExamined", "lumbar spine"),
    ({"BodyPartExamined": "SHOULDER"}, "BodyPartExamined", "shoulder"),
    ({"SeriesDescription": "SAG T2 L-SPINE Patient Doe"}, "SeriesDescription", "lumbar spine"),
    ({"StudyDescription": "MRI KNEE LEFT"}, "StudyDescription", "knee"),
])
def test_an_mr_header_naming_another_body_part_is_refused_naming_it(
        tmp_path: Path, slice_pixels: np.ndarray, attributes: dict, keyword: str,
        part: str) -> None:
    path = make_dicom(slice_pixels, tmp_path / "slice.dcm", attributes=attributes)
    with pytest.raises(NotMRIError) as refused:
        read_frames(path, "slice.dcm")
    message = str(refused.value)
    assert message.startswith(f"slice.dcm: the DICOM header ({keyword}) says this MRI shows "
                              f"the {part}, not the brain")
    assert "Doe" not in message and "\n" not in message  # the header's own text is not echoed
    assert refused.value.series  # one refusal for the whole series


@pytest.mark.parametrize("attributes", [
    {"BodyPartExamined": "BRAIN", "SeriesDescription": "KNEE"},  # the body part code decides
    {"BodyPartExamined": "HEAD"}, {"SeriesDescription": "AX T2 FLAIR"},
    {"StudyDescription": "MRI BRAIN AND C-SPINE"},  # the brain is in view too
    {"SeriesDescription": "HIPPOCAMPUS CORONAL"},  # a word that only starts like a part
    {},
])
def test_a_header_naming_the_brain_or_no_part_leaves_it_to_the_content(
        tmp_path: Path, slice_pixels: np.ndarray, attributes: dict) -> None:
    path = make_dicom(slice_pixels, tmp_path / "slice.dcm", attributes=attributes)
    [frame] = read_frames(path)
    assert frame.image.size == (slice_pixels.shape[1], slice_pixels.shape[0])
