"""ONNX export parity (fp32 and int8) and the out-of-distribution guard of the shipped model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mri_tumor import Predictor
from mri_tumor.cli import main
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import Frame, read_image

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
    np.testing.assert_allclose(torch_scores, torch_predictor.guard.score(torch_features),
                               rtol=1e-4)
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
