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
from mri_tumor.data.reading import ImageReadError, read_frames, read_image

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


def test_undecodable_syntax_and_truncated_file_give_clear_messages() -> None:
    with pytest.raises(ImageReadError, match="JPEG Extended"):
        read_image(PYDICOM_FILES / "JPEG-lossy.dcm")
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
    assert summaries[0]["slices"] == 3
    assert summaries[0]["slice"] in {line["path"] for line in per_slice}
    assert uid not in captured.out
    for value in PATIENT.values():
        assert value not in captured.out and value not in captured.err
    assert main(["predict", str(series)]) == 0  # the table has the summary line too
    table = capsys.readouterr().out
    assert "series" in table and "3 slices" in table
    assert all(value not in table for value in PATIENT.values())
