"""Grad-CAM (Selvaraju et al., 2017): which parts of the image drove the score of one class.

The gradient of that class' logit with respect to the last convolutional feature maps gives
one weight per channel (its mean over positions); the weighted sum of the maps, rectified,
is the heat map. It is computed with the torch model; a predictor on the ONNX backend has no
torch model, so the first Grad-CAM call loads one from the same model folder (once per folder)
and keeps it. Research tool, not a diagnosis.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mri_tumor.data.preprocess import normalize, to_model_pixels
from mri_tumor.data.reading import to_grayscale
from mri_tumor.models.network import Network, network_outputs

if TYPE_CHECKING:
    from mri_tumor.inference import Predictor

_torch_models_lock = threading.Lock()


@cache
def _torch_model_for(model_dir: Path) -> Network:
    from mri_tumor.inference.model_folder import load_served
    from mri_tumor.models import fuse_batch_norm

    model, _, _ = load_served(model_dir)
    return fuse_batch_norm(model)  # as the torch predictor runs it


def torch_model(predictor: Predictor) -> Network:
    """The predictor's torch model; for the ONNX backend, one loaded once from its folder."""
    if predictor.model is not None:
        return predictor.model
    if predictor.model_dir is None:
        raise ValueError("Grad-CAM needs the torch model, and this predictor has neither a "
                         "torch model nor a model folder to load one from")
    with _torch_models_lock:
        return _torch_model_for(Path(predictor.model_dir).resolve())


def gradcam(predictor: Predictor, image: Image.Image, class_index: int,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM heat map of ``class_index`` for a grayscale image.

    Returns a float32 array in [0, 1] of shape (height, width) of the original image, or of
    ``size`` = (width, height) when given (for a display copy). All zeros when no region
    speaks for the class.
    """
    if not 0 <= class_index < len(predictor.class_names):
        raise ValueError(f"class_index {class_index} is out of range for "
                         f"{len(predictor.class_names)} classes")
    model = torch_model(predictor)
    grey = to_grayscale(image)
    width, height = size or grey.size
    pixels = to_model_pixels(grey, predictor.spec.image_size)
    batch = normalize(torch.from_numpy(pixels[None].copy()), predictor.spec)
    # The backbone runs without a graph: only the head (pooling + linear layer) lies between
    # the feature maps and the logit, so that is all the backward pass has to go through.
    with torch.no_grad():
        maps = model.forward_features(batch)
    with torch.enable_grad():
        maps = maps.detach().requires_grad_(True)
        logits = network_outputs(model, maps=maps).logits
        logits[0, class_index].backward()
    assert maps.grad is not None
    weights = maps.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach()).sum(dim=1, keepdim=True))
    resized = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
    heat = resized[0, 0].numpy().astype(np.float32)
    low, high = float(heat.min()), float(heat.max())
    if high - low <= 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return np.clip((heat - low) / (high - low), 0.0, 1.0)


@cache
def _colour_table(colormap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def overlay(image: Image.Image, cam: np.ndarray, opacity: float = 0.5,
            colormap: str = "turbo") -> Image.Image:
    """The image in grey with the heat map blended over it (an RGB image of the same size).

    Each pixel's blend weight is ``opacity * cam``, so regions that do not speak for the
    class stay plain grey and the image remains readable under the colour.
    """
    grey = to_grayscale(image)
    if cam.shape != (grey.height, grey.width):
        resized = Image.fromarray(np.asarray(cam, dtype=np.float32)).resize(
            grey.size, Image.Resampling.BILINEAR)
        cam = np.asarray(resized)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    base = np.repeat(np.asarray(grey, dtype=np.float32)[:, :, None], 3, axis=2)
    heat = _colour_table(colormap)[np.round(cam * 255).astype(np.uint8)]
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * cam)[:, :, None]
    blended = base * (1.0 - alpha) + heat * alpha
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")
