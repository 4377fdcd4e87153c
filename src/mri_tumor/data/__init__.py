"""Data stage: reading images, series and volumes as users have them (``reading``, ``dicom``,
``volume``), finding inputs (``inputs``), labelled folders and patients (``folders``,
``patients``), duplicate-aware splitting (``splitting``), split rows -> files -> labelled
pixels (``rows``), preprocessing and batch augmentation, and a site's confirmed cases
(``site``)."""

from mri_tumor.data.folders import (
    CLASS_NAMES,
    FolderScan,
    LabelledImage,
    UnknownClassFolderError,
    scan_folder,
)
from mri_tumor.data.preprocess import (  # ``preprocess`` itself: from its module (same name)
    PreprocessSpec,
    normalize,
    normalize_array,
    to_model_pixels,
)
from mri_tumor.data.reading import Frame, ImageReadError, NotMRIError, read_frames, read_image

__all__ = [
    "CLASS_NAMES",
    "FolderScan",
    "Frame",
    "ImageReadError",
    "LabelledImage",
    "NotMRIError",
    "PreprocessSpec",
    "UnknownClassFolderError",
    "normalize",
    "normalize_array",
    "read_frames",
    "read_image",
    "scan_folder",
    "to_model_pixels",
]
