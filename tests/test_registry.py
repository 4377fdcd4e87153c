"""The model registry: register a model folder under a name, list it with its lineage, use it
with --model everywhere, remove it (rollback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import FIXTURE_IMAGES, make_model_folder

from mri_tumor.card import CARD_FILE, ModelCard
from mri_tumor.cli import main
from mri_tumor.inference import registry
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model

LINEAGE = {"parent": {"name": "default", "weights_sha256": "ab" * 32},
           "site_data": {"fingerprint": "f" * 16, "counts": {"a": 3, "b": 4}},
           "gate": {"promoted": True}}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty registry home, and a private ONNX cache."""
    monkeypatch.setenv("MRI_TUMOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking model folder with classes a and b, a lineage and a run's extras."""
    folder = make_model_folder(tmp_path_factory.mktemp("run") / "site-1", ["a", "b"])
    card = ModelCard.load(folder)
    card.lineage = LINEAGE
    card.save(folder)
    (folder / "history.json").write_text("{}")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"not copied")
    return folder


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err.strip()


def test_home_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TUMOR_HOME", str(tmp_path / "h"))
    assert registry.home() == tmp_path / "h"
    monkeypatch.delenv("MRI_TUMOR_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert registry.home() == tmp_path / "xdg" / "mri-tumor"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert registry.home() == tmp_path / "user" / ".local" / "share" / "mri-tumor"


def test_a_registered_model_is_used_by_name_listed_with_its_parent_and_rolled_back(
        home: Path, model_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "register", str(model_folder), "--name", "site-1"]) == 0
    capsys.readouterr()
    stored = home / "models" / "site-1"
    assert sorted(p.name for p in stored.iterdir()) == sorted(
        p.name for p in model_folder.iterdir() if p.is_file())  # no checkpoints/
    assert resolve_model("site-1") == ("site-1", stored)

    image = str(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0])
    assert main(["predict", "--model", "site-1", "--json", image]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["label"] in ["a", "b"] and result["model"] == "site-1"

    assert main(["models", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert list(listed) == [*SHIPPED_MODELS, "site-1"]
    assert listed["default"]["kind"] == "shipped" and listed["default"]["accuracy"] > 0.9
    assert listed["site-1"]["kind"] == "registered"
    assert listed["site-1"]["parent"] == "default"
    assert listed["site-1"]["parent_weights_sha256"] == "ab" * 32
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "KIND", "CREATED", "ACCURACY", "MACRO-F1", "PARENT"]
    assert table[1].split()[:2] == ["default", "shipped"]
    assert table[3].split()[0:2] == ["site-1", "registered"]
    assert table[3].split()[-1] == "default"

    assert main(["models", "register", str(model_folder), "--name", "site-1"]) == 2
    assert "already registered" in _one_line_error(capsys)

    assert main(["models", "remove", "site-1"]) == 0
    capsys.readouterr()
    assert not stored.exists() and model_folder.is_dir()  # the source is not touched
    assert main(["predict", "--model", "site-1", "--json", image]) == 2
    error = _one_line_error(capsys)
    assert "unknown model 'site-1'" in error and "default, types" in error
    assert main(["models", "remove", "site-1"]) == 2
    assert "no registered model named 'site-1'" in _one_line_error(capsys)


@pytest.mark.parametrize("name", list(SHIPPED_MODELS))
def test_shipped_names_cannot_be_registered_over_or_removed(
        name: str, home: Path, model_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "register", str(model_folder), "--name", name]) == 2
    assert "shipped model" in _one_line_error(capsys)
    assert main(["models", "remove", name]) == 2
    assert "shipped model" in _one_line_error(capsys)
    assert not home.exists()
    assert resolve_model(name) == (name, SHIPPED_MODELS[name])


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "", "-x", "with space"])
def test_names_must_be_simple(name: str, home: Path, model_folder: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "register", str(model_folder), f"--name={name}"]) == 2
    assert "model name" in _one_line_error(capsys)
    assert not home.exists()


def test_a_folder_that_is_not_a_model_is_refused_and_leaves_nothing(
        home: Path, model_folder: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    no_card = tmp_path / "no-card"
    shutil.copytree(model_folder, no_card)
    (no_card / CARD_FILE).unlink()
    assert main(["models", "register", str(no_card), "--name", "broken"]) == 2
    assert "no card.json" in _one_line_error(capsys)
    bad_weights = tmp_path / "bad-weights"
    shutil.copytree(model_folder, bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["models", "register", str(bad_weights), "--name", "broken"]) == 2
    _one_line_error(capsys)
    assert main(["models", "register", str(tmp_path / "missing"), "--name", "broken"]) == 2
    _one_line_error(capsys)
    assert not home.exists() or not any(home.rglob("*"))
    assert registry.registered() == {}
    with pytest.raises(ValueError, match="not a registered model \\(none\\)"):
        resolve_model("broken")


def test_a_failed_copy_leaves_nothing_behind(home: Path, model_folder: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry.shutil, "copy2", full_disk)
    with pytest.raises(OSError):
        registry.register(model_folder, "site-2")
    assert list((home / "models").iterdir()) == []
    assert "site-2" not in registry.registered()


def test_cards_without_lineage_load_and_write_none_back(model_folder: Path,
                                                        tmp_path: Path) -> None:
    old = ModelCard.load(SHIPPED_MODELS["default"])
    assert old.lineage is None and "lineage" not in old.to_dict()
    card = ModelCard.load(model_folder)
    assert card.lineage == LINEAGE and card.to_dict()["lineage"] == LINEAGE
    raw = json.loads((model_folder / CARD_FILE).read_text())
    raw["lineage"] = ["not", "an", "object"]
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="lineage must be an object"):
        ModelCard.load(tmp_path)
