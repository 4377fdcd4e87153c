"""The predictor and `mri-tumor predict`: inputs of every kind, bad inputs, output formats."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import png_header
from tests.dicom_factory import PATIENT, dicom_bytes

from mri_tumor import Predictor
from mri_tumor.cli import main
from mri_tumor.inference import RESULT_KEYS


def test_paths_bytes_pil_and_arrays_give_the_same_result(predictor: Predictor,
                                                         fixture_paths: list[Path]) -> None:
    path = fixture_paths[5]
    image = Image.open(path)
    results = predictor.predict([path, path.read_bytes(), image, np.asarray(image)],
                                names=["p", "b", "i", "a"])
    assert [r.path for r in results] == ["p", "b", "i", "a"]
    assert len({json.dumps(r.probabilities, sort_keys=True) for r in results}) == 1
    assert results[0].status in ("ok", "rejected")


def test_batching_does_not_change_results(predictor: Predictor, fixture_paths: list[Path]) -> None:
    one_by_one = [predictor.predict([p])[0].probabilities for p in fixture_paths[:6]]
    batched = [r.probabilities for r in predictor.predict(fixture_paths[:6], batch_size=4)]
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a)


@pytest.fixture
def bad_inputs(tmp_path: Path, fixture_paths: list[Path]) -> dict[str, Path]:
    files = {
        "empty.jpg": b"",
        "notes.txt": b"this is text",
        "truncated.jpg": fixture_paths[0].read_bytes()[:400],
        "huge.png": png_header(20000, 20000),
        "scan.pdf": b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["missing.png"] = tmp_path / "missing.png"
    return paths


def test_bad_inputs_get_one_line_messages_and_do_not_stop_the_batch(
        predictor: Predictor, bad_inputs: dict[str, Path], fixture_paths: list[Path]) -> None:
    inputs = [fixture_paths[0], *bad_inputs.values(), fixture_paths[1]]
    results = predictor.predict(inputs)
    assert len(results) == len(inputs)
    assert results[0].status != "error" and results[-1].status != "error"
    expected = {"empty.jpg": "empty file", "notes.txt": "not a supported image",
                "truncated.jpg": "damaged or truncated", "huge.png": "megapixel limit",
                "scan.pdf": "not a supported image", "missing.png": "no such file"}
    for result in results[1:-1]:
        name = Path(result.path).name
        assert result.status == "error" and result.label is None
        assert expected[name] in result.message, (name, result.message)
        assert "\n" not in result.message and "Traceback" not in result.message


def test_cli_json_lines_have_exactly_the_documented_keys(fixture_paths: list[Path],
                                                         capsys) -> None:
    assert main(["predict", "--json", *map(str, fixture_paths[:3])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    for line in out:
        record = json.loads(line)
        assert tuple(record) == RESULT_KEYS
        assert set(record["probabilities"]) == {"glioma", "meningioma", "notumor", "pituitary"}


def test_cli_csv_and_exit_code_1_when_an_input_is_unreadable(
        bad_inputs: dict[str, Path], fixture_paths: list[Path], capsys) -> None:
    status = main(["predict", "--csv", str(fixture_paths[0]), str(bad_inputs["empty.jpg"])])
    assert status == 1
    from mri_tumor.card import ModelCard
    from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
    from mri_tumor.presentation import csv_columns

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["status"] != "error" for r in rows] == [True, False]
    # One p_<class> column per class of the model's card, as evaluate's predictions.csv.
    class_names = ModelCard.load(SHIPPED_MODEL_DIR).class_names
    assert list(rows[0]) == csv_columns(class_names)
    assert rows[0][f"p_{rows[0]['label']}"] == rows[0]["confidence"]
    assert all(rows[1][f"p_{name}"] == "" for name in class_names)


def test_cli_reports_broken_links_and_pipes_named_as_images(tmp_path: Path,
                                                            fixture_paths: list[Path],
                                                            capsys) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(fixture_paths[0].read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    os.mkfifo(folder / "pipe.dcm")  # opening it for reading would block the whole batch
    assert main(["predict", "--json", str(folder), str(folder / "pipe.dcm")]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = [(Path(r["path"]).name, r["status"], r["message"]) for r in records]
    assert by_name[0][:2] == ("a.jpg", "ok")
    assert by_name[1] == ("gone.jpg", "error", f"{folder / 'gone.jpg'}: broken link")
    assert by_name[2][:2] == by_name[3][:2] == ("pipe.dcm", "error")
    assert "not a regular file" in by_name[3][2]


def test_cli_folders_recursive_and_table(tmp_path: Path, fixture_paths: list[Path],
                                         capsys) -> None:
    nested = tmp_path / "study" / "inner"
    nested.mkdir(parents=True)
    (tmp_path / "study" / "a.jpg").write_bytes(fixture_paths[0].read_bytes())
    (nested / "b.jpg").write_bytes(fixture_paths[1].read_bytes())
    (nested / "README.txt").write_text("not an image")
    assert main(["predict", str(tmp_path / "study")]) == 0
    flat = capsys.readouterr()
    assert "a.jpg" in flat.out and "b.jpg" not in flat.out
    assert "Research tool, not a diagnosis" in flat.out
    assert main(["predict", "--recursive", str(tmp_path / "study")]) == 0
    deep = capsys.readouterr()
    assert "a.jpg" in deep.out and "b.jpg" in deep.out
    assert "skipped 1 non-image file" in deep.err


def test_cli_usage_errors_exit_2(capsys) -> None:
    assert main(["predict", "--batch-size", "0", "x.jpg"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["predict", "--model", "/nonexistent/model", "x.jpg"]) == 2
    assert "not a shipped model (default, types)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--backend", "tensorflow", "x.jpg"])
    assert exit_info.value.code == 2


def test_a_broken_model_folder_is_named_with_what_is_wrong(tmp_path: Path, capsys, monkeypatch,
                                                          fixture_paths: list[Path]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR

    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    sample = str(fixture_paths[0])
    model = tmp_path / "model"
    model.mkdir()

    def predict_error(backend: str = "torch") -> str:
        assert main(["predict", sample, "--model", str(model), "--backend", backend]) == 2
        return capsys.readouterr().err

    (model / "card.json").write_text("{not json")
    assert "card.json: not a valid model card" in predict_error()
    (model / "card.json").write_text('{"architecture": "efficientnet_lite0"}')
    assert "missing class_names, image_size, mean, std" in predict_error()
    (model / "card.json").write_text((SHIPPED_MODEL_DIR / "card.json").read_text())
    for backend in ("torch", "onnx"):
        assert "no weights at" in predict_error(backend)
    (model / "model.safetensors").write_text("not weights")
    for backend in ("torch", "onnx"):
        assert "not a readable safetensors file" in predict_error(backend)
    tensors = load_file(str(SHIPPED_MODEL_DIR / "model.safetensors"))
    tensors["_fc.weight"] = torch.zeros(5, tensors["_fc.weight"].shape[1])  # a 5-class head
    save_file(tensors, str(model / "model.safetensors"))
    error = predict_error()
    assert "do not fit the model card.json describes" in error and "_fc.weight" in error
    assert "Traceback" not in error
    (model / "model.onnx").write_text("not a graph")  # an export beside the weights, damaged
    assert "ONNX Runtime cannot load it" in predict_error("onnx")


@pytest.mark.parametrize("grey", [0, 40, 128, 255])
def test_blank_images_are_rejected_with_their_own_message(predictor: Predictor,
                                                          grey: int) -> None:
    blank = np.full((300, 300), grey, dtype=np.uint8)
    blank[0, 0] = 255 - grey  # one odd pixel (e.g. a burnt-in mark) keeps it blank
    result = predictor.predict([blank], names=["blank"])[0]
    assert result.status == "rejected" and result.label is None, result
    assert "blank" in result.message and "does not look like a brain MRI" in result.message


def test_non_mr_dicom_is_rejected_by_its_header_and_mr_dicom_is_classified(
        predictor: Predictor, fixture_paths: list[Path]) -> None:
    pixels = np.asarray(Image.open(fixture_paths[0]).convert("L")).astype(np.uint16) * 16
    modalities = ("CT", "CR", "MR", None)
    results = predictor.predict([dicom_bytes(pixels, modality=m) for m in modalities],
                                names=["ct.dcm", "cr.dcm", "mr.dcm", "untagged.dcm"])
    assert [r.status for r in results] == ["rejected", "rejected", "ok", "ok"]
    assert "DICOM Modality is CT (computed tomography), not MR" in results[0].message
    assert "DICOM Modality is CR (computed radiography), not MR" in results[1].message
    for result in results[:2]:
        assert result.label is None and result.probabilities is None and result.ood_score is None
        assert all(value not in result.message for value in PATIENT.values())
    assert results[2].label == results[3].label == fixture_paths[0].parent.name
