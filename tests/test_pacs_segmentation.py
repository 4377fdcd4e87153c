"""``mri-tumor pacs run --segment`` against a real Orthanc: a FLAIR series of a real glioma
patient (``tests/fixtures/flair``) gets a DICOM Segmentation in its study, valid by dciodvfy,
referencing its images in their order, and the report gains the tumour volume as a TID 1411
measurement referencing that segmentation."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from tests.dicom_factory import STUDY_IDENTIFIERS, _plane, _series, dicom_bytes
from tests.test_pacs import SECRETS, dciodvfy_errors, instance_files, run_cli, series_by_modality

from mri_tumor.cli import main
from mri_tumor.pacs.segmentation import header_sequence, names_sequence

FLAIR = Path(__file__).parent / "fixtures" / "flair"
STUDY = {"StudyDate": "20240315", "StudyTime": "101500", "StudyID": "1",
         "StudyDescription": "MRI BRAIN", "PatientSex": "F", **STUDY_IDENTIFIERS}


def series_files(images: list[np.ndarray], number: int, description: str, study_uid: str,
                 **attributes: object) -> list[bytes]:
    """One axial MR series of ``images`` (8-bit grey), 6 mm apart, as Part 10 files."""
    series = {**STUDY, **_series(number, description, "MR"), **attributes}
    series_uid = generate_uid()
    return [dicom_bytes(pixels, bits=16, window=(128.0, 256.0), series_uid=series_uid,
                        instance=n, study_uid=study_uid,
                        attributes={**series, **_plane(*pixels.shape, n - 1)})
            for n, pixels in enumerate(images, start=1)]


def predicted_and_read(predictor, files: list[bytes], folder: Path) -> tuple[list, list]:
    """``predict``'s results for ``files`` written as a folder, and the files as datasets."""
    paths = []
    for n, data in enumerate(files):
        paths.append(folder / f"{n:02d}.dcm")
        paths[-1].write_bytes(data)
    return predictor.predict(paths), [pydicom.dcmread(io.BytesIO(data)) for data in files]


def grey(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def test_the_header_decides_which_series_is_flair() -> None:
    def header(**attributes: object) -> pydicom.Dataset:
        dataset = pydicom.Dataset()
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        return dataset

    assert names_sequence(header(SeriesDescription="Ax T2 FLAIR"), "FLAIR")
    assert names_sequence(header(ProtocolName="brain_flair_3d"), "FLAIR")
    assert names_sequence(header(SeriesDescription="AX IR", InversionTime=2500.0), "FLAIR")
    assert not names_sequence(header(SeriesDescription="STIR", InversionTime=150.0), "FLAIR")
    assert not names_sequence(header(SeriesDescription="T1 axial"), "FLAIR")
    assert not names_sequence(header(), "FLAIR")
    assert header_sequence(header(SeriesDescription="Ax T2 FLAIR")) == "FLAIR"
    assert header_sequence(header(SeriesDescription="AX T1 SE")) == "T1"
    assert header_sequence(header(SeriesDescription="T1 post")) == "T1C+"
    assert header_sequence(header(SeriesDescription="Ax T1+C")) == "T1C+"
    assert header_sequence(header(SeriesDescription="t1_mprage_gd")) == "T1C+"
    assert header_sequence(header(SeriesDescription="AX T1", ContrastBolusAgent="Gadovist")) \
        == "T1C+"
    assert header_sequence(header(SeriesDescription="Ax T2 TSE")) is None
    assert header_sequence(header(SeriesDescription="T1 cerebellum")) == "T1"  # "ce" in a word


def test_pacs_run_segment_stores_a_valid_segmentation_and_the_volume(
        orthanc, tmp_path: Path, capsys) -> None:
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy (Debian package dicom3tools) is needed to validate the SEG")
    study_uid = generate_uid()
    flair_paths = sorted(FLAIR.glob("*_FLAIR.jpg"))
    flair = series_files([grey(p) for p in flair_paths], 4, "FLAIR axial", study_uid)
    t1 = series_files([grey(p) for p in flair_paths[:3]], 1, "T1 axial", study_uid)
    for data in [*t1, *flair]:
        orthanc.upload(data)

    assert run_cli(orthanc, "--segment") == 0
    out = capsys.readouterr().out
    assert "series 1: not outlined: the header does not name it FLAIR" in out
    found = re.search(r"series 4: tumour outlined: ([\d.]+) mL over (\d+) slices", out)
    assert found, out
    assert "1 segmentation(s), marked unverified" in out
    series = series_by_modality(orthanc, study_uid)
    assert len(series["SEG"]) == 1 and len(series["SR"]) == 1

    [seg_bytes] = instance_files(orthanc, series["SEG"][0])
    assert dciodvfy_errors(seg_bytes, tmp_path) == []
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert "NOT FOR DIAGNOSIS" in seg.SeriesDescription
    assert "UNVERIFIED" in seg.ContentDescription
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    # Each frame names the FLAIR image it lies on; on those images it matches the manual
    # outline (a training patient: this checks the geometry, not the accuracy).
    sources = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: i for i, d in enumerate(flair)}
    outlined = np.zeros((len(flair), 256, 256), bool)
    for k, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        outlined[sources[uid]] = seg.pixel_array.reshape(-1, 256, 256)[k] > 0
    manual = np.stack([grey(p) > 127 for p in sorted(FLAIR.glob("*_mask.png"))])
    dice = 2 * (outlined & manual).sum() / (outlined.sum() + manual.sum())
    assert dice > 0.7
    assert int(found[2]) == int(outlined.any(axis=(1, 2)).sum())

    [report_bytes] = instance_files(orthanc, series["SR"][0])
    assert dciodvfy_errors(report_bytes, tmp_path) == []
    report = pydicom.dcmread(io.BytesIO(report_bytes))
    assert report.VerificationFlag == "UNVERIFIED"
    volumes = [item for item in _walk(report.ContentSequence) if item.ValueType == "NUM"
               and item.ConceptNameCodeSequence[0].CodeValue == "118565006"]
    assert len(volumes) == 1
    value = volumes[0].MeasuredValueSequence[0]
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "ml"
    assert float(value.NumericValue) == pytest.approx(float(found[1]), abs=0.06)
    references = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in _walk(report.ContentSequence) if item.ValueType == "IMAGE"
                  and "ReferencedSegmentNumber" in item.ReferencedSOPSequence[0]]
    assert references == [seg.SOPInstanceUID]
    for secret in SECRETS:
        assert secret not in out


def test_segmenter_without_segment_is_a_usage_error(capsys) -> None:
    status = main(["pacs", "run", "--url", "http://localhost:1/dicom-web",
                   "--segmenter", "somewhere"])
    assert status == 2
    assert "--segmenter needs --segment" in capsys.readouterr().err


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def test_a_series_is_read_as_one_stack_as_predict_reads_it(predictor, tmp_path: Path) -> None:
    """PACS classifies a series' slices as ``predict`` does (stacked along the slice
    normal, windowed once per volume), whatever order the instances arrive in, and each
    slice's result stays with its own instance."""
    from mri_tumor.inference.scans import scan_summaries
    from mri_tumor.pacs.results import analyse

    files = series_files([grey(p) for p in sorted(FLAIR.glob("*_FLAIR.jpg"))], 4,
                         "FLAIR axial", generate_uid())
    by_cli, datasets = predicted_and_read(predictor, files, tmp_path)
    analysed = analyse(predictor, datasets[::-1])
    assert len(analysed) == len(by_cli)
    assert {a.result.slice_index for a in analysed} == {r.slice_index for r in by_cli}
    paths = sorted(tmp_path.glob("*.dcm"))  # in the order written: the files' order
    uid_of_path = {str(path): ds.SOPInstanceUID for path, ds in zip(paths, datasets, strict=True)}
    expected = {uid_of_path[r.path]: (r.label, r.confidence) for r in by_cli}
    assert {a.source.SOPInstanceUID: (a.result.label, a.result.confidence)
            for a in analysed} == expected
    card = predictor.card
    [from_pacs] = scan_summaries([a.result for a in analysed], card)
    [from_cli] = scan_summaries(by_cli, card)
    assert (from_pacs["label"], from_pacs["probability"]) == (from_cli["label"],
                                                              from_cli["probability"])


def sagittal_series_files(volume: np.ndarray, number: int, description: str,
                          every: int = 4) -> list[bytes]:
    """A sagittal MR series cut from an axial stack ``volume`` (slices, rows, columns; 6 mm
    apart, rows anterior to posterior, columns right to left): every ``every``-th column
    becomes an image whose rows run superior to inferior and whose columns run anterior to
    posterior (ImageOrientationPatient 0\\1\\0\\0\\0\\-1)."""
    slices, rows, columns = volume.shape
    axial, next_axial = _plane(rows, columns, 0), _plane(rows, columns, 1)
    spacing = float(axial["PixelSpacing"][0])  # type: ignore[index]
    x0, y0 = (float(v) for v in axial["ImagePositionPatient"][:2])  # type: ignore[index]
    step = float(next_axial["SliceLocation"]) - float(axial["SliceLocation"])  # type: ignore[arg-type]
    series, series_uid, study_uid = {**STUDY, **_series(number, description, "MR")}, \
        generate_uid(), generate_uid()
    files = []
    for n, column in enumerate(range(0, columns, every), start=1):
        image = volume[::-1, :, column]  # superior first, anterior first
        plane = {"PixelSpacing": [step, spacing], "ImageOrientationPatient": [0, 1, 0, 0, 0, -1],
                 "ImagePositionPatient": [x0 + column * spacing, y0, (slices - 1) * step],
                 "SliceThickness": spacing * every}
        files.append(dicom_bytes(image, bits=16, window=(128.0, 256.0), series_uid=series_uid,
                                 instance=n, study_uid=study_uid,
                                 attributes={**series, **plane}))
    return files


def test_a_sagittal_series_is_read_on_axial_slices_as_predict_reads_it(predictor,
                                                                       tmp_path: Path) -> None:
    """A series acquired in another plane is answered, as ``predict`` answers it, on the
    axial slices reformatted from it; the report refers the series' answer to all its
    instances and gives no reformatted slice a group or an overlay of its own."""
    from mri_tumor.inference.scans import scan_summaries
    from mri_tumor.pacs.study import Outlining, results_for

    volume = np.stack([grey(p) for p in sorted(FLAIR.glob("*_FLAIR.jpg"))])
    files = sagittal_series_files(volume, 5, "FLAIR sagittal", every=2)
    by_cli, datasets = predicted_and_read(predictor, files, tmp_path)
    analysed, objects, outlines = results_for(predictor, datasets[::-1], "1.2.3",
                                              outlining=Outlining.load())
    assert len(analysed) == len(by_cli) == len(volume)  # the axial slices, not 64 sagittal
    assert all(len(a.cut_from) == len(files) and "reformatted" in a.where for a in analysed)
    assert ({a.result.slice_index: (a.result.label, a.result.confidence) for a in analysed}
            == {r.slice_index: (r.label, r.confidence) for r in by_cli})
    card = predictor.card
    [from_pacs], [from_cli] = (scan_summaries([a.result for a in analysed], card),
                               scan_summaries(by_cli, card))
    assert (from_pacs["label"], from_pacs["probability"]) == (from_cli["label"],
                                                              from_cli["probability"])
    report, *others = objects
    overlays = [o for o in others if o.Modality != "SEG"]
    assert overlays == []  # no reformatted slice is one source image's
    referenced = {element.value for item in report.ContentSequence
                  for element in item.iterall()
                  if element.keyword == "ReferencedSOPInstanceUID"}
    assert referenced >= {ds.SOPInstanceUID for ds in datasets}
    groups = [item for item in _walk(report.ContentSequence)
              if item.get("ConceptNameCodeSequence")
              and item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
    assert [g.TextValue for g in groups if "summary" in g.TextValue] == ["series 5 summary"]
    assert not [g for g in groups if "image" in g.TextValue]  # no per-instance groups
    # The outline is still drawn on the sagittal instances themselves, and measures what the
    # same slices measure as an axial series.
    [outline] = outlines
    assert outline.segmentation is not None and outline.measurement is not None
    frames = outline.segmentation.PerFrameFunctionalGroupsSequence
    sources = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
               for f in frames}
    assert sources <= {ds.SOPInstanceUID for ds in datasets}
    axial = [pydicom.dcmread(io.BytesIO(data)) for data in series_files(
        list(volume), 6, "FLAIR axial", generate_uid())]
    [axial_outline] = results_for(predictor, axial, "1.2.4", outlining=Outlining.load())[2]
    assert axial_outline.measurement is not None
    assert outline.measurement.volume_ml == pytest.approx(axial_outline.measurement.volume_ml,
                                                          rel=0.2)


def test_a_flair_series_is_read_with_the_studys_t1_series_of_its_frame_of_reference(
        predictor) -> None:
    """With T1 and T1C+ series in the FLAIR's frame of reference (here on another grid: every
    other slice), the FLAIR + T1 + T1C+ model outlines the FLAIR, the others resampled onto
    its grid; in another frame of reference they are not used."""
    from mri_tumor.pacs.study import Outlining, results_for

    images = [grey(p) for p in sorted(FLAIR.glob("*_FLAIR.jpg"))]
    study_uid, frame = generate_uid(), generate_uid()
    flair = series_files(images, 4, "FLAIR axial", study_uid, FrameOfReferenceUID=frame)
    t1 = series_files(images[::2], 5, "T1 axial", study_uid, FrameOfReferenceUID=frame)
    t1c = series_files(images[::2], 6, "T1 axial post Gd", study_uid,
                       FrameOfReferenceUID=generate_uid())
    for n, data in enumerate(t1):  # 12 mm apart: another grid than the FLAIR's
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.ImagePositionPatient = [*dataset.ImagePositionPatient[:2], 2 * n * 6.0]
        dataset.SliceLocation = 2 * n * 6.0
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        t1[n] = buffer.getvalue()
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in [*flair, *t1, *t1c]]
    outlining = Outlining.load()
    _, objects, outlines = results_for(predictor, datasets, study_uid, outlining=outlining)
    [outline] = [o for o in outlines if o.series_number == "4"]
    assert outline.model is not None and outline.model.name == "segment_flair_t1_t1c"
    assert "(read with T1; T1 resampled onto its grid)" in outline.message  # not the T1C+
    [segmentation] = [o for o in objects if o.Modality == "SEG"]
    assert segmentation is outline.segmentation
    assert "mri-tumor segment_flair_t1_t1c" in str(segmentation.SegmentSequence[0])
    by_itself = results_for(predictor, [pydicom.dcmread(io.BytesIO(d)) for d in flair],
                            study_uid, outlining=outlining)[2][0]
    assert by_itself.model is not None and by_itself.model.name == "segment"
    assert "read with" not in by_itself.message
    assert [o.message.startswith("not outlined") for o in outlines
            if o.series_number in ("5", "6")] == [True, True]
