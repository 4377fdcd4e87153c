"""The Grad-CAM overlays of ``POST /v1/predict?gradcam=png``: the image in grey with the heat
map of the predicted class over it, as a base64 PNG, made the way the app makes its pictures
(``explain.gradcam``: ``gradcam`` and ``overlay``).

The research-tool line is burned in at the top, so that no viewer can show the picture
without it, and the whole disclaimer is in the PNG's text chunk. Free of the web framework:
the inference queue calls :func:`gradcam_png` in its worker thread. torch is imported on the
first overlay only (the ONNX backend then loads the torch network once per model folder).
"""

from __future__ import annotations

import base64
import io
import logging

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mri_tumor.card import DISCLAIMER
from mri_tumor.data.reading import Frame
from mri_tumor.inference import OK, Prediction, Predictor

logger = logging.getLogger(__name__)
BURNED_IN = "RESEARCH TOOL - NOT FOR DIAGNOSIS"
MAX_SIDE = 512  # the overlay's longest side in pixels; smaller images keep their size


def gradcam_png(predictor: Predictor, frame: Frame, result: Prediction) -> str | None:
    """The base64 PNG of the Grad-CAM overlay of ``result``'s class on ``frame``; None for a
    result without a class, or when it cannot be made (logged by the exception's type)."""
    if result.status != OK or result.label is None:
        return None
    try:
        return _encode(_picture(predictor, frame.image, result.label), predictor.name,
                       result.label)
    except Exception as error:  # one failed overlay must not fail the request
        logger.warning("Grad-CAM overlay failed for one image: %s", type(error).__name__)
        return None


def _picture(predictor: Predictor, image: Image.Image, label: str) -> Image.Image:
    from mri_tumor.explain.gradcam import gradcam, overlay

    shown = image.copy()
    shown.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    # The heat map of the original image (what was classified), at the size shown.
    heat = gradcam(predictor, image, predictor.class_names.index(label), size=shown.size)
    picture = overlay(shown, heat)
    draw = ImageDraw.Draw(picture)
    size = max(8, picture.height // 28)
    font = ImageFont.load_default(size=size)
    draw.rectangle((0, 0, picture.width, size + 4), fill=(0, 0, 0))
    draw.text((3, 1), BURNED_IN, fill=(255, 255, 0), font=font)
    return picture


def _encode(picture: Image.Image, model: str, label: str) -> str:
    info = PngInfo()
    info.add_text("Description", f"Grad-CAM of the class {label} (model {model}); unverified")
    info.add_text("Disclaimer", DISCLAIMER)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
