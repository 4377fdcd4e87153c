"""Shared fixtures: small labelled folders built from the committed fixture images."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from mri_tumor import Predictor

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_IMAGES = FIXTURES / "images"
SARTAJ_NAMES = {"glioma": "glioma_tumor", "meningioma": "meningioma_tumor",
                "notumor": "no_tumor", "pituitary": "pituitary_tumor"}


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


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size but carries no pixels: enough for a size check."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
