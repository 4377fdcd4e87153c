"""Input discovery: the files a user names, folders expanded to the images, DICOM files, NIfTI
volumes and zips in them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.data.reading import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, looks_like_dicom_bytes
from mri_tumor.data.volume import is_nifti_name

if TYPE_CHECKING:  # torch is imported only when a model is needed (fast `mri-tumor app` start)
    pass


# The first bytes of the image formats the decoder reads (JPEG, PNG, BMP, TIFF both ways).
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image_bytes(data: bytes) -> bool:
    """True when the bytes start like a JPEG, PNG, BMP or TIFF file."""
    return data.startswith(IMAGE_SIGNATURES)


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or suffix == ".zip" \
            or is_nifti_name(path):
        return True
    if suffix or not path.is_file():
        return False
    try:  # extension-less files are taken when they are DICOM or an image by content
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return looks_like_dicom_bytes(head) or looks_like_image_bytes(head)


def expand_inputs(paths: Sequence[Path], recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Files as given, folders expanded to their image and DICOM files (sorted).

    Returns (inputs, skipped files found in folders that are not images). A file without an
    extension is taken when its content is DICOM or an image. A path that does not exist
    stays in the inputs so that its result reports it.
    """
    inputs: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.is_dir():
            inputs.append(path)
            continue
        found = path.rglob("*") if recursive else path.iterdir()
        for child in sorted(found):
            if child.is_dir() or child.name.startswith("."):
                continue
            # A broken link or a pipe named like an image is kept, so that its result says why
            # it could not be read.
            (inputs if _is_candidate(child) else skipped).append(child)
    return inputs, skipped
