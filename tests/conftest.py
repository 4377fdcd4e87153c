"""Shared fixtures: small labelled folders built from the committed fixture images."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mri_tumor import Predictor
from mri_tumor.cli import main

if TYPE_CHECKING:  # imported where used: a plain `pytest` run has no `tests` package
    from tests.orthanc import OrthancServer

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_IMAGES = FIXTURES / "images"
SARTAJ_NAMES = {"glioma": "glioma_tumor", "meningioma": "meningioma_tumor",
                "notumor": "no_tumor", "pituitary": "pituitary_tumor"}


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``mri-tumor`` in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def copy_dataset(target: Path, layout: str = "kaggle", per_class: int = 5) -> Path:
    """Copy the fixture images into ``target`` in the Kaggle or SARTAJ folder layout."""
    for class_dir in sorted(FIXTURE_IMAGES.iterdir()):
        name = SARTAJ_NAMES[class_dir.name] if layout == "sartaj" else class_dir.name
        (target / name).mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, target / name / image.name)
    return target


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A writable Kaggle-layout copy of the fixture images (5 per class)."""
    return copy_dataset(tmp_path / "data")


@pytest.fixture
def fixture_paths() -> list[Path]:
    """The committed fixture images (5 per class), sorted."""
    return sorted(FIXTURE_IMAGES.glob("*/*.jpg"))


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    """The shipped model on the torch backend (Grad-CAM uses its network directly)."""
    return Predictor.load(backend="torch", threads=2)


@pytest.fixture(scope="session")
def onnx_predictor() -> Predictor:
    """The shipped model on the ONNX backend, the front ends' default."""
    return Predictor.load(backend="onnx", threads=2)


@pytest.fixture(scope="session")
def types_predictor() -> Predictor:
    """The shipped types model (15 tumour types and the MR sequence) on the ONNX backend."""
    return Predictor.load("types", backend="onnx", threads=2)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size but carries no pixels: enough for a size check."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_model_folder(directory: Path, class_names: list[str],
                      sequence_names: list[str] | None = None, image_size: int = 64) -> Path:
    """An untrained EfficientNet-Lite0 model folder with these classes (and a sequence head
    when ``sequence_names`` are given): what any card-driven part must handle unchanged."""
    from mri_tumor.card import ModelCard
    from mri_tumor.models import create_model, save_weights

    sequence_names = sequence_names or []
    torch_seed = sum(map(ord, "".join(class_names)))  # a model that does not favour class 0
    import torch

    torch.manual_seed(torch_seed)
    model = create_model("efficientnet_lite0", len(class_names), pretrained=False,
                         num_sequences=len(sequence_names))
    save_weights(model, directory)
    ModelCard(architecture="efficientnet_lite0", class_names=list(class_names),
              image_size=image_size, mean=[0.5] * 3, std=[0.5] * 3, intensity="equalize",
              display_names={name: name.title() for name in class_names},
              normal_class=class_names[0], sequence_names=sequence_names,
              label_scheme="types" if sequence_names else "classes").save(directory)
    return directory


@pytest.fixture(params=[2, 5, 15], ids=lambda n: f"{n}-classes")
def other_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Path:
    """A model folder whose card names 2, 5 or 15 made-up classes (the 15 with a sequence
    head)."""
    count = request.param
    names = [f"class-{chr(ord('a') + i)}" for i in range(count)]
    sequences = ["T1", "T1C+", "T2"] if count == 15 else None
    return make_model_folder(tmp_path_factory.mktemp("model"), names, sequences)


def require_orthanc() -> None:
    """Skip the test when the Orthanc server is not installed, unless the run must have it
    (``MRI_TUMOR_REQUIRE_ORTHANC`` set, as ``.ci/run`` does): then fail."""
    from tests.orthanc import ORTHANC

    if ORTHANC.exists():
        return
    message = (f"Orthanc is not installed ({ORTHANC}; Debian packages orthanc and "
               "orthanc-dicomweb): the PACS end-to-end tests need a real server")
    if os.environ.get("MRI_TUMOR_REQUIRE_ORTHANC"):
        pytest.fail(f"{message}, and MRI_TUMOR_REQUIRE_ORTHANC is set")
    pytest.skip(message)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh, empty Orthanc server (DICOMweb, basic auth) for this test, stopped after it.
    Tests that need Orthanc to C-STORE to a listener declare it with ``add_modality``."""
    from tests.orthanc import OrthancServer

    require_orthanc()
    with OrthancServer.start(tmp_path / "orthanc") as server:
        yield server
