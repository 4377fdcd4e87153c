"""scripts/average_weights.py: the uniform average of several runs' weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from tests.conftest import make_model_folder

from mri_tumor.card import ModelCard
from mri_tumor.models import create_model, load_model, save_weights

SCRIPT = Path(__file__).parents[1] / "scripts" / "average_weights.py"
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def run(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, check=False)


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two model folders with the same classes and split but different weights."""
    first = make_model_folder(tmp_path / "seed0", CLASSES)
    second = make_model_folder(tmp_path / "seed1", CLASSES)
    torch.manual_seed(1)
    save_weights(create_model("efficientnet_lite0", len(CLASSES), pretrained=False), second)
    card = ModelCard.load(second)
    card.training.seed = 1
    card.save(second)
    for folder in (first, second):
        (folder / "split.csv").write_text("path,label,split\nglioma/a.jpg,glioma,val\n")
    return first, second


def test_the_average_is_the_mean_of_every_float_tensor_and_names_its_runs(
        tmp_path: Path) -> None:
    first, second = two_runs(tmp_path)
    out = tmp_path / "soup"
    result = run(first, second, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "mri-tumor calibrate" in result.stdout  # the step that must follow
    states = [load_model(folder)[0].state_dict() for folder in (first, second, out)]
    weight = "_conv_stem.weight"
    assert not torch.equal(states[0][weight], states[1][weight])
    for key, value in states[2].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2)
    card = ModelCard.load(out)
    assert [r["seed"] for r in card.training.other["averaged_runs"]] == [None, 1]
    assert (out / "split.csv").read_text() == (first / "split.csv").read_text()


def test_runs_that_do_not_fit_together_are_refused_and_nothing_is_overwritten(
        tmp_path: Path) -> None:
    first, second = two_runs(tmp_path)
    other_classes = make_model_folder(tmp_path / "three", ["a", "b", "c"])
    (other_classes / "split.csv").write_text((first / "split.csv").read_text())
    result = run(first, other_classes, "--out", tmp_path / "soup")
    assert result.returncode == 2 and "other classes" in result.stderr
    (second / "split.csv").write_text("path,label,split\nglioma/b.jpg,glioma,val\n")
    result = run(first, second, "--out", tmp_path / "soup2")
    assert result.returncode == 2 and "different splits" in result.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = run(first, first, "--out", taken)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert run(first, "--out", tmp_path / "one").returncode == 2
    (second / "split.csv").unlink()
    result = run(first, second, "--out", tmp_path / "soup3")
    assert result.returncode == 2 and "no split.csv" in result.stderr
