"""The web app's processing: an upload (a name and its bytes) becomes results with the picture
that is shown and its Grad-CAM heat map. No Streamlit here; the page (``app/page.py``), its
cards and the tests call these. Research tool, not a diagnosis.

Modules that import torch (inference, explain) are imported inside the functions that use
them, so that the page's title and uploader show while the model loads.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mri_tumor.data.reading import MAX_UPLOAD_BYTES, too_large_message

if TYPE_CHECKING:
    from mri_tumor.inference import Prediction, Predictor

DISPLAY_SIZE = 640  # longest side of the copy that is shown (and heat-mapped) on the page
FRAME_BATCH = 32

logger = logging.getLogger(__name__)


@dataclass
class AnalysedImage:
    """One result on the page: the prediction, the picture shown and its heat map."""

    prediction: Prediction
    image: Image.Image | None = None  # display copy (grayscale); None when unreadable
    heatmap: np.ndarray | None = None  # Grad-CAM of the predicted class, at the copy's size
    frame: int = 0  # which frame of its file (a multi-frame DICOM file gives several)
    # The uploaded file's bytes, for "Add to site data"; set by the page, never cached.
    data: bytes | None = field(default=None, repr=False)


def too_large(name: str, size: int) -> AnalysedImage:
    """The result of a file over the upload limit (``MAX_UPLOAD_BYTES``): an ``error`` that
    says so, given by its name and size alone (its bytes are never read)."""
    from mri_tumor.inference import ERROR, Prediction

    return AnalysedImage(Prediction(name, ERROR, message=too_large_message(name, size)))


def analyse_upload(predictor: Predictor, name: str, data: bytes) -> list[AnalysedImage]:
    """Analyse one uploaded file: one result per 2-D frame, or one ``error`` result saying
    why the file cannot be read (``rejected`` for a DICOM file whose header says CT, US...).
    Never raises."""
    from mri_tumor.inference import ERROR, Prediction, decode

    if len(data) > MAX_UPLOAD_BYTES:
        return [too_large(name, len(data))]
    decoded = decode(data, name, predictor.name)
    if isinstance(decoded, Prediction):
        return [AnalysedImage(decoded)]
    try:
        predictions = predictor.predict_items(decoded, FRAME_BATCH)
        results = [with_pictures(predictor, frame.image, prediction, index) for index,
                   (frame, prediction) in enumerate(zip(decoded, predictions, strict=True))]
    except MemoryError:
        return [AnalysedImage(Prediction(name, ERROR, message=(
            f"{name}: too large to analyse in the memory available")))]
    except Exception as error:  # a page must show a message, never a traceback
        logger.warning("analysis failed for an upload: %s", type(error).__name__)
        return [AnalysedImage(Prediction(name, ERROR, message=(
            f"{name}: could not be analysed ({type(error).__name__})")))]
    return results


def with_pictures(predictor: Predictor, image: Image.Image, prediction: Prediction,
                  frame: int = 0) -> AnalysedImage:
    """A result with its display copy and, for a classified image, the Grad-CAM of its
    predicted class (computed on the full image, at the copy's size)."""
    from mri_tumor.explain.gradcam import gradcam
    from mri_tumor.inference import OK

    shown = image.copy()
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)
    heatmap = None
    if prediction.status == OK and prediction.label is not None:
        heatmap = gradcam(predictor, image, predictor.class_names.index(prediction.label),
                          size=shown.size)
    return AnalysedImage(prediction, shown, heatmap, frame)


def class_heatmap(predictor: Predictor, item: AnalysedImage, class_name: str) -> np.ndarray:
    """The Grad-CAM of any class of the model for a result's display copy (at its size):
    the map of the predicted class is the one computed with the result; another class' map
    is computed here, from the copy shown (at most ``DISPLAY_SIZE`` px, more than the
    network's input). Raises ValueError for a result without a picture or a class the model
    does not have."""
    from mri_tumor.explain.gradcam import gradcam

    if item.image is None:
        raise ValueError("this result has no image")
    if class_name == item.prediction.label and item.heatmap is not None:
        return item.heatmap
    if class_name not in predictor.class_names:
        raise ValueError(f"{class_name!r} is not a class of this model")
    return gradcam(predictor, item.image, predictor.class_names.index(class_name),
                   size=item.image.size)


def image_digest(image: Image.Image) -> str:
    """A short key for a picture's pixels (for caching what is computed from them)."""
    digest = hashlib.sha256(image.tobytes())
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()[:32]
