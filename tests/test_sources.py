"""Several sources in one run, their folder layouts, and input that does not carry a source's
brightness (histogram equalisation), plus the guard's refusal direction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tests.conftest import FIXTURES

from mri_tumor.card import ModelCard
from mri_tumor.cli import main
from mri_tumor.data.augment import intensity_changes, lower_resolution
from mri_tumor.data.folders import (
    class_of_folder,
    parse_type_sequence,
    scan_folder,
    source_name,
)
from mri_tumor.data.preprocess import PreprocessSpec, normalize, normalize_array, to_model_pixels
from mri_tumor.data.reading import read_image
from mri_tumor.data.splitting import read_split_csv
from mri_tumor.evaluation.stress import half_resolution_pixels
from mri_tumor.inference import Predictor
from mri_tumor.models.ood import OODGuard, fit_guard, fit_refusal, source_balanced_quantile
from mri_tumor.training.config import AugmentConfig

TYPES = FIXTURES / "types"
EQUALIZED = PreprocessSpec(96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3, "equalize")
TINY = ["--epochs", "1", "--batch-size", "4", "--max-train-batches", "2", "--image-size", "64"]


@pytest.mark.parametrize(("folder", "expected"), [
    ("Astrocitoma T1C+", ("glioma", "T1C+", None)),
    ("Glioblastoma T2", ("glioma", "T2", None)),
    ("Oligodendroglioma t1", ("glioma", "T1", None)),
    ("Meningioma T1", ("meningioma", "T1", None)),
    ("_NORMAL T2", ("notumor", "T2", None)),
    ("glioma_tumor", ("glioma", "", None)),
])
def test_type_and_sequence_folders_map_onto_the_classes(folder: str, expected: tuple) -> None:
    assert class_of_folder(folder) == expected


def test_out_of_scope_types_are_skipped_with_the_reason_and_unknown_names_are_not() -> None:
    label, sequence, reason = class_of_folder("Schwannoma T1")
    assert (label, sequence) == (None, "T1") and "Schwannoma is not one of" in reason
    assert parse_type_sequence("Schwannoma T1C+") == ("Schwannoma", "T1C+")
    assert class_of_folder("holiday photos") == (None, "", None)


def test_scan_of_the_type_sequence_layout_keeps_sequence_and_source() -> None:
    scan = scan_folder(TYPES)
    assert scan.source == "types"
    assert scan.counts() == {"glioma": 6, "meningioma": 6, "notumor": 6}
    assert {(i.label, i.sequence) for i in scan.images} == {
        ("glioma", "T1C+"), ("glioma", "T2"), ("meningioma", "T1"), ("meningioma", "T2"),
        ("notumor", "T1"), ("notumor", "T2")}
    assert [name for name, _ in scan.skipped] == ["Schwannoma T1/ (2 files)"]
    assert "not one of this model's classes" in scan.skipped[0][1]


@pytest.fixture
def two_sources(tmp_path: Path, dataset: Path) -> tuple[Path, Path]:
    """The Kaggle-layout fixtures and the type-sequence fixtures, with a mirrored copy of one
    Kaggle image planted in the second source (a duplicate across sources)."""
    types = shutil.copytree(TYPES, tmp_path / "teaching")
    original = sorted((dataset / "glioma").iterdir())[0]
    ImageOps.mirror(Image.open(original)).save(types / "Astrocitoma T1C+" / "copy.png")
    return dataset, types


def test_training_on_two_sources_records_them_and_never_splits_a_duplicate_group(
        two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    kaggle, types = two_sources
    out = tmp_path / "run"
    assert main(["train", str(kaggle), str(types), "--out", str(out), *TINY,
                 "--oversample", f"{types.name}:T1=3"]) == 0
    rows = read_split_csv(out / "split.csv")
    kaggle_name = source_name(kaggle)  # "<parent>/data": "data" alone is too generic a name
    assert kaggle_name == f"{kaggle.parent.name}/data"
    assert {r.source for r in rows} == {kaggle_name, types.name}
    assert {r.sequence for r in rows if r.source == types.name} == {"T1", "T1C+", "T2"}
    sides: dict[int, set[str]] = {}
    for row in rows:
        sides.setdefault(row.group, set()).add(row.split)
    assert all(len(s) == 1 for s in sides.values())
    copy = next(r for r in rows if r.path.endswith("copy.png"))
    partners = [r for r in rows if r.group == copy.group and r is not copy]
    assert [p.source for p in partners] == [kaggle_name]  # grouped across the two sources
    # Every (source, class) with enough images has validation images.
    val = {(r.source, r.label) for r in rows if r.split == "val"}
    assert (types.name, "meningioma") in val and (kaggle_name, "pituitary") in val

    card = ModelCard.load(out)
    assert card.intensity == "equalize"
    sources = {s["name"]: s for s in card.training.sources}
    assert sources[types.name]["counts"]["train"]["pituitary"] == 0
    assert sum(sources[types.name]["counts"]["val"].values()) + sum(
        sources[types.name]["counts"]["train"].values()) == 19
    assert set(card.metrics.validation_by_source) == {kaggle_name, types.name}
    assert card.training.per_source_fit is None  # pooled unless asked
    assert sources[types.name]["oversampled"] == {"T1": 3}
    assert "oversampled" not in sources[kaggle_name]
    history = json.loads((out / "history.json").read_text())
    assert [s["name"] for s in history["sources"]] == [kaggle_name, types.name]
    # The split is reused from both folders, and refused without the second one.
    assert main(["calibrate", str(out), str(kaggle), str(types), "--per-source"]) == 0
    per_source = ModelCard.load(out)
    assert per_source.training.per_source_fit is True  # benchmarks re-fit it so
    assert per_source.training.reject_rate is None  # the default share
    # A larger share per cut puts the cut lower, and the card records the share.
    assert main(["calibrate", str(out), str(kaggle), str(types), "--per-source",
                 "--reject-rate", "0.2"]) == 0
    looser = ModelCard.load(out)
    assert looser.training.reject_rate == 0.2
    assert looser.ood_threshold < per_source.ood_threshold
    assert main(["calibrate", str(out), str(kaggle), str(types), "--reject-rate", "5"]) == 2
    assert main(["calibrate", str(out), str(kaggle)]) == 2


def test_equalisation_is_the_same_in_numpy_and_torch_and_for_augmented_batches() -> None:
    pixels = np.stack([to_model_pixels(read_image(p), 96)
                       for p in sorted((FIXTURES / "images" / "glioma").iterdir())[:3]])
    from_numpy = normalize_array(pixels, EQUALIZED)
    assert np.array_equal(from_numpy, normalize(torch.from_numpy(pixels), EQUALIZED).numpy())
    as_float = torch.from_numpy(pixels).unsqueeze(1).float() / 255.0  # as augmentation gives
    assert np.array_equal(from_numpy, normalize(as_float, EQUALIZED).numpy())
    assert from_numpy.shape == (3, 3, 96, 96)


def _fixture_pixels(size: int = 96) -> np.ndarray:
    return np.stack([to_model_pixels(read_image(p), size)
                     for p in sorted((FIXTURES / "images").rglob("*.jpg"))])


def test_equalised_input_is_exactly_invariant_to_an_increasing_relabelling_of_grey_levels(
        ) -> None:
    images = [image for image in _fixture_pixels() if len(np.unique(image)) < 256]
    assert len(images) >= 5
    for image in images:
        levels = np.unique(image)
        # A strictly increasing map of the levels the image uses onto other 8-bit levels.
        new_levels = np.sort(np.random.default_rng(0).choice(256, len(levels), replace=False))
        lut = np.zeros(256, np.uint8)
        lut[levels] = new_levels
        relabelled = lut[image]
        assert not np.array_equal(relabelled, image)
        assert np.array_equal(normalize_array(relabelled[None], EQUALIZED),
                              normalize_array(image[None], EQUALIZED))


# Tolerance, as the mean absolute change of the normalised input (which spans [-1, 1]) over
# the 20 fixture images. Rounding to 8 bits after a change merges or splits grey levels,
# which moves equalised values a little; gamma 2 merges the 16 darkest levels (background
# noise) into one, which moves the background. Measured: 0.0005, 0.014 and 0.089; without
# equalisation the same changes move the input by 0.34, 0.27 and 0.23.
@pytest.mark.parametrize(("change", "tolerance"), [
    (lambda x: x ** 0.5, 0.02), (lambda x: 0.6 * x + 0.2, 0.02), (lambda x: x ** 2.0, 0.1)])
def test_equalised_input_is_nearly_invariant_to_monotonic_intensity_changes(
        change, tolerance: float) -> None:
    pixels = _fixture_pixels()
    changed = np.round(change(pixels / 255.0) * 255).astype(np.uint8)
    gap = np.abs(normalize_array(changed, EQUALIZED) - normalize_array(pixels, EQUALIZED))
    raw = PreprocessSpec(96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3, "none")
    raw_gap = np.abs(normalize_array(changed, raw) - normalize_array(pixels, raw))
    assert gap.mean() < tolerance and gap.mean() < raw_gap.mean() / 2


def test_intensity_augmentation_changes_images_and_keeps_the_range() -> None:
    torch.manual_seed(0)
    batch = torch.rand(6, 1, 32, 32)
    out = intensity_changes(batch, AugmentConfig(gamma=0.5, bias_field=0.3, noise=0.05))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    assert (out - batch).abs().flatten(1).mean(1).min() > 1e-3  # every image was changed
    assert torch.equal(intensity_changes(batch, AugmentConfig.none()), batch)


def test_a_card_without_the_intensity_field_loads_and_predicts_as_before(
        dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    assert main(["train", str(dataset), "--out", str(out), "--intensity", "none", *TINY]) == 0
    card = json.loads((out / "card.json").read_text())
    del card["intensity"]  # as cards written before the field existed
    (out / "card.json").write_text(json.dumps(card))
    predictor = Predictor.load(out, backend="torch")
    assert predictor.spec.intensity == "none"
    path = sorted((dataset / "glioma").iterdir())[0]
    pixels = to_model_pixels(read_image(path), 64)[None]
    old_input = (np.repeat(pixels[:, None], 3, axis=1).astype(np.float32) / 255 - 0.5) / 0.5
    with torch.inference_mode():
        logits = predictor.backend.graph(torch.from_numpy(old_input))[0].numpy()
    assert np.allclose(predictor.forward(pixels)[0], logits, atol=1e-5)


def test_refusal_direction_refuses_its_examples_and_keeps_heldout_mris() -> None:
    rng = np.random.default_rng(0)
    mri = rng.normal(size=(400, 16))
    labels = rng.integers(0, 2, 400)
    ct = rng.normal(size=(60, 16)) + np.r_[3.5, np.zeros(15)]  # near the MRIs, one axis off
    heldout = rng.normal(size=(200, 16))
    guard = fit_guard(mri, labels, heldout, 2)
    assert (guard.score(ct) > guard.threshold).mean() < 0.5  # the distance alone misses them
    fit_refusal(guard, mri, ct, heldout)
    new_ct = rng.normal(size=(100, 16)) + np.r_[3.5, np.zeros(15)]
    assert (guard.score(new_ct) > guard.threshold).mean() > 0.7  # 0.33 before
    assert (guard.score(heldout) > guard.threshold).mean() <= 0.01
    # The stored tensors give the same guard back.
    again = OODGuard.from_tensors(guard.to_tensors(), guard.threshold)
    assert np.allclose(again.score(new_ct), guard.score(new_ct), atol=1e-4)


def test_a_small_unusual_source_does_not_take_the_refusals_of_a_large_one() -> None:
    rng = np.random.default_rng(1)
    mri = rng.normal(size=(400, 16))
    labels = rng.integers(0, 2, 400)
    large = rng.normal(size=(1000, 16))
    small = rng.normal(size=(200, 16)) * 1.3  # another source: a little further out
    heldout = np.concatenate([large, small])
    sources = np.array(["large"] * 1000 + ["small"] * 200)
    pooled = fit_guard(mri, labels, heldout, 2)
    assert (pooled.score(small) > pooled.threshold).mean() > 0.02  # the pooled cut: 4x its share
    balanced = fit_guard(mri, labels, heldout, 2, heldout_groups=sources)
    for source in ("large", "small"):
        members = heldout[sources == source]
        assert (balanced.score(members) > balanced.threshold).mean() <= 0.005
    ct = rng.normal(size=(60, 16)) + np.r_[3.5, np.zeros(15)]
    fit_refusal(balanced, mri, ct, heldout, heldout_groups=sources)
    cut_only = balanced.refusal_logits(heldout) > 0
    assert all(cut_only[sources == s].mean() <= 0.005 for s in ("large", "small"))
    assert source_balanced_quantile(np.arange(10.0), 0.5) == 4.5  # no groups: plain quantile
    # Ten images of a third source, one of them far out, do not set a cut of their own.
    scores = np.r_[balanced.score(heldout), [1e6] + [1.0] * 9]
    tiny = np.r_[sources, ["tiny"] * 10]
    assert source_balanced_quantile(scores, 0.995, tiny) < 1e3


def test_an_empty_refusal_folder_or_a_damaged_split_is_one_line_exit_2(
        dataset: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no-ct"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), "--refuse", str(empty), *TINY]) == 2
    assert f"refusal examples {empty}: no readable images there" in capsys.readouterr().err
    assert not (out / "card.json").exists()  # refused before training, nothing written
    damaged = tmp_path / "split.csv"
    damaged.write_text("path,label,split,group,phash\nglioma/a.jpg,glioma,val\n")
    assert main(["train", str(dataset), "--out", str(out), "--split", str(damaged), *TINY]) == 2
    err = capsys.readouterr().err
    assert "not a valid split file" in err and "Traceback" not in err


def test_refusal_examples_are_recorded_by_folder_name_and_cleared_by_a_refit_without_them(
        dataset: Path, tmp_path: Path) -> None:
    refuse = tmp_path / "head-ct"
    refuse.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # bright rings on grey: not like the MRI fixtures
        image = np.full((96, 96), 90, np.uint8)
        yy, xx = np.mgrid[:96, :96]
        image[np.abs(np.hypot(yy - 48, xx - 48) - 30 - i) < 4] = 250
        Image.fromarray(np.clip(image + rng.normal(0, 5, image.shape), 0, 255)
                        .astype(np.uint8)).save(refuse / f"ct{i}.png")
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), "--refuse", str(refuse), *TINY]) == 0
    card = ModelCard.load(out)
    assert card.training.refuse_dirs == ["head-ct"] and card.training.refusal_examples == 6
    guard = Predictor.load(out, backend="torch").guard
    assert guard is not None and guard.refusal_weight is not None
    assert main(["calibrate", str(out), str(dataset)]) == 0
    card = ModelCard.load(out)
    assert card.training.refuse_dirs is None and card.metrics.refusal_examples_refused is None
    assert Predictor.load(out, backend="torch").guard.refusal_weight is None


def test_evaluate_with_a_split_takes_only_its_training_rows_as_training_images(
        two_sources: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    kaggle, types = two_sources
    out = tmp_path / "run"
    assert main(["train", str(kaggle), str(types), "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    val = [r for r in read_split_csv(out / "split.csv") if r.split == "val"]
    for train_dirs in ([str(kaggle), str(types)], [str(kaggle)]):
        assert main(["evaluate", str(kaggle), str(types), "--model", str(out), "--split",
                     str(out / "split.csv"), "--train-dir", *train_dirs, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["n"] == len(val)
        # The whole folders hold the validation images themselves; the split's training rows
        # do not, so no validation image is counted as a copy of a training image.
        assert result["leak_free"]["n"] == len(val)
        assert 0 <= result["shortcut_baseline_accuracy"] <= 1


def test_resolution_augmentation_removes_detail_and_keeps_size_and_range() -> None:
    torch.manual_seed(0)
    batch = torch.from_numpy(_fixture_pixels(64)[:6]).unsqueeze(1).float() / 255.0
    out = lower_resolution(batch, 2.0)
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1

    def detail(images: torch.Tensor) -> torch.Tensor:  # mean step between neighbours
        return (images[..., 1:] - images[..., :-1]).abs().flatten(1).mean(1)

    assert torch.all(detail(out) < detail(batch))
    assert torch.equal(lower_resolution(batch, 0.0), batch)


def test_half_resolution_stress_keeps_the_size_and_smooths() -> None:
    pixels = _fixture_pixels(64)[:4]
    half = half_resolution_pixels(pixels)
    assert half.shape == pixels.shape and half.dtype == np.uint8
    steps = lambda p: np.abs(np.diff(p.astype(int), axis=-1)).mean()  # noqa: E731
    assert steps(half) < steps(pixels)
