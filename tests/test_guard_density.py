"""The guard's third part, a density on block statistics: one score in torch and ONNX, fitted by
training and by ``calibrate --density-only`` without touching the rest of the guard."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mri_tumor import Predictor
from mri_tumor.card import WEIGHTS_FILE, ModelCard
from mri_tumor.cli import main
from mri_tumor.data.preprocess import PreprocessSpec, to_model_pixels
from mri_tumor.data.reading import read_image
from mri_tumor.inference.model_folder import load_served
from mri_tumor.models.ood import FeatureDensity
from mri_tumor.training.outputs import predict_outputs, predict_statistics

SHIPPED = Path(__file__).parents[1] / "src" / "mri_tumor" / "weights" / "efficientnet_lite0"
TINY = ["--epochs", "1", "--batch-size", "4", "--max-train-batches", "2", "--image-size", "96"]


def _pixels(paths: list[Path], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_model_pixels(read_image(p), size) for p in paths]))


@pytest.fixture(scope="module")
def density_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A copy of the shipped model whose guard's density is replaced by one fitted on half the
    fixture images, its cut at their median distance: the other half is partly refused by it
    alone. Returns the folder and each fixture's density distance."""
    folder = tmp_path_factory.mktemp("density") / "model"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*.onnx"))
    model, card, guard = load_served(folder)
    assert guard is not None and guard.density is not None  # the shipped guard has one
    paths = sorted((Path(__file__).parent / "fixtures" / "images").glob("*/*.jpg"))
    spec = PreprocessSpec.from_card(card)
    block = model.guard_block
    assert block == 13
    statistics = predict_statistics(model, _pixels(paths, card.image_size), spec, block)
    values = FeatureDensity.transform(statistics[::2])
    precision = np.linalg.inv(np.cov(values, rowvar=False) + 0.1 * np.eye(values.shape[1]))
    density = FeatureDensity(values.mean(0), precision, cut=np.inf, block=block)
    distances = density.distance(statistics)
    density.cut = float(np.median(distances))
    density.typical = float(np.quantile(distances, 0.25))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    tensors.update({f"extra.{k}": v for k, v in density.to_tensors().items()})
    save_file(tensors, str(folder / WEIGHTS_FILE))
    card.ood_density = {"block": block, "reject_rate": 0.5}
    card.save(folder)
    return folder, distances


def test_the_density_is_part_of_the_one_guard_score_in_torch_and_onnx(
        density_model: tuple[Path, np.ndarray], fixture_paths: list[Path], tmp_path: Path,
        monkeypatch) -> None:
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    folder, distances = density_model
    model, card, guard = load_served(folder)
    assert guard is not None and guard.density is not None
    assert guard is not None and guard.density is not None and guard.density.block == 13
    spec = PreprocessSpec.from_card(card)
    pixels = _pixels(fixture_paths, card.image_size)
    _, features = predict_outputs(model, pixels, spec)
    without = copy.deepcopy(guard)
    without.density, without._module = None, None
    feature_score = without.score(features)  # the distance and the refusal direction
    cut, typical = guard.density.cut, guard.density.typical
    assert 0 < typical < cut
    # A typical MRI's score is the feature part's; the density's part reaches the threshold
    # at its cut.
    expected = np.maximum(feature_score, guard.threshold * np.clip(distances - typical, 0, None)
                          / (cut - typical))
    assert np.allclose(guard.score(features, predict_statistics(model, pixels, spec, 13)),
                       expected, rtol=1e-3)
    with pytest.raises(ValueError, match="block statistics"):
        guard.score(features)
    refused_by_density = distances > guard.density.cut
    assert refused_by_density.any() and not refused_by_density.all()
    for backend in ("torch", "onnx"):
        results = Predictor.load(folder, backend=backend).predict(fixture_paths)
        scores = np.array([r.ood_score for r in results])
        assert np.allclose(scores, expected, rtol=2e-3), backend
        rejected = np.array([r.status == "rejected" for r in results])
        # Every image the density alone puts beyond its cut is refused, by either backend.
        assert rejected[refused_by_density].all(), backend
        assert (rejected == (expected > guard.threshold)).all(), backend


def test_an_export_carries_the_density_and_says_so(density_model: tuple[Path, np.ndarray],
                                                   tmp_path: Path) -> None:
    from mri_tumor.inference.export import read_metadata

    folder, _ = density_model
    out = tmp_path / "model.onnx"
    assert main(["export", str(out), "--model", str(folder)]) == 0
    metadata = read_metadata(out)
    assert metadata["ood_density_block"] == 13
    assert "block 13" in metadata["outputs_description"]


def _write_split(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _train_tiny(dataset: Path, out: Path) -> Path:
    assert main(["train", str(dataset), "--out", str(out), *TINY]) == 0
    return out


def test_training_fits_a_density_and_calibrate_density_only_keeps_the_rest(
        dataset: Path, tmp_path: Path, capsys) -> None:
    out = _train_tiny(dataset, tmp_path / "run")
    card = ModelCard.load(out)
    assert card.ood_density is not None and card.ood_density["block"] == 13
    before = load_file(str(out / WEIGHTS_FILE))
    assert "extra.ood_density_precision" in before
    threshold, temperature = card.ood_threshold, card.temperature

    # Fitted on another split that keeps the model's sides: only the density changes.
    rows = list(csv.DictReader((out / "split.csv").open()))
    other = _write_split(tmp_path / "other.csv", rows)
    assert main(["calibrate", str(dataset), "--model", str(out), "--density-only",
                 "--density-split", str(other)]) == 0
    assert "with the density on block 13" in capsys.readouterr().out
    after = load_file(str(out / WEIGHTS_FILE))
    for name, tensor in before.items():
        if "ood_density" not in name:
            assert torch.equal(tensor, after[name]), name
    again = ModelCard.load(out)
    assert (again.ood_threshold, again.temperature) == (threshold, temperature)
    assert again.ood_density is not None and again.ood_density["fitted_on"]["split"] == "other.csv"

    # A split that moves one of the model's validation rows to training is refused.
    _write_split(other, [dict(r, split="train") if r["split"] == "val" else r for r in rows])
    assert main(["calibrate", str(dataset), "--model", str(out), "--density-only",
                 "--density-split", str(other)]) == 2
    assert "on another side" in capsys.readouterr().err
    assert load_file(str(out / WEIGHTS_FILE)).keys() == after.keys()

    # --no-density gives the guard without it.
    assert main(["calibrate", str(dataset), "--model", str(out), "--no-density"]) == 0
    assert ModelCard.load(out).ood_density is None
    assert "extra.ood_density_mean" not in load_file(str(out / WEIGHTS_FILE))
    assert json.loads((out / "card.json").read_text()).get("ood_density") is None


def test_a_one_folder_model_gets_a_density_fitted_on_more_sources(dataset: Path,
                                                                  tmp_path: Path) -> None:
    """Its split names no source; given with other folders, its rows are matched to the
    source its card records, and a joined split (scripts/join_density_split.py) adds the
    other source's rows to the density's fit."""
    import subprocess
    import sys

    from tests.conftest import copy_dataset

    out = _train_tiny(dataset, tmp_path / "run")
    rows = list(csv.DictReader((out / "split.csv").open()))
    assert {r["source"] for r in rows} == {""}
    other = copy_dataset(tmp_path / "other")
    added = _write_split(tmp_path / "other.csv", [dict(r, source="other") for r in rows])
    joined = tmp_path / "joined.csv"
    script = Path(__file__).parents[1] / "scripts" / "join_density_split.py"
    name = ModelCard.load(out).training.sources[0]["name"]
    subprocess.run([sys.executable, str(script), str(out / "split.csv"), "--source", name,
                    "--add", str(added), "--out", str(joined)], check=True,
                   capture_output=True)
    assert main(["calibrate", str(dataset), str(other), "--model", str(out), "--density-only",
                 "--density-split", str(joined)]) == 0
    density = ModelCard.load(out).ood_density
    assert density is not None
    own_train = sum(r["split"] == "train" for r in rows)
    assert density["fitted_on"]["train_rows"] == 2 * own_train  # both sources' rows
