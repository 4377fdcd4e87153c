"""Whole scans: NIfTI volumes and DICOM series read as axial stacks, and one answer per scan."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from tests.conftest import run_cli

from dicom_factory import PATIENT, make_dicom
from mri_tumor.data.reading import ImageReadError, read_frames
from mri_tumor.data.volume import axial_slices, read_nifti, window_volume
from mri_tumor.inference import OK, REJECTED, Prediction
from mri_tumor.inference.scans import (
    NOT_ASSESSABLE,
    ScanRule,
    fit_scan_rule,
    study_summary,
    summarise_scan,
    window_statistic,
)

SPACING = (0.9, 0.9, 4.0)  # mm: x (left-right), y (front-back), z (feet-head)


def phantom(shape: tuple[int, int, int] = (60, 70, 18)) -> np.ndarray:
    """A head-like ellipsoid in RAS voxel order (x right, y anterior, z superior) with a
    bright marker at the patient's right, front and top, so that orientation shows."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2 < 1
    volume = np.where(head, 400.0 + 150 * np.cos(6 * x) * np.sin(5 * y), 0.0)
    volume[(x > 0.3) & (x < 0.6) & (y > 0.4) & (y < 0.7) & (z > 0.2) & head] = 1500.0
    return volume.astype(np.float32)


def ras_affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def slices_of(path: Path) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.float32) for _, image, _ in
            axial_slices(read_nifti(path.read_bytes(), path.name))]


def write_series(volume: np.ndarray, folder: Path, *, uid: str | None = None,
                 order: list[int] | None = None, modality: str = "MR",
                 skip: tuple[int, ...] = (), description: str | None = None) -> str:
    """An axial DICOM series of a RAS volume: one file per z slice, with its position.
    DICOM rows run anterior to posterior and columns right to left (LPS)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    nz = volume.shape[2]
    for k in order if order is not None else range(nz):
        if k in skip:
            continue
        pixels = volume[::-1, ::-1, k].T  # rows: anterior first; columns: right first
        make_dicom(np.round(pixels).astype(np.uint16), folder / f"im{k * 7 % nz:03d}.dcm",
                   series_uid=uid, instance=k + 1, modality=modality, attributes={
                       "PixelSpacing": [SPACING[1], SPACING[0]],
                       "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                       "ImagePositionPatient": [-(volume.shape[0] - 1) * SPACING[0], -(
                           volume.shape[1] - 1) * SPACING[1], k * SPACING[2]],
                       **({"SeriesDescription": description} if description else {})})
    return uid


# -- reading volumes ----------------------------------------------------------------------
def test_a_sagittal_volume_gives_the_same_axial_slices_as_an_axial_one(tmp_path: Path) -> None:
    volume = phantom()
    axial = save_nifti(volume, ras_affine(), tmp_path / "axial.nii.gz")
    # The same head stored sagittally: array axes (y, z, x) -> voxel i = y (posterior to
    # anterior reversed), j = z, k = x; the affine says so, and reading must undo it.
    stored = np.ascontiguousarray(np.transpose(volume, (1, 2, 0))[::-1])
    affine = np.zeros((4, 4))
    affine[1, 0] = -SPACING[1]
    affine[2, 1] = SPACING[2]
    affine[0, 2] = SPACING[0]
    affine[1, 3] = (volume.shape[1] - 1) * SPACING[1]
    affine[3, 3] = 1
    sagittal = save_nifti(stored, affine, tmp_path / "sagittal.nii")
    a, s = slices_of(axial), slices_of(sagittal)
    assert len(a) == len(s) > 10
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, s, strict=True)) <= 1.0


def test_axial_slices_are_shown_anterior_up_patient_right_on_the_left(tmp_path: Path) -> None:
    path = save_nifti(phantom(), ras_affine(), tmp_path / "head.nii.gz")
    top = slices_of(path)[-3]  # a slice through the marker (superior half)
    rows, columns = np.nonzero(top >= 250)
    assert rows.mean() < top.shape[0] / 2  # anterior: upper half
    assert columns.mean() < top.shape[1] / 2  # patient's right: left half
    assert top.shape[0] == top.shape[1]  # square, in-plane pixels made square


def test_an_oblique_volume_is_read_in_its_closest_axial_orientation(tmp_path: Path) -> None:
    angle = np.deg2rad(12)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                         [0, np.sin(angle), np.cos(angle)]])
    affine = ras_affine()
    affine[:3, :3] = rotation @ affine[:3, :3]
    path = save_nifti(phantom(), affine, tmp_path / "oblique.nii.gz")
    frames = read_frames(path)
    assert len(frames) > 10
    assert [f.slice_index for f in frames] == sorted(f.slice_index for f in frames)


def test_bad_volumes_get_a_clear_message(tmp_path: Path) -> None:
    four_d = save_nifti(np.zeros((8, 8, 4, 3), np.float32), np.eye(4), tmp_path / "fmri.nii")
    with pytest.raises(ImageReadError, match=r"4-D NIfTI file .*3 volumes"):
        read_frames(four_d)
    data = gzip.compress(save_nifti(phantom(), ras_affine(), tmp_path / "x.nii").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="not a readable NIfTI file"):
        read_frames(tmp_path / "cut.nii.gz")


def test_window_is_set_once_per_volume_from_its_foreground() -> None:
    volume = phantom()
    windowed = window_volume(volume)
    assert windowed.dtype == np.uint8 and windowed.max() == 255
    assert windowed[volume == 0].max() == 0  # air stays black
    assert np.array_equal(window_volume(volume * 3 + 7), windowed)  # any scale, same image


# -- DICOM series --------------------------------------------------------------------------
def test_a_shuffled_dicom_series_is_stacked_by_position(tmp_path: Path) -> None:
    volume = phantom()
    write_series(volume, tmp_path / "series", order=[5, 2, 17, 0, 9, 1, 3, 4, 6, 7, 8, 10,
                                                      11, 12, 13, 14, 15, 16])
    nifti = slices_of(save_nifti(volume, ras_affine(), tmp_path / "v.nii"))
    from mri_tumor.data.reading import stack_series

    files = sorted((tmp_path / "series").iterdir())
    frames = stack_series([f for p in files for f in read_frames(p)])
    assert [f.slice_index for f in frames] == sorted(f.slice_index for f in frames)
    assert len(frames) == len(nifti)
    diff = max(float(np.abs(np.asarray(f.image, np.float32) - n).max())
               for f, n in zip(frames, nifti, strict=True))
    assert diff <= 2.0
    assert all(f.name.endswith(".dcm") for f in frames)  # native slices keep their file


def test_series_cli_json_contract_two_series_a_gap_and_no_patient_data(tmp_path: Path) -> None:
    study = tmp_path / "study"
    first = write_series(phantom(), study, skip=(9,))
    write_series(phantom() * 0.5, study / "second")
    for path in sorted((study / "second").iterdir()):
        path.rename(study / f"b_{path.name}")
    (study / "second").rmdir()
    status, out, err = run_cli("predict", "--json", str(study))
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    slices = [line for line in lines if "path" in line]
    summaries = [line["series_summary"] for line in lines if "series_summary" in line]
    assert len(summaries) == 2
    for summary in summaries:
        assert set(summary) >= {"source", "status", "label", "probability", "slices",
                                "refused", "message"}
        assert summary["source"] == str(study)
        assert summary["status"] in ("ok", "not_assessable")
        assert summary["slices"] + summary["refused"] > 10
    assert any("missing" in s["message"] for s in summaries)
    assert all(isinstance(line["slice_index"], int) for line in slices)
    assert any("study_summary" in line for line in lines)
    assert first not in out
    for value in PATIENT.values():
        assert value not in out and value not in err


def test_a_ct_series_gets_one_refusal_for_the_series(tmp_path: Path) -> None:
    write_series(phantom(), tmp_path / "ct", modality="CT")
    status, out, _ = run_cli("predict", "--json", str(tmp_path / "ct"))
    lines = [json.loads(line) for line in out.splitlines()]
    summary, = [line["series_summary"] for line in lines if "series_summary" in line]
    assert summary["status"] == NOT_ASSESSABLE and "not an MR series" in summary["message"]
    assert "CT" in summary["message"] and summary["label"] is None
    assert status == 0


def test_nifti_and_zip_through_the_cli(tmp_path: Path) -> None:
    path = save_nifti(phantom(), ras_affine(), tmp_path / "head.nii.gz")
    status, out, _ = run_cli("predict", "--json", str(path))
    lines = [json.loads(line) for line in out.splitlines()]
    summary, = [line["series_summary"] for line in lines if "series_summary" in line]
    assert status == 0 and summary["source"] == str(path)
    assert summary["slices"] + summary["refused"] == len(lines) - 1
    write_series(phantom(), tmp_path / "series")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted((tmp_path / "series").iterdir()):
            handle.write(file, f"DICOM/{file.name}")
    status, out, _ = run_cli("predict", str(archive))
    assert status == 0 and f"scan {archive}" in out
    assert "scan-level probability" in out or "not assessable" in out
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    status, out, _ = run_cli("predict", "--json", str(tmp_path / "bad.zip"))
    assert status == 1 and "not a readable zip archive" in out


@pytest.mark.parametrize(("text", "agent", "named"), [
    ("BraTS2021_00000_flair.nii.gz", False, "FLAIR"), ("AX T2 FLAIR", False, "FLAIR"),
    ("sub-01_T1w.nii.gz", False, "T1"), ("BraTS2021_00000_t1ce.nii.gz", False, "T1C+"),
    ("AX T1 POST GAD", False, "T1C+"), ("T1 SE", True, "T1C+"), ("T1 pre-contrast", False, "T1"),
    ("sag MPRAGE", False, "T1"), ("3D_T1_MPRAGE_Gd", False, "T1C+"),
    ("t2_tse_tra", False, "T2"), ("head.nii.gz", False, "")])
def test_the_sequence_a_file_name_or_series_description_names(text: str, agent: bool,
                                                               named: str) -> None:
    from mri_tumor.data.volume import sequence_named

    assert sequence_named(text, agent) == named


def test_a_scan_named_for_a_sequence_carries_the_cards_caution(tmp_path: Path) -> None:
    """Each named sequence gets exactly the caution the shipped card records for it (the card
    sets them from measurements, so which sequences have one changes with the model), and a
    scan that names no sequence gets none."""
    from mri_tumor.card import ModelCard
    from mri_tumor.inference.model_folder import resolve_model

    card = ModelCard.load(resolve_model("default")[1])
    assert card.scan_rule is not None
    cautions = card.scan_rule["cautions"]
    assert cautions  # the shipped card cautions at least one sequence
    flair = save_nifti(phantom(), ras_affine(), tmp_path / "case_flair.nii.gz")
    plain = save_nifti(phantom(), ras_affine(), tmp_path / "case.nii.gz")
    write_series(phantom(), tmp_path / "t1", description="AX T1 SE")
    write_series(phantom(), tmp_path / "t1c", description="AX T1 POST GAD")
    status, out, _ = run_cli("predict", "--json", str(flair), str(plain), str(tmp_path / "t1"),
                             str(tmp_path / "t1c"))
    assert status == 0
    summaries = {Path(line["series_summary"]["source"]).name: line["series_summary"]
                 for line in map(json.loads, out.splitlines()) if "series_summary" in line}
    named = {"case_flair.nii.gz": "FLAIR", "t1": "T1", "t1c": "T1C+"}
    assert set(cautions) <= set(named.values())
    for name, sequence in named.items():
        if sequence in cautions:
            assert summaries[name]["caution"] == cautions[sequence]
            assert summaries[name]["named_sequence"] == sequence
            assert cautions[sequence] in summaries[name]["message"]
        else:
            assert "caution" not in summaries[name]
    assert "caution" not in summaries["case.nii.gz"]
    first = next(name for name, sequence in named.items() if sequence in cautions)
    status, out, _ = run_cli("predict", str(tmp_path / first))  # every input is in tmp_path
    assert status == 0 and cautions[named[first]] in out


# -- the scan rule -------------------------------------------------------------------------
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def slice_results(tumour: list[float], tumour_class: str = "glioma") -> list[Prediction]:
    results = []
    for index, p in enumerate(tumour):
        probabilities = dict.fromkeys(CLASSES, 0.0)
        probabilities["notumor"] = 1 - p
        probabilities[tumour_class] = p
        label = tumour_class if p >= 0.5 else "notumor"
        results.append(Prediction(f"s{index}", OK, label=label, probabilities=probabilities,
                                  series="x", slice_index=index))
    return results


def test_one_stray_slice_does_not_make_a_tumour() -> None:
    curve = [0.02] * 40
    curve[17] = 0.995
    summary = summarise_scan(slice_results(curve), 0, ScanRule(), "notumor", "scan")
    assert summary["label"] == "notumor" and summary["status"] == "ok"
    assert summary["disagree"] and summary["key_slices"] == [17]  # reported, not hidden
    assert summary["disagreement"].startswith("1 slice(s) called a tumour class")
    run = [0.02] * 40
    run[15:22] = [0.9] * 7
    summary = summarise_scan(slice_results(run), 0, ScanRule(), "notumor", "scan")
    assert summary["label"] == "glioma" and summary["key_slices"] == [15, 16, 17]


def test_slices_that_name_different_tumours_are_reported() -> None:
    results = slice_results([0.02] * 5 + [0.9] * 4 + [0.02] * 5)
    for result in results[7:9]:
        result.probabilities = {**dict.fromkeys(CLASSES, 0.0), "notumor": 0.1,
                                "meningioma": 0.9}
    summary = summarise_scan(results, 0, ScanRule(), "notumor", "scan")
    assert summary["disagree"] and "several classes" in summary["message"]
    assert summary["disagreement"].startswith("the tumour slices name several classes")


def test_not_assessable_scans_say_why() -> None:
    few = summarise_scan(slice_results([0.1, 0.1]), 1, ScanRule(), "notumor", "scan")
    assert few["status"] == NOT_ASSESSABLE and "too few readable" in few["message"]
    refused = summarise_scan(slice_results([0.1] * 4), 9, ScanRule(), "notumor", "scan")
    assert refused["status"] == NOT_ASSESSABLE and "most slices (9 of 13)" in refused["message"]


def test_window_statistic_and_a_fitted_rule() -> None:
    assert window_statistic([0, 1, 1, 1, 0], 3) == (1.0, 1)
    assert window_statistic([0.5], 3) == (0.5, 0)
    rng = np.random.default_rng(0)
    tumour = [np.r_[rng.uniform(0, .2, 10), rng.uniform(.6, 1, 6), rng.uniform(0, .2, 10)]
              for _ in range(20)]
    normal = [np.clip(rng.uniform(0, .3, 26), 0, 1) for _ in range(20)]
    rule = fit_scan_rule(tumour + normal, [True] * 20 + [False] * 20, fitted_on="synthetic")
    assert rule.slope > 0 and rule.fitted_on == "synthetic"
    assert all(rule.probability(window_statistic(c, 3)[0]) > 0.5 for c in tumour)
    assert all(rule.probability(window_statistic(c, 3)[0]) < 0.5 for c in normal)
    with pytest.raises(ValueError, match="with and without tumour"):
        fit_scan_rule(tumour, [True] * 20)


def test_study_answer_from_its_series() -> None:
    normal = summarise_scan(slice_results([0.05] * 20), 0, ScanRule(), "notumor", "a")
    glioma = summarise_scan(slice_results([0.05] * 8 + [0.95] * 5 + [0.05] * 7), 0,
                            ScanRule(), "notumor", "a")
    study = study_summary([normal, glioma])
    assert study is not None and study["label"] == "glioma" and study["agreeing_series"] == 1
    assert study_summary([normal]) is None


def test_refused_slices_count_against_their_scan() -> None:
    from mri_tumor.inference.scans import scan_summaries

    class Card:
        normal_class = "notumor"
        scan_rule = None

    results = slice_results([0.05] * 6)
    results += [Prediction(f"r{i}", REJECTED, series="x", slice_index=6 + i) for i in range(2)]
    summary, = scan_summaries(results, Card())
    assert summary["slices"] == 6 and summary["refused"] == 2 and summary["label"] == "notumor"


def test_png_of_a_slice_is_not_a_scan(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer := io.BytesIO(), "PNG")
    frames = read_frames(buffer.getvalue(), "a.png")
    assert frames[0].slice_index is None and frames[0].scan is None


# -- front ends: the API's scan answers, the app's scan analysis ------------------------------
def test_api_answers_per_scan_with_the_slices(tmp_path: Path, predictor) -> None:
    from tests.test_api import serving

    from mri_tumor.api import Settings, create_app

    write_series(phantom(), tmp_path / "series")
    uploads = [("files", (p.name, p.read_bytes(), "application/dicom"))
               for p in sorted((tmp_path / "series").iterdir())]
    nifti = save_nifti(phantom(), ras_affine(), tmp_path / "head.nii.gz")
    uploads.append(("files", (nifti.name, nifti.read_bytes(), "application/octet-stream")))
    with serving(create_app(Settings(), predictor=predictor)) as client:
        answer = client.post("/v1/scans", files=uploads)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["scans"]) == 2  # the 18 DICOM files are one scan, the NIfTI another
    assert {s["status"] for s in body["scans"]} <= {"ok", "not_assessable"}
    assert all(isinstance(s["slice_index"], int) for s in body["slices"])
    assert "not a diagnosis" in body["disclaimer"]
    for value in PATIENT.values():
        assert value not in answer.text


def test_app_analyses_the_files_of_a_series_as_one_scan(tmp_path: Path, predictor) -> None:
    from mri_tumor.app.scans import analyse_scans, is_scan_upload

    write_series(phantom(), tmp_path / "series")
    uploads = [(p.name, p.read_bytes()) for p in sorted((tmp_path / "series").iterdir())]
    assert all(is_scan_upload(name, data) for name, data in uploads)
    assert not is_scan_upload("a.jpg", b"\xff\xd8\xff")
    analysed, summaries = analyse_scans(predictor, uploads)
    summary, = summaries
    assert len(analysed) == summary["slices"] + summary["refused"]
    keys = [prediction.slice_index for prediction, _, key in analysed if key]
    if summary["status"] == "ok":
        assert keys == summary["key_slices"]


# -- training data: whole-scan patients, split by patient, the exclusion list ---------------
def make_patients(root: Path, patients: int = 6, slices: int = 12) -> Path:
    """A patient-layout folder: every slice of T1 and FLAIR (real MRI slices of the
    fixtures: a glioma on slices 5-7, no tumour elsewhere), masks marking slices 5-7."""
    from tests.conftest import FIXTURE_IMAGES

    pictures = {kind: [Image.open(p).convert("L").resize((96, 96))
                       for p in sorted((FIXTURE_IMAGES / kind).iterdir())[:3]]
                for kind in ("glioma", "notumor")}
    for p in range(patients):
        folder = root / f"TCGA_XX_{p:04d}_20000101"
        folder.mkdir(parents=True)
        for number in range(1, slices + 1):
            for sequence in ("T1", "FLAIR"):
                kind = "glioma" if 5 <= number <= 7 else "notumor"
                pictures[kind][number % 3].save(folder / f"{number:03d}_{sequence}.jpg")
            mask = np.zeros((32, 32), np.uint8)
            if 5 <= number <= 7:
                mask[10:20, 10:20] = 255
            Image.fromarray(mask).save(folder / f"{number:03d}_mask.png")
    return root


def test_patient_slices_are_labelled_by_mask_and_split_by_patient(tmp_path: Path) -> None:
    from mri_tumor.data.folders import scan_folder
    from mri_tumor.data.splitting import split_folders

    scan = scan_folder(make_patients(tmp_path / "lgg"))
    by_slice = {(i.group, int(i.path.name[:3])): i.label for i in scan.images}
    assert by_slice[("TCGA_XX_0000_20000101", 6)] == "glioma"
    assert by_slice[("TCGA_XX_0000_20000101", 2)] == "notumor"
    assert ("TCGA_XX_0000_20000101", 4) not in by_slice  # next to the tumour: skipped
    assert any("next to a tumour slice" in reason for _, reason in scan.skipped)
    assert {i.sequence for i in scan.images} == {"T1", "FLAIR"}
    rows = split_folders([scan], val_fraction=0.3, seed=0)
    sides: dict[str, set[str]] = {}
    for row in rows:
        sides.setdefault(row.path.split("/")[0], set()).add(row.split)
    assert all(len(s) == 1 for s in sides.values())  # never one patient on two sides
    assert {"train", "val"} == {side for s in sides.values() for side in s}


def test_an_out_of_fold_scan_rule_is_fitted_on_rule_fold_patients_and_healthy_volumes() -> None:
    from mri_tumor.data.splitting import SplitRow
    from mri_tumor.evaluation.scans import rule_fitting_groups

    def row(path: str, label: str, split: str, source: str) -> SplitRow:
        return SplitRow(path=path, label=label, split=split, group=0, phash="", source=source)

    rows = [row("P_train/001_T1.jpg", "glioma", "train", "lgg"),
            row("P_train/002_T1.jpg", "notumor", "train", "lgg"),
            row("P_fold/001_T1.jpg", "notumor", "val", "lgg"),
            row("P_test/001_T1.jpg", "glioma", "test", "lgg"),
            row("notumor/vol_a/001.png", "notumor", "train", "healthy"),
            row("notumor/vol_b/001.png", "notumor", "test", "healthy")]
    assert rule_fitting_groups(rows, "notumor") == {("lgg", "P_train"),
                                                    ("healthy", "notumor/vol_a")}
    # Out of fold: tumour patients of the rule fold, healthy volumes of the training side;
    # nothing of the test side either way.
    assert rule_fitting_groups(rows, "notumor", "val", "train") == {
        ("lgg", "P_fold"), ("healthy", "notumor/vol_a")}


def test_the_exclusion_list_is_honoured_by_scanning_and_by_splits(tmp_path: Path,
                                                                   monkeypatch) -> None:
    from tests.conftest import copy_dataset

    import mri_tumor.data.folders as folders
    from mri_tumor.data.splitting import read_split_csv, split_folders, write_split_csv

    data = copy_dataset(tmp_path / "kaggle")
    first = sorted((data / "glioma").iterdir())[0]
    rows = split_folders([folders.scan_folder(data)], seed=0)
    for row in rows:
        row.source = "kaggle"
    write_split_csv(rows, tmp_path / "split.csv")
    listing = tmp_path / "exclusions.csv"
    listing.write_text(f"source,path,reason\nkaggle,glioma/{first.name},head CT\n")
    monkeypatch.setattr(folders, "EXCLUSIONS_FILE", listing)
    scan = folders.scan_folder(data)
    assert first not in [i.path for i in scan.images]
    assert (f"glioma/{first.name}", "excluded: head CT") in scan.skipped
    assert f"glioma/{first.name}" not in [r.path for r in read_split_csv(tmp_path / "split.csv")]
    assert len(read_split_csv(tmp_path / "split.csv", exclude=False)) == len(rows)


def test_the_shipped_exclusion_list_is_well_formed() -> None:
    from mri_tumor.data.folders import EXCLUSIONS_FILE, load_exclusions

    listed = load_exclusions()
    lines = EXCLUSIONS_FILE.read_text().splitlines()
    assert len(listed) == len(lines) - 1 >= 50  # no row listed twice
    assert all(reason.strip() for reason in listed.values())
    assert ("brain-tumor-mri/Training", "notumor/Tr-no_0010.jpg") in listed


def test_evaluate_scans_reports_per_scan_and_per_slice(tmp_path: Path) -> None:
    patients = make_patients(tmp_path / "lgg", patients=2, slices=10)
    healthy = tmp_path / "healthy" / "notumor"
    healthy.mkdir(parents=True)
    save_nifti(phantom(), ras_affine(), healthy / "volunteer.nii.gz")
    status, out, _ = run_cli("evaluate", "--scans", str(patients), str(tmp_path / "healthy"),
                             "--json", "--out", str(tmp_path / "report"))
    assert status == 0
    metrics = json.loads(out)
    assert metrics["scans"] == 2 * 2 + 1  # two patients x two sequences, one volume
    assert metrics["by_truth_and_sequence"]["glioma FLAIR"]["n"] == 2
    assert metrics["specificity"]["n"] == 1
    flair = metrics["slices_by_sequence"]["FLAIR"]
    assert flair["tumour_slices_called_their_class"]["n"] > 0
    low, high = flair["refused_central"]["interval"]
    assert 0 <= low <= flair["refused_central"]["share"] <= high <= 1
    assert (tmp_path / "report" / "slices.csv").is_file()
    status, _, err = run_cli("evaluate", "--scans", str(tmp_path / "nowhere"))
    assert status == 2 and "no such folder" in err
