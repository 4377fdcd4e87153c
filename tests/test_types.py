"""The tumour-type scheme and models with a second (MR sequence) head: folder names, the
network, ONNX, selecting a model by name, evaluation, and cards with other classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import FIXTURE_IMAGES, FIXTURES, make_model_folder
from tests.orthanc import free_ports

from mri_tumor import Predictor
from mri_tumor.cli import main
from mri_tumor.data.folders import TYPE_LABELS, scan_folder, type_of_folder
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.evaluation import evaluate
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model

FIXTURE_TYPES = FIXTURES / "types"
SEQUENCES = ["T1", "T1C+", "T2"]


@pytest.mark.parametrize(("folder", "expected"), [
    ("Astrocitoma T1C+", ("astrocytoma", "T1C+")),
    ("Carcinoma T2", ("carcinoma (metastasis)", "T2")),
    ("Ependimoma T1", ("ependymoma", "T1")),
    ("Meduloblastoma t1c+", ("medulloblastoma", "T1C+")),
    ("Neurocitoma T2", ("neurocytoma", "T2")),
    ("Papiloma T1", ("papilloma (choroid plexus)", "T1")),
    ("_NORMAL T2", ("normal", "T2")),
    ("Schwannoma  T1", ("schwannoma", "T1")),
    ("Glioblastoma T1", ("glioblastoma", "T1")),
])
def test_type_folders_are_read_in_english_with_their_sequence(folder: str,
                                                              expected: tuple[str, str]) -> None:
    label, sequence, reason = type_of_folder(folder)
    assert (label, sequence) == expected and reason is None
    assert label in TYPE_LABELS


def test_the_type_scheme_lists_class_folders_as_skipped_and_unknown_types_as_errors(
        tmp_path: Path) -> None:
    assert len(TYPE_LABELS) == 15
    assert type_of_folder("glioma")[0] is None and "not class folders" in type_of_folder(
        "glioma")[2]
    scan = scan_folder(FIXTURE_TYPES, scheme="types")
    assert {image.label for image in scan.images} <= set(TYPE_LABELS)
    assert "schwannoma" in {image.label for image in scan.images}  # out of the 4-class scope
    assert all(image.sequence in SEQUENCES for image in scan.images)
    (tmp_path / "Lymphoma T1").mkdir()
    with pytest.raises(ValueError, match="Lymphoma T1"):
        scan_folder(tmp_path, scheme="types")


def test_a_two_headed_network_exports_both_outputs_and_the_backends_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    model = make_model_folder(tmp_path / "m", list(TYPE_LABELS), SEQUENCES)
    pixels = np.stack([to_model_pixels(Image.open(p).convert("L"), 64)
                       for p in sorted(FIXTURE_TYPES.glob("*/*.jpg"))[:6]])
    torch_out = Predictor.load(model, backend="torch").network_outputs(pixels)
    onnx_out = Predictor.load(model, backend="onnx").network_outputs(pixels)
    assert onnx_out["sequence_logits"].shape == (6, 3)
    for name in ("logits", "features", "sequence_logits"):
        np.testing.assert_allclose(torch_out[name], onnx_out[name], rtol=1e-3, atol=1e-3)
    assert main(["export", str(tmp_path / "x.onnx"), "--model", str(model)]) == 0
    import onnx

    outputs = [o.name for o in onnx.load(str(tmp_path / "x.onnx")).graph.output]
    assert outputs == ["logits", "features", "sequence_logits"]


def test_results_of_a_sequence_model_name_the_model_and_the_sequence(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "m", list(TYPE_LABELS), SEQUENCES)
    result = Predictor.load(model).predict([sorted(FIXTURE_TYPES.glob("*/*.jpg"))[0]])[0]
    data = result.to_dict()
    assert data["model"] == "m" and data["sequence"] in SEQUENCES
    assert sum(data["sequence_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    plain = Predictor.load().predict([sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0]])[0].to_dict()
    assert plain["model"] == "default" and "sequence" not in plain


def test_shipped_models_are_selected_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_model("types") == ("types", SHIPPED_MODELS["types"])
    assert resolve_model(None)[0] == "default"
    image = sorted(FIXTURE_TYPES.glob("*/*.jpg"))[0]
    assert main(["predict", "--json", "--model", "types", str(image)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["model"] == "types" and result["sequence"] in SEQUENCES
    assert result["label"] in TYPE_LABELS


def test_an_unknown_model_name_is_one_line_naming_the_shipped_models(
        capsys: pytest.CaptureFixture[str]) -> None:
    image = str(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0])
    port = str(free_ports(1)[0])  # app and serve check their port first: a free one
    for command in (["predict", image], ["evaluate", str(FIXTURE_IMAGES)], ["export", "x.onnx"],
                    ["app", "--port", port], ["serve", "--port", port],
                    ["calibrate", str(FIXTURE_IMAGES)]):
        assert main([*command, "--model", "tumours"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert "unknown model 'tumours'" in error and "default, types" in error


def test_evaluating_types_gives_sequence_accuracy_and_its_confusion_matrix(
        tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "m", list(TYPE_LABELS), SEQUENCES)
    result = evaluate(Predictor.load(model), [FIXTURE_TYPES], progress=False).to_json()
    assert result["classes"] == list(TYPE_LABELS) and result["n"] == 20
    sequence = result["sequence"]
    assert sequence["classes"] == SEQUENCES and sequence["n"] == 20
    matrix = np.array(sequence["confusion_matrix"])
    assert matrix.sum() == 20 and result["sequence_accuracy"] == pytest.approx(
        np.trace(matrix) / 20)
    assert {key for key in result["by_group"]} == {"sequence:T1", "sequence:T1C+",
                                                   "sequence:T2"}


@pytest.mark.parametrize("classes", [["glioma", "notumor"],
                                     ["glioma", "meningioma", "notumor", "pituitary", "other"]])
def test_evaluate_follows_a_card_with_other_classes(tmp_path: Path, classes: list[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_IMAGES, data)
    model = make_model_folder(tmp_path / "m", classes)
    evaluation = evaluate(Predictor.load(model), [data], progress=False)
    result = evaluation.to_json()
    covered = [c for c in classes if (data / c).is_dir()]
    assert result["classes"] == classes and result["n"] == 5 * len(covered)
    assert np.array(result["confusion_matrix"]).shape == (len(classes), len(classes))
    skipped = {entry["path"].split(" ")[0] for entry in result["skipped"]}
    assert skipped == {c for c in ("glioma", "meningioma", "notumor", "pituitary")
                       if c not in classes}


def test_predict_follows_a_card_with_other_classes(other_model: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    card = json.loads((other_model / "card.json").read_text())
    image = str(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0])
    assert main(["predict", "--json", "--model", str(other_model), image]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["label"] in card["class_names"]
    assert list(result["probabilities"]) == card["class_names"]
    assert ("sequence" in result) == bool(card["sequence_names"])
