"""ONNX export parity (fp32 and int8) and the out-of-distribution guard of the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mri_tumor import Predictor
from mri_tumor.card import ModelCard
from mri_tumor.cli import main
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import Frame, read_image
from mri_tumor.inference.export import exported_card_path, is_exported_card, read_metadata
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR, SHIPPED_MODELS, ensure_onnx_file
from mri_tumor.training.outputs import predict_statistics

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def torch_predictor() -> Predictor:
    return Predictor.load(backend="torch")


def _probabilities(results: list) -> np.ndarray:
    return np.array([[r.probabilities[c] for c in sorted(r.probabilities)] for r in results])


def test_onnx_backend_matches_torch(torch_predictor: Predictor, fixture_paths: list[Path],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    onnx_predictor = Predictor.load(backend="onnx")
    size = torch_predictor.spec.image_size
    pixels = np.stack([to_model_pixels(Image.open(p).convert("L"), size) for p in fixture_paths])
    torch_logits, torch_features, torch_scores = torch_predictor.forward(pixels)
    onnx_logits, onnx_features, onnx_scores = onnx_predictor.forward(pixels)
    assert np.abs(torch_features - onnx_features).max() < 1e-3
    assert np.abs(torch_logits - onnx_logits).max() < 1e-3
    # The guard's score is part of the ONNX graph and matches the numpy-fitted guard.
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-3)
    guard = torch_predictor.guard
    assert guard is not None and guard.density is not None and guard.density.block is not None
    statistics = predict_statistics(torch_predictor.model, torch.from_numpy(pixels),
                                    torch_predictor.spec, guard.density.block)
    np.testing.assert_allclose(torch_scores, guard.score(torch_features, statistics),
                               rtol=1e-4)
    # The cached export carries the card's metadata too.
    cached = ensure_onnx_file(SHIPPED_MODEL_DIR, torch_predictor.card)
    assert cached.is_relative_to(tmp_path / "cache")
    assert read_metadata(cached)["class_names"] == torch_predictor.card.class_names
    torch_results = torch_predictor.predict(fixture_paths)
    onnx_results = onnx_predictor.predict(fixture_paths)
    assert [r.status for r in torch_results] == [r.status for r in onnx_results]
    ok = [i for i, r in enumerate(torch_results) if r.status == "ok"]
    assert np.abs(_probabilities([torch_results[i] for i in ok])
                  - _probabilities([onnx_results[i] for i in ok])).max() <= 1e-3


def test_export_command_fp32_and_int8(torch_predictor: Predictor, fixture_paths: list[Path],
                                      tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model-int8.onnx"
    assert main(["export", str(fp32)]) == 0
    assert main(["export", str(int8), "--quantize", "int8"]) == 0
    assert main(["export", str(fp32)]) == 2  # refuses to overwrite without --force
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("keep me")
    capsys.readouterr()
    assert main(["export", str(in_the_way / "model.onnx")]) == 1
    assert capsys.readouterr().err.startswith(f"mri-tumor export: error: File exists: {in_the_way}")
    assert in_the_way.read_text() == "keep me"
    size = torch_predictor.spec.image_size
    # The product's own decoding and resize: what a user's image becomes.
    pixels = np.stack([to_model_pixels(read_image(p), size) for p in fixture_paths])
    import torch

    from mri_tumor.data.preprocess import normalize

    batch = normalize(torch.from_numpy(pixels), torch_predictor.spec).numpy()
    expected = torch_predictor.forward(pixels)[0].argmax(1)
    threshold = torch_predictor.guard.threshold
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, features, scores = session.run(None, {"pixels": batch})
        assert features.shape == (len(fixture_paths), 1280)
        assert (logits.argmax(1) == expected).all(), path.name
        assert (scores <= threshold).all(), path.name  # no fixture MRI is rejected
    # The network's weights are int8; the guard's 1280 x 1280 matrix stays in float.
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size
    # Both carry the card's numbers in their metadata, and the card beside them.
    card = torch_predictor.card
    for path, quantization in ((fp32, "none"), (int8, "int8")):
        metadata = read_metadata(path)
        assert metadata["quantization"] == quantization
        assert (metadata["class_names"], metadata["image_size"], metadata["mean"],
                metadata["std"], metadata["intensity"], metadata["temperature"],
                metadata["ood_threshold"]) == (
            card.class_names, card.image_size, card.mean, card.std, card.intensity,
            card.temperature, card.ood_threshold)
        assert metadata["outputs"] == ["logits", "features", "ood_score"]
        written = json.loads(exported_card_path(path).read_text())
        assert written.pop("export")["quantization"] == quantization
        assert written == card.to_dict()


def test_export_writes_the_metadata_and_card_of_the_types_model(tmp_path: Path,
                                                                 capsys) -> None:
    import onnx

    out = tmp_path / "types.onnx"
    assert main(["export", str(out), "--model", "types"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} and its model card " \
                                              f"{tmp_path / 'types.card.json'}"
    card = ModelCard.load(SHIPPED_MODELS["types"])
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["mri_tumor.class_names"]) == card.class_names
    assert json.loads(props["mri_tumor.display_names"])["carcinoma (metastasis)"] == \
        card.display_name("carcinoma (metastasis)")
    assert json.loads(props["mri_tumor.sequence_names"]) == ["T1", "T1C+", "T2"]
    assert json.loads(props["mri_tumor.outputs"])[-1] == "sequence_logits"
    assert "histogram-equalise" in json.loads(props["mri_tumor.preprocessing"])
    assert "not a diagnosis" in model.doc_string
    assert ModelCard.load(_as_model_folder(tmp_path / "types.card.json")).class_names == \
        card.class_names


def _as_model_folder(card_file: Path) -> Path:
    """A folder holding ``card_file`` as card.json, for ``ModelCard.load``."""
    folder = card_file.parent / "loaded"
    folder.mkdir()
    (folder / "card.json").write_text(card_file.read_text())
    return folder


def test_export_leaves_a_card_it_did_not_write_unless_forced(tmp_path: Path, capsys) -> None:
    out, card = tmp_path / "model.onnx", tmp_path / "model.card.json"
    card.write_text('{"mine": true}\n')
    assert main(["export", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("mri-tumor export: error:") and "\n" not in message
    assert "model.card.json exists and is not a card written by mri-tumor export" in message
    assert card.read_text() == '{"mine": true}\n' and not out.exists()
    assert main(["export", str(out), "--force"]) == 0
    assert is_exported_card(card)
    out.unlink()  # its own card left behind is replaced without --force
    assert main(["export", str(out)]) == 0 and out.is_file()
    (tmp_path / "other.card.json").mkdir()
    assert main(["export", str(tmp_path / "other.onnx"), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_export_help_says_what_the_graph_takes_and_gives(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in ("INPUT 'pixels': float32, shape (batch, 3, S, S)", "(x - mean) / std",
                 "mid-rank", "'logits' (batch, classes)", "softmax(logits / temperature)",
                 "'ood_score' (batch)", "'sequence_logits'", "metadata_props",
                 "model.card.json", "not a diagnosis"):
        assert said in text, said


def test_onnx_backend_runs_without_importing_torch(tmp_path: Path,
                                                   fixture_paths: list[Path]) -> None:
    """The ONNX backend reads the card and one self-contained graph: torch (~200 MB) is not
    imported once the graph is cached, which keeps a server's memory small."""
    env = {**os.environ, "MRI_TUMOR_CACHE": str(tmp_path / "cache")}
    child = ("import sys; from mri_tumor import Predictor; "
             "r = Predictor.load(backend='onnx').predict(sys.argv[1:]); "
             "print(' '.join(p.label or p.status for p in r)); "
             "print('torch' in sys.modules)")
    paths = [str(p) for p in fixture_paths[:3]]
    first = subprocess.run([sys.executable, "-c", child, *paths], env=env, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    assert first[1] == "True"  # the first use exports the graph into the cache
    second = subprocess.run([sys.executable, "-c", child, *paths], env=env, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    assert second[0] == first[0]
    assert second[0].split() == [Path(p).parent.name for p in paths]
    assert second[1] == "False"


def test_guard_keeps_brain_mris_and_rejects_other_images(torch_predictor: Predictor,
                                                         fixture_paths: list[Path]) -> None:
    from non_mri import non_mri_images

    assert torch_predictor.guard is not None, "the shipped model has no OOD guard"
    mri = torch_predictor.predict(fixture_paths)
    assert sum(r.status == "rejected" for r in mri) <= 1
    samples = non_mri_images(expand=False)
    picked = [s for s in samples if s[0] in ("photo", "document", "blank", "noise")][::3]
    results = torch_predictor.predict_frames([Frame(name, image.convert("L"))
                                              for _, name, image in picked])
    rejected = [r.status == "rejected" for r in results]
    assert np.mean(rejected) >= 0.9, [r.path for r in results if r.status != "rejected"]
    for result in results:
        if result.status == "rejected":
            assert result.label is None and result.probabilities is None
            assert "does not look like a brain MRI" in result.message


def test_each_sample_image_gets_its_own_class(torch_predictor: Predictor) -> None:
    samples = sorted((Path(__file__).parents[1] / "src/mri_tumor/samples").glob("*.jpg"))
    results = torch_predictor.predict(samples)
    assert [r.label for r in results] == [p.stem for p in samples]


def test_onnx_backend_works_without_a_writable_cache(tmp_path: Path, fixture_paths: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(blocker))
    results = Predictor.load(backend="onnx").predict(fixture_paths[:2])
    assert [r.label for r in results] == [p.parent.name for p in fixture_paths[:2]]
    assert blocker.read_text() == "a file where the cache folder would be"


def test_a_feature_density_fitted_on_mris_alone_refuses_what_lies_far_from_them() -> None:
    from mri_tumor.models.ood import fit_feature_density

    rng = np.random.default_rng(0)
    train = rng.normal(2.0, 0.3, (2000, 8))
    heldout = rng.normal(2.0, 0.3, (2000, 8))
    density = fit_feature_density(train, heldout, reject_rate=0.01)
    assert abs(density.refuses(heldout).mean() - 0.01) < 0.002  # the cut where it was set
    # Where its part of the guard's score starts: the held-out MRIs' median distance.
    assert density.typical == pytest.approx(np.median(density.distance(heldout)))
    assert density.typical < density.cut
    assert density.refuses(rng.normal(2.0, 0.3, (500, 8))).mean() < 0.03
    far = rng.normal(-3.0, 0.3, (50, 8))  # other statistics, a kind never fitted on
    assert density.refuses(far).all()
