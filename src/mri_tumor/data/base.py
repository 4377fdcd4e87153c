"""What every reader shares: the size limits, the error types and 8-bit scaling.

``reading`` (any image) and ``dicom`` (DICOM files) both build on this module, and
``reading`` calls ``dicom``: keeping these here keeps the two free of an import circle.
"""

from __future__ import annotations

import numpy as np

# A brain MRI slice is at most a few thousand pixels a side; anything far larger is refused
# before it is decoded so that a hostile or mistaken upload cannot exhaust memory.
MAX_PIXELS = 64_000_000
MIB = 1024 * 1024
# The one size limit of every front end: per file in the app and from the command line, per
# request in the HTTP API. "MB" is 1,048,576 bytes everywhere (as Streamlit counts them).
MAX_UPLOAD_MB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * MIB


def too_large_message(label: str, size: int) -> str:
    """The one wording of the size limit (app, API, command line)."""
    return (f"{label}: {size / MIB:.1f} MB, larger than the {MAX_UPLOAD_MB} MB limit "
            "(1 MB = 1,048,576 bytes)")


class ImageReadError(ValueError):
    """An input that cannot be turned into an image; the message says why, in one line."""


class NotMRIError(ImageReadError):
    """A DICOM file whose header says it is not MRI (Modality CT, US...): refused unread.

    Front ends report it as a rejection ("not a brain MRI"), not as an unreadable file.
    """

    def __init__(self, message: str, modality: str, series: str | None = None) -> None:
        super().__init__(message)
        self.modality = modality
        self.series = series  # the opaque series key, when the header gave one


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map any numeric array to uint8: 8-bit data unchanged, wider data min-max scaled."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.where(finite, values, low) - low) / (high - low) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
