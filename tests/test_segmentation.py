"""The tumour outline: split by patient, post-processing, measurements, masks on the input's
own geometry, the classifier's gate, the CLI's JSON contract, training and evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from tests.conftest import run_cli
from tests.test_scans import phantom, save_nifti, write_series

from mri_tumor.card import SegmentationCard
from mri_tumor.data.segmentation import masked_slices, split_patients
from mri_tumor.data.volume import Volume, axial_stack, read_nifti
from mri_tumor.evaluation.intervals import mean_interval
from mri_tumor.evaluation.segmentation import dice
from mri_tumor.inference.outlining import Outliner
from mri_tumor.inference.segmentation import (
    Segmenter,
    largest_diameter,
    measure,
    outline_polygons,
    postprocess,
)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def write_patients(root: Path, patients: list[str], slices: int = 6, size: int = 64) -> Path:
    """A whole-scan folder: per patient ``NNN_FLAIR.jpg`` slices with a bright disc (the
    "tumour") on the middle slices and ``NNN_mask.png`` masks of it."""
    rng = np.random.default_rng(0)
    for p, patient in enumerate(patients):
        folder = root / patient
        folder.mkdir(parents=True)
        for n in range(1, slices + 1):
            head = disc((size, size), (size / 2, size / 2), size * 0.42)
            image = np.where(head, 90.0, 0.0) + rng.normal(0, 6, (size, size))
            mask = disc((size, size), (24 + p, 30), 7) if 2 <= n <= slices - 2 else \
                np.zeros((size, size), bool)
            image[mask] = 230
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                folder / f"{n:03d}_FLAIR.jpg")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{n:03d}_mask.png")
    return root


PATIENTS = [f"TCGA_{site}_{i:04d}_20000101" for site in ("AA", "BB") for i in range(4)]


@pytest.fixture(scope="module")
def lgg_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patients(tmp_path_factory.mktemp("lgg"), PATIENTS)


@pytest.fixture(scope="module")
def segmenter_dir(lgg_like: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A segmentation model trained for a few steps through the CLI (held-out scored)."""
    out = tmp_path_factory.mktemp("segmenter") / "run"
    status, stdout, stderr = run_cli("train-segmenter", str(lgg_like), "--out", str(out),
                                     "--epochs", "1", "--batch-size", "4", "--image-size",
                                     "64", "--max-train-batches", "2", "--held-out", "0.25")
    assert status == 0, stderr
    assert "mean Dice per patient" in stdout
    return out


# -- data and split ---------------------------------------------------------------------
def test_the_split_holds_out_patients_of_every_institution_and_never_splits_one(
        lgg_like: Path) -> None:
    rows = masked_slices(lgg_like)
    sides = split_patients([r.patient for r in rows], held_out=0.25, seed=0)
    assert set(sides) == set(PATIENTS)
    for site in ("AA", "BB"):
        held = [p for p, s in sides.items() if f"_{site}_" in p and s == "test"]
        assert len(held) == 1
    assert split_patients([r.patient for r in rows], 0.25, 0) == sides  # deterministic
    assert split_patients([r.patient for r in rows], 0.25, 1) != sides
    # A patient's slices all carry the patient: one side each by construction.
    assert {r.patient for r in rows} == set(PATIENTS)


def test_a_folder_without_masks_is_refused_with_the_layout_it_needs(tmp_path: Path) -> None:
    (tmp_path / "patient").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "patient" / "001_FLAIR.jpg")
    with pytest.raises(ValueError, match=r"_mask\.png"):
        masked_slices(tmp_path)


# -- post-processing and measurements ------------------------------------------------------
def test_postprocessing_drops_specks_and_fills_holes() -> None:
    probabilities = np.zeros((40, 40, 5), np.float32)
    big = disc((40, 40), (20, 20), 8)
    for k in range(1, 4):
        probabilities[:, :, k][big] = 0.9
    probabilities[18:22, 18:22, 2] = 0.1  # a hole in the middle of the lesion
    probabilities[2, 2, 0] = 0.95  # a speck far from it
    mask = postprocess(probabilities, threshold=0.5, min_component_share=0.1)
    assert not mask[2, 2, 0]
    assert mask[20, 20, 2]
    assert mask.sum() == 3 * big.sum()


def test_volume_in_ml_of_a_sphere_of_known_size() -> None:
    zooms = (0.5, 0.5, 1.0)  # mm
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip((80, 80, 40), zooms,
                                                              strict=True)), indexing="ij")
    radius = 15.0  # mm: 14.14 mL
    sphere = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= radius**2
    measured = measure(sphere, zooms)
    assert measured.volume_ml == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.02)
    assert measured.largest_axial_diameter_mm == pytest.approx(2 * radius, abs=1.0)
    assert measured.slices == list(range(5, 36))
    assert measure(sphere, None).volume_ml is None


def test_largest_diameter_of_a_bar_and_a_single_pixel() -> None:
    bar = np.zeros((10, 30), bool)
    bar[4, 5:25] = True  # 20 collinear pixels of 0.5 mm
    assert largest_diameter(bar, (0.5, 0.5)) == pytest.approx(10.0)
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    assert largest_diameter(single, (0.8, 0.8)) == pytest.approx(0.8)


def test_dice_and_its_interval_over_patients() -> None:
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:5, :5] = True
    assert dice(a, b) == pytest.approx(2 * 25 / 75)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    low, high = mean_interval([0.6, 0.7, 0.8, 0.9, 0.75])
    assert low < 0.75 < high
    assert mean_interval([0.5]) is None


def test_outline_polygons_trace_the_mask() -> None:
    square = np.zeros((20, 20), bool)
    square[5:15, 8:12] = True
    (polygon,) = outline_polygons(square)
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    assert polygon[0] == polygon[-1]
    assert 7 <= min(xs) < 8 and 11 < max(xs) <= 12
    assert 4 <= min(ys) < 5 and 14 < max(ys) <= 15


# -- geometry ------------------------------------------------------------------------------
def sagittal_copy(volume: np.ndarray, spacing: tuple[float, float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The RAS volume stored sagittally (array axes y reversed, z, x), with its affine."""
    stored = np.ascontiguousarray(np.transpose(volume, (1, 2, 0))[::-1])
    affine = np.zeros((4, 4))
    affine[1, 0] = -spacing[1]
    affine[2, 1] = spacing[2]
    affine[0, 2] = spacing[0]
    affine[1, 3] = (volume.shape[1] - 1) * spacing[1]
    affine[3, 3] = 1
    return stored, affine


def test_a_display_slice_maps_back_onto_the_input_voxels() -> None:
    stored, affine = sagittal_copy(phantom(), (0.9, 0.9, 4.0))
    stack = axial_stack(Volume(stored, affine, "head", "key"))
    canonical = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(stored, affine)).dataobj)
    assert np.array_equal(stack.to_input_voxels(canonical), stored)
    k = int(np.flatnonzero(stack.inside)[len(np.flatnonzero(stack.inside)) // 2])
    plane = stack.windowed[:, :, k].astype(np.float32)
    back = stack.plane(np.asarray(stack.picture(stack.windowed[:, :, k]), np.float32))
    assert back.shape == plane.shape
    assert np.abs(back - plane).mean() < 6  # two bilinear resamplings of a 0-255 image


def test_segment_writes_the_mask_on_the_input_grid_with_the_json_contract(
        segmenter_dir: Path, tmp_path: Path) -> None:
    stored, affine = sagittal_copy(phantom(), (0.9, 0.9, 4.0))
    path = save_nifti(stored, affine, tmp_path / "sagittal.nii.gz")
    out = tmp_path / "masks"
    status, stdout, stderr = run_cli("segment", str(path), "--out", str(out), "--json",
                                     "--segmenter", str(segmenter_dir), "--no-classifier")
    assert status == 0, stderr
    (line,) = [json.loads(x) for x in stdout.splitlines()]
    result = line["segmentation"]
    assert result["source"] == str(path)
    assert result["mask"] == str(out / "sagittal.mask.nii.gz")
    assert {"volume_ml", "slices", "status", "message"} <= result.keys()
    written = nib.load(result["mask"])
    assert written.shape == stored.shape
    assert np.allclose(written.affine, affine)
    voxels = int(np.asarray(written.dataobj).sum())
    assert voxels == result["voxels"]
    assert result["volume_ml"] == pytest.approx(voxels * 0.9 * 0.9 * 4.0 / 1000, abs=1e-3)
    assert "not a diagnosis" in stderr


def test_a_shuffled_dicom_series_gets_its_mask_in_the_series_geometry(
        segmenter_dir: Path, tmp_path: Path) -> None:
    volume = phantom()
    series = tmp_path / "series"
    write_series(volume, series, order=list(np.random.default_rng(1).permutation(
        volume.shape[2])))
    out = tmp_path / "masks"
    status, stdout, stderr = run_cli("segment", str(series), "--out", str(out), "--json",
                                     "--segmenter", str(segmenter_dir), "--no-classifier")
    assert status == 0, stderr
    (line,) = [json.loads(x)["segmentation"] for x in stdout.splitlines()]
    assert line["source"] == str(series)
    written = nib.load(line["mask"])
    assert written.shape == volume.shape  # rows/columns/slices of the series
    # Voxel (column i, row j, slice k) lies where the series' headers put it: the first
    # file's ImagePositionPatient (LPS) is (-(nx-1) 0.9, -(ny-1) 0.9, 0), columns run along
    # +x (LPS), rows along +y, slices 4 mm apart along +z, whatever the files' order.
    nx, ny, _ = volume.shape
    assert np.allclose(written.affine @ [0, 0, 0, 1], [(nx - 1) * 0.9, (ny - 1) * 0.9, 0, 1])
    assert np.allclose(written.affine[:3, :3], np.diag([-0.9, -0.9, 4.0]), atol=1e-6)


def test_a_ct_series_is_not_segmented_and_gets_an_empty_mask(
        segmenter_dir: Path, tmp_path: Path) -> None:
    series = tmp_path / "ct"
    write_series(phantom(), series, modality="CT")
    status, stdout, stderr = run_cli("segment", str(series), "--out", str(tmp_path / "m"),
                                     "--json", "--segmenter", str(segmenter_dir))
    assert status == 0, stderr
    (line,) = [json.loads(x)["segmentation"] for x in stdout.splitlines()]
    assert line["status"] == "not_segmented"
    assert "Modality" in line["message"] and "CT" in line["message"]
    assert line["volume_ml"] == 0.0 and line["slices"] == []
    assert not np.asarray(nib.load(line["mask"]).dataobj).any()


def test_the_classifier_s_normal_answer_means_no_outline(segmenter_dir: Path,
                                                         predictor, tmp_path: Path) -> None:
    outliner = Outliner(Segmenter.load(segmenter_dir), predictor, tmp_path)
    normal = predictor.card.normal_class
    reason = outliner.skip_reason({"status": "ok", "label": normal, "probability": 0.9,
                             "message": "scan answer"})
    assert reason is not None and predictor.card.display_name(normal) in reason
    assert "no-classifier" not in reason
    weak = outliner.skip_reason({"status": "ok", "label": normal, "probability": 0.9,
                                 "message": "scan answer", "caution": "weak on FLAIR"})
    assert weak is not None and "weak on FLAIR" in weak and "--no-classifier" in weak
    tumour = next(c for c in predictor.card.class_names if c != normal)
    assert outliner.skip_reason({"status": "ok", "label": tumour, "probability": 0.9,
                           "message": ""}) is None
    assert "could not assess" in str(outliner.skip_reason({"status": "not_assessable",
                                                     "label": None, "message": "few"}))


def test_a_slice_image_gets_a_png_mask_of_its_size(segmenter_dir: Path, lgg_like: Path,
                                                   tmp_path: Path) -> None:
    image = lgg_like / PATIENTS[0] / "003_FLAIR.jpg"
    status, stdout, stderr = run_cli("segment", str(image), "--out", str(tmp_path), "--json",
                                     "--segmenter", str(segmenter_dir), "--no-classifier")
    assert status == 0, stderr
    line = json.loads(stdout)["segmentation"]
    assert line["mask"].endswith("003_FLAIR.mask.png")
    with Image.open(line["mask"]) as mask:
        assert mask.size == (64, 64)
    assert line["volume_ml"] is None  # a JPEG has no pixel size


def test_an_unreadable_input_is_an_error_and_exits_non_zero(segmenter_dir: Path,
                                                            tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really")
    status, stdout, _ = run_cli("segment", str(broken), "--out", str(tmp_path / "m"),
                                "--json", "--segmenter", str(segmenter_dir))
    assert status == 1
    assert json.loads(stdout)["segmentation"]["status"] == "error"


# -- training and evaluation ---------------------------------------------------------------
def test_training_writes_a_card_with_the_held_out_scores(segmenter_dir: Path) -> None:
    card = SegmentationCard.load(segmenter_dir)
    held = card.metrics["held_out"]
    assert held["patients"] == 2  # one of four per institution
    assert 0.0 <= held["mean_dice"] <= 1.0
    assert card.training["patients"] == {"train": 6, "test": 2}
    split = (segmenter_dir / "split.csv").read_text().splitlines()
    assert split[0] == "patient,split" and len(split) == 1 + len(PATIENTS)


def test_evaluate_segmenter_scores_each_held_out_patient(segmenter_dir: Path,
                                                         lgg_like: Path) -> None:
    status, stdout, stderr = run_cli("evaluate-segmenter", str(lgg_like), "--segmenter",
                                     str(segmenter_dir), "--json")
    assert status == 0, stderr
    metrics = json.loads(stdout)
    held = {p for p, s in (line.split(",") for line in
                           (segmenter_dir / "split.csv").read_text().splitlines()[1:])
            if s == "test"}
    assert {s["patient"] for s in metrics["per_patient"]} == held
    assert all(s["tumour_slices"] == 3 for s in metrics["per_patient"])
    status, stdout, _ = run_cli("evaluate-segmenter", str(lgg_like), "--segmenter",
                                str(segmenter_dir), "--patients", "all", "--json")
    assert len(json.loads(stdout)["per_patient"]) == len(PATIENTS)


def test_a_classifier_folder_is_not_taken_for_a_segmenter(tmp_path: Path) -> None:
    from mri_tumor.inference.model_folder import SHIPPED_MODELS

    with pytest.raises(ValueError, match="not a segmentation model"):
        SegmentationCard.load(SHIPPED_MODELS["default"])
    image = tmp_path / "slice.png"
    Image.new("L", (32, 32), 90).save(image)
    status, _, stderr = run_cli("segment", str(image), "--out", str(tmp_path / "m"),
                                "--segmenter", str(SHIPPED_MODELS["default"]))
    assert status == 2 and "not a segmentation model" in stderr


def test_read_nifti_volume_round_trip_keeps_the_affine(tmp_path: Path) -> None:
    stored, affine = sagittal_copy(phantom(), (1.0, 1.0, 1.2))
    path = save_nifti(stored, affine, tmp_path / "v.nii")
    volume = read_nifti(path.read_bytes(), "v.nii")
    assert np.allclose(volume.affine, affine) and volume.data.shape == stored.shape


# -- the API -------------------------------------------------------------------------------
def test_the_api_returns_outlines_and_the_volume(segmenter_dir: Path, predictor,
                                                 tmp_path: Path, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from mri_tumor.api import DISCLAIMER_HEADER, Settings, create_app
    from mri_tumor.api.routers import segment

    # The router's model: the one trained above (the shipped one is tested by its numbers).
    monkeypatch.setitem(segment._loaded, "shipped", Segmenter.load(segmenter_dir))
    # Every pixel above the threshold: an outline to read back, whatever the tiny model says.
    monkeypatch.setattr(segment._loaded["shipped"].card, "threshold", 0.0)
    volume = phantom()
    path = save_nifti(volume, np.diag([0.9, 0.9, 4.0, 1.0]), tmp_path / "head.nii.gz")
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        reply = client.post("/v1/segment?filename=head.nii.gz&outline_all=true",
                            content=path.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"})
        assert reply.status_code == 200, reply.text
        assert "not a diagnosis" in reply.headers[DISCLAIMER_HEADER]
        (result,) = reply.json()["segmentations"]
        assert result["status"] == "ok" and result["classifier"] is None
        assert result["volume_ml"] == pytest.approx(result["voxels"] * 0.9 * 0.9 * 4.0 / 1000,
                                                    abs=1e-3)
        assert [o["slice_index"] for o in result["outlines"]] == result["slices"]
        first = result["outlines"][0]
        assert first["polygons"] and first["width"] == first["height"]
        xs = [x for polygon in first["polygons"] for x, _ in polygon]
        assert min(xs) >= 0 and max(xs) <= first["width"]
        # Without outline_all the classifier answers first, and its answer is given.
        reply = client.post("/v1/segment?filename=head.nii.gz", content=path.read_bytes(),
                            headers={"Content-Type": "application/octet-stream"})
        (result,) = reply.json()["segmentations"]
        assert result["classifier"]["status"] in ("ok", "not_assessable")
        assert (result["status"] == "not_segmented") == (
            result["classifier"]["status"] != "ok"
            or result["classifier"]["label"] == predictor.card.normal_class)
        bad = client.post("/v1/segment?filename=x.nii.gz", content=b"\x1f\x8bbroken",
                          headers={"Content-Type": "application/octet-stream"})
        assert bad.status_code == 422 and "not a readable NIfTI" in bad.json()["detail"]


def test_a_model_with_companions_reads_each_sequence_as_a_channel(
        lgg_like: Path, tmp_path: Path) -> None:
    """``--companions T1``: the slices of T1 beside FLAIR are a second input channel (FLAIR
    in its place where a patient has no T1), each equalised on its own; the card says so,
    evaluate-segmenter reads both, and ``segment`` (one series per input) refuses it."""
    from mri_tumor.data.preprocess import PreprocessSpec, normalize, normalize_array
    from mri_tumor.data.segmentation import load_pairs, masked_slices

    data = tmp_path / "lgg"
    shutil.copytree(lgg_like, data)
    with_t1 = PATIENTS[::2]
    for patient in with_t1:
        for flair in (data / patient).glob("*_FLAIR.jpg"):
            t1 = 255 - np.asarray(Image.open(flair).convert("L"))  # unlike FLAIR, on purpose
            Image.fromarray(t1).save(flair.with_name(flair.name.replace("FLAIR", "T1")))
    rows = masked_slices(data, "FLAIR", ["T1"])
    assert {r.patient for r in rows if r.companions[0] is not None} == set(with_t1)
    pixels, masks = load_pairs(rows, 64)
    assert pixels.shape == (len(rows), 2, 64, 64) and masks.shape == (len(rows), 64, 64)
    without = [i for i, r in enumerate(rows) if r.companions[0] is None]
    assert (pixels[without, 0] == pixels[without, 1]).all()
    # One channel per sequence, each equalised alone: numpy and torch give the same values.
    spec = PreprocessSpec(64, (0.5,) * 3, (0.5,) * 3, 3, "equalize")
    import torch

    by_numpy = normalize_array(pixels[:4], spec)
    by_torch = normalize(torch.from_numpy(pixels[:4]).float() / 255.0, spec).numpy()
    single = normalize_array(pixels[:4, 1], PreprocessSpec(64, (0.5,), (0.5,), 1, "equalize"))
    assert np.allclose(by_numpy, by_torch, atol=1e-6)
    assert np.allclose(by_numpy[:, 1], single[:, 0], atol=1e-6)
    assert np.allclose(by_numpy[:, 2], by_numpy[:, 0])  # the third channel: FLAIR again

    out = tmp_path / "multi"
    status, stdout, stderr = run_cli("train-segmenter", str(data), "--out", str(out),
                                     "--companions", "T1", "--epochs", "1", "--batch-size",
                                     "4", "--image-size", "64", "--max-train-batches", "2",
                                     "--held-out", "0.25")
    assert status == 0, stderr
    assert SegmentationCard.load(out).companions == ["T1"]
    assert "mean Dice per patient" in stdout
    image = tmp_path / "slice.png"
    Image.new("L", (32, 32), 90).save(image)
    status, _, stderr = run_cli("segment", str(image), "--out", str(tmp_path / "m"),
                                "--segmenter", str(out))
    assert status == 2 and "reads FLAIR, T1 together" in stderr

    # With the T1 volume on the FLAIR's grid (--with), it outlines the FLAIR volume.
    affine = np.diag([0.9, 0.9, 4.0, 1.0])
    flair = save_nifti(phantom(), affine, tmp_path / "flair.nii.gz")
    t1 = save_nifti(phantom()[::-1].copy(), affine, tmp_path / "t1.nii.gz")
    status, stdout, stderr = run_cli("segment", str(flair), "--with", f"T1={t1}", "--out",
                                     str(tmp_path / "m"), "--json", "--segmenter", str(out),
                                     "--no-classifier")
    assert status == 0, stderr
    (line,) = [json.loads(x)["segmentation"] for x in stdout.splitlines()]
    assert line["status"] in ("ok", "empty") and "read with T1" in line["message"]
    assert nib.load(line["mask"]).shape == phantom().shape
    # A T1 on another grid of the same head is resampled onto the FLAIR's; one placed
    # elsewhere is an error of that input; a sequence the model does not read, or --with
    # beside several inputs, a usage error.
    upper = affine.copy()
    upper[2, 3] += 2 * 4.0  # the same head without its two lowest slices: another grid
    other = save_nifti(phantom()[:, :, 2:].copy(), upper, tmp_path / "t1-other.nii.gz")
    status, stdout, _ = run_cli("segment", str(flair), "--with", f"T1={other}", "--out",
                                str(tmp_path / "m"), "--json", "--segmenter", str(out),
                                "--no-classifier")
    (line,) = [json.loads(x)["segmentation"] for x in stdout.splitlines()]
    assert status == 0 and "T1 resampled onto its grid" in line["message"]
    assert nib.load(line["mask"]).shape == phantom().shape
    elsewhere = affine.copy()
    elsewhere[0, 3] += 500.0  # half a metre to the side: not this head
    away = save_nifti(phantom(), elsewhere, tmp_path / "t1-away.nii")
    status, stdout, _ = run_cli("segment", str(flair), "--with", f"T1={away}", "--out",
                                str(tmp_path / "m"), "--json", "--segmenter", str(out),
                                "--no-classifier")
    assert status == 1 and "covers 0% of the head" in stdout
    status, _, stderr = run_cli("segment", str(flair), "--with", f"T2={t1}", "--out",
                                str(tmp_path / "m"), "--segmenter", str(out))
    assert status == 2 and "no use for T2" in stderr
    status, _, stderr = run_cli("segment", str(flair), str(t1), "--with", f"T1={t1}",
                                "--out", str(tmp_path / "m"), "--segmenter", str(out))
    assert status == 2 and "exactly one input" in stderr


def test_the_shipped_three_sequence_model_reads_t1_and_t1c() -> None:
    from mri_tumor.inference.segmentation import SHIPPED_MULTI_SEGMENTER, Segmenter

    segmenter = Segmenter.load(SHIPPED_MULTI_SEGMENTER)
    assert segmenter.sequences == ["FLAIR", "T1", "T1C+"]
    held_out = segmenter.card.metrics["held_out"]
    assert held_out["patients"] == 13 and held_out["mean_dice"] >= 0.8


def test_a_volume_is_resampled_onto_another_grid_by_its_coordinates() -> None:
    from mri_tumor.data.volume import MIN_COVERAGE, Volume, on_same_grid, resample_onto

    def ramp(shape, affine):  # a linear function of the RAS+ position: trilinear is exact
        ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        return (100 + 2 * xyz[..., 0] - xyz[..., 1] + 3 * xyz[..., 2]).astype(np.float32)

    target_affine = np.diag([1.0, 1.0, 5.0, 1.0])
    target = Volume(ramp((40, 40, 10), target_affine) + 200, target_affine, "flair", "f")
    # Finer, shifted, larger: covers the target's grid with room to spare.
    source_affine = np.diag([0.5, 0.5, 2.0, 1.0])
    source_affine[:3, 3] = [-4.0, -4.0, -6.0]
    source = Volume(ramp((100, 100, 35), source_affine) + 200, source_affine, "t1", "t")
    assert not on_same_grid(source, target)
    moved = resample_onto(source, target)
    assert on_same_grid(moved, target) and moved.name == "t1"
    assert np.allclose(moved.data, target.data, atol=1e-3)
    half = Volume(source.data[:, :, :8], source_affine, "t1-part", "t")  # 8 of 35 slices
    with pytest.raises(ValueError, match="covers"):
        resample_onto(half, target)
    assert MIN_COVERAGE > 0.5


def test_the_api_reads_t1_and_t1c_beside_a_flair_volume(predictor, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mri_tumor.api import Settings, create_app

    affine = np.diag([0.9, 0.9, 4.0, 1.0])
    flair = save_nifti(phantom(), affine, tmp_path / "flair.nii.gz").read_bytes()
    upper = affine.copy()
    upper[2, 3] += 8.0  # another grid of the same head
    t1 = save_nifti(phantom()[:, :, 2:].copy(), upper, tmp_path / "t1.nii.gz").read_bytes()
    nifti = "application/octet-stream"
    with TestClient(create_app(Settings(), predictor=predictor)) as client:
        reply = client.post("/v1/segment?outline_all=true", files=[
            ("files", ("flair.nii.gz", flair, nifti)), ("t1", ("t1.nii.gz", t1, nifti))])
        assert reply.status_code == 200, reply.text
        (result,) = reply.json()["segmentations"]
        assert "(read with T1; T1 resampled onto its grid)" in result["message"]
        alone = client.post("/v1/segment?outline_all=true",
                            files=[("files", ("flair.nii.gz", flair, nifti))]).json()
        assert "read with" not in alone["segmentations"][0]["message"]
        for files, says in (
                ([("files", ("a.png", b"\x89PNG", "image/png")),
                  ("t1", ("t1.nii.gz", t1, nifti))], "go with one FLAIR volume"),
                ([("files", ("flair.nii.gz", flair, nifti)), ("t1", ("t1.nii.gz", t1, nifti)),
                  ("t1", ("t1.nii.gz", t1, nifti))], "takes one file"),
                ([("files", ("flair.nii.gz", flair, nifti)),
                  ("t1c", ("t1c.nii.gz", b"\x1f\x8bbroken", nifti))], "t1c:")):
            reply = client.post("/v1/segment?outline_all=true", files=files)
            assert reply.status_code == 422 and says in reply.json()["detail"], reply.text


def test_neighbours_are_the_slices_before_and_after_as_far_apart_as_in_training() -> None:
    """2.5-D rows: each slice's neighbours are its companions, held at the stack's ends; a
    stack twice the training length takes them two slices away."""
    from mri_tumor.data.segmentation import (
        MaskedSlice,
        median_stack_slices,
        neighbour_pairs,
        neighbour_step,
        with_neighbours,
    )

    assert neighbour_pairs(4, 1) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert neighbour_step(36, 36) == 1 and neighbour_step(72, 36) == 2
    assert neighbour_step(10, 36) == 1 and neighbour_step(5, 0) == 1

    def rows(patient: str, count: int) -> list[MaskedSlice]:
        return [MaskedSlice(Path(f"{patient}/{n:03d}_FLAIR.jpg"), Path(f"{n:03d}_mask.png"),
                            patient, n) for n in range(count, 0, -1)]  # any order in

    given = rows("short", 4) + rows("long", 8)
    assert median_stack_slices(given) == 6
    out = {(r.patient, r.number): r for r in with_neighbours(given, stack_slices=4)}
    assert len(out) == len(given)
    assert [p.name for p in out[("short", 1)].channels()] == [
        "001_FLAIR.jpg", "001_FLAIR.jpg", "002_FLAIR.jpg"]
    assert [p.name for p in out[("long", 4)].channels()] == [  # 8 slices: step 2
        "004_FLAIR.jpg", "002_FLAIR.jpg", "006_FLAIR.jpg"]


def test_training_swaps_the_neighbours_or_replaces_them_by_the_slice() -> None:
    import torch

    from mri_tumor.training.segmentation import shuffle_neighbours

    torch.manual_seed(0)
    batch = torch.arange(3.0).view(1, 3, 1, 1).repeat(64, 1, 2, 2)  # channels 0, 1, 2
    alone = shuffle_neighbours(batch, dropout=1.0)
    assert (alone == 0).all()
    moved = shuffle_neighbours(batch, dropout=0.0)[:, :, 0, 0]
    as_given = (moved == torch.tensor([0.0, 1.0, 2.0])).all(1)
    swapped = (moved == torch.tensor([0.0, 2.0, 1.0])).all(1)
    assert (as_given | swapped).all() and as_given.any() and swapped.any()


def test_a_2_5_d_model_trains_and_outlines_volumes_and_single_slices(
        lgg_like: Path, tmp_path: Path) -> None:
    """``--neighbours``: the card records it with the training stacks' median length;
    evaluate, a volume and a slice image (its own neighbours) are read; it does not mix with
    companions."""
    out = tmp_path / "2.5d"
    status, stdout, stderr = run_cli("train-segmenter", str(lgg_like), "--out", str(out),
                                     "--neighbours", "--epochs", "1", "--batch-size", "4",
                                     "--image-size", "64", "--max-train-batches", "2",
                                     "--held-out", "0.25")
    assert status == 0, stderr
    assert "mean Dice per patient" in stdout
    card = SegmentationCard.load(out)
    assert card.neighbours and card.stack_slices == 6 and card.companions == []
    segmenter = Segmenter.load(out)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), np.uint8))
    alone, replicated = segmenter.probabilities([picture, [picture] * 3])
    assert alone.shape == (40, 40) and np.allclose(alone, replicated)
    with pytest.raises(ValueError, match="with the slices before and after"):
        segmenter.probabilities([[picture, picture]])
    status, stdout, stderr = run_cli("evaluate-segmenter", str(lgg_like), "--segmenter",
                                     str(out), "--without-neighbours", "--json")
    assert status == 0, stderr
    assert json.loads(stdout)["patients"] == card.metrics["held_out"]["patients"] == 2

    flair = save_nifti(phantom(), np.diag([0.9, 0.9, 4.0, 1.0]), tmp_path / "flair.nii.gz")
    image = tmp_path / "slice.png"
    picture.save(image)
    status, stdout, stderr = run_cli("segment", str(flair), str(image), "--out",
                                     str(tmp_path / "m"), "--json", "--segmenter", str(out),
                                     "--no-classifier")
    assert status == 0, stderr
    volume, single = [json.loads(x)["segmentation"] for x in stdout.splitlines()]
    assert nib.load(volume["mask"]).shape == phantom().shape
    assert Image.open(single["mask"]).size == (40, 40)

    status, _, stderr = run_cli("train-segmenter", str(lgg_like), "--out", str(tmp_path / "x"),
                                "--neighbours", "--companions", "T1")
    assert status == 2 and "leave out --companions" in stderr


def test_compare_pairs_two_segmenters_per_patient(segmenter_dir: Path, lgg_like: Path,
                                                  tmp_path: Path) -> None:
    """``evaluate-segmenter --out`` writes segmentation.json; ``compare`` of two such reports
    pairs the patients: the Dice difference with its interval, volumes within tolerance."""
    from mri_tumor.evaluation.segmentation_comparison import (
        PatientScores,
        compare_segmentations,
    )

    status, _, stderr = run_cli("evaluate-segmenter", str(lgg_like), "--segmenter",
                                str(segmenter_dir), "--patients", "all", "--out",
                                str(tmp_path / "a"))
    assert status == 0, stderr
    report = json.loads((tmp_path / "a" / "segmentation.json").read_text())
    b = tmp_path / "b"
    b.mkdir()
    shifted = dict(report, per_patient=[dict(row, dice=row["dice"] + 0.1 * (i % 2),
                                             volume_ratio=1.0)
                                        for i, row in enumerate(report["per_patient"])])
    (b / "segmentation.json").write_text(json.dumps(shifted))
    status, stdout, stderr = run_cli("compare", str(tmp_path / "a"), str(b), "--json")
    assert status == 0, stderr
    result = json.loads(stdout)["segmentation"]
    assert result["patients"] == len(PATIENTS)
    assert result["difference"] == pytest.approx(0.05)
    low, high = result["difference_interval"]
    assert 0 < low <= 0.05 <= high <= 0.1
    assert result["better_b"] == len(PATIENTS) // 2 and result["better_a"] == 0
    assert result["volume_within_b"] == len(PATIENTS)

    scores = PatientScores(["p1", "p2"], np.array([0.5, 0.6]), np.array([1.0, np.nan]), 0.2)
    other = PatientScores(["p1", "p3"], np.array([0.5, 0.6]), np.array([1.0, 1.0]), 0.2)
    with pytest.raises(ValueError, match="different patients"):
        compare_segmentations(scores, other)
    assert compare_segmentations(scores, scores).volume_within_a == 1  # no reference: not
    status, _, stderr = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "none"))
    assert status != 0 and "Traceback" not in stderr
