"""Data stage: reading images as users have them, duplicate-aware splitting, preprocessing
and batch augmentation."""

from mri_tumor.data.folders import (
    CLASS_NAMES,
    FolderScan,
    LabelledImage,
    UnknownClassFolderError,
    scan_folder,
)
from mri_tumor.data.reading import Frame, ImageReadError, read_frames, read_image

# ``preprocess`` itself is imported from ``mri_tumor.data.preprocess`` (same name as its module).
_PREPROCESS = ("PreprocessSpec", "normalize", "to_model_pixels")


def __getattr__(name: str) -> object:
    # The preprocessing functions need torch; importing them lazily keeps light front-end
    # start-up (reading files, the web app's first paint) free of it.
    if name in _PREPROCESS:
        import importlib

        return getattr(importlib.import_module("mri_tumor.data.preprocess"), name)
    raise AttributeError(f"module 'mri_tumor.data' has no attribute {name!r}")


__all__ = [
    "CLASS_NAMES",
    "FolderScan",
    "Frame",
    "ImageReadError",
    "LabelledImage",
    "PreprocessSpec",
    "UnknownClassFolderError",
    "normalize",
    "read_frames",
    "read_image",
    "scan_folder",
    "to_model_pixels",
]
