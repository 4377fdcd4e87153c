"""Explanations for a prediction: a Grad-CAM heat map and a short text about the class.

Grad-CAM (Selvaraju et al., 2017) shows which parts of the image drove the score of one class:
the gradient of that class' logit with respect to the last convolutional feature maps gives
one weight per channel (its mean over positions); the weighted sum of the maps, rectified,
is the heat map. It is computed with the torch model; a predictor on the ONNX backend has no
torch model, so the first Grad-CAM call loads one from the same model folder (once per folder)
and keeps it.

The texts are plain-language summaries written for this project, each with public sources,
so that every front end (web app, HTTP API) shows the same explanation. Research tool, not a
diagnosis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mri_tumor.data.preprocess import normalize, to_model_pixels
from mri_tumor.data.reading import to_grayscale

if TYPE_CHECKING:
    from mri_tumor.inference import Predictor


@dataclass(frozen=True)
class Source:
    """A public page that the explanation text is based on."""

    title: str
    url: str


@dataclass(frozen=True)
class ClassExplanation:
    """What a class means, in a few sentences, and where to read more."""

    title: str
    summary: str
    on_mri: str
    sources: tuple[Source, ...]


_NCI_BRAIN = Source("National Cancer Institute: Brain Tumors—Patient Version",
                    "https://www.cancer.gov/types/brain")

EXPLANATIONS: dict[str, ClassExplanation] = {
    "glioma": ClassExplanation(
        title="Glioma",
        summary=(
            "A glioma is a tumour that starts in the glial cells, the cells that hold nerve "
            "cells in place and support them in the brain and spinal cord. It is one of the "
            "most common tumours to begin in the brain itself. Gliomas range from slow-growing "
            "(low grade) to fast-growing (high grade, such as glioblastoma); their type, grade "
            "and genetic features guide treatment, which may combine surgery, radiotherapy "
            "and chemotherapy."),
        on_mri=(
            "Usually a mass inside the brain tissue, often in a cerebral hemisphere, with "
            "edges that can be hard to define and swelling around it."),
        sources=(
            Source("Mayo Clinic: Glioma — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/glioma/symptoms-causes/"
                   "syc-20350251"),
            _NCI_BRAIN,
        ),
    ),
    "meningioma": ClassExplanation(
        title="Meningioma",
        summary=(
            "A meningioma grows from the meninges, the layers of membrane that wrap the brain "
            "and spinal cord. It is the most common tumour found inside the skull. Most are "
            "not cancerous and grow slowly, often for years without symptoms, and many are "
            "found by chance on a scan done for another reason. Small ones may only be "
            "watched; larger ones or those causing symptoms may be removed or treated with "
            "radiation."),
        on_mri=(
            "Usually a well-defined mass lying against the inner surface of the skull or a "
            "fold of the dura, pressing on the brain from outside rather than growing in it."),
        sources=(
            Source("Mayo Clinic: Meningioma — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/meningioma/symptoms-causes/"
                   "syc-20355643"),
            _NCI_BRAIN,
        ),
    ),
    "pituitary": ClassExplanation(
        title="Pituitary tumor",
        summary=(
            "A pituitary tumour is a growth in the pituitary gland, the pea-sized gland at "
            "the base of the brain, behind the nose, that controls many of the body's "
            "hormones. Almost all are benign adenomas that do not spread. They cause symptoms "
            "by making too much (or too little) of a hormone, or by pressing on nearby "
            "structures such as the optic nerves, which can affect vision. Options include "
            "watching, medication, surgery (often through the nose) and radiotherapy."),
        on_mri=(
            "A mass in the midline at the skull base, in the small bony hollow (sella "
            "turcica) below the brain, sometimes growing upwards towards the optic nerves."),
        sources=(
            Source("Mayo Clinic: Pituitary tumors — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/pituitary-tumors/"
                   "symptoms-causes/syc-20350548"),
            Source("National Cancer Institute: Pituitary Tumors—Patient Version",
                   "https://www.cancer.gov/types/pituitary"),
        ),
    ),
    "notumor": ClassExplanation(
        title="No tumor",
        summary=(
            "The model found none of the features it learned for glioma, meningioma or "
            "pituitary tumour in this slice. That does not rule out disease: one slice shows "
            "only part of the brain, and the model knows only these three tumour types, so "
            "other tumours and other conditions (stroke, bleeding, infection, multiple "
            "sclerosis...) are outside what it can see. Only a radiologist reading the whole "
            "study can call a scan normal."),
        on_mri=(
            "Brain tissue, fluid spaces and the midline look like those of the scans without "
            "a tumour that the model was trained on."),
        sources=(
            Source("MedlinePlus (U.S. National Library of Medicine): Head MRI",
                   "https://medlineplus.gov/ency/article/003791.htm"),
            _NCI_BRAIN,
        ),
    ),
}


def explanation(class_name: str) -> ClassExplanation:
    """The explanation of one class (a model class name such as ``"glioma"``)."""
    try:
        return EXPLANATIONS[class_name]
    except KeyError:
        raise KeyError(f"no explanation for class {class_name!r}; known: "
                       f"{', '.join(EXPLANATIONS)}") from None


# -- Grad-CAM ------------------------------------------------------------------------------
_torch_models_lock = threading.Lock()


@cache
def _torch_model_for(model_dir: Path) -> torch.nn.Module:
    from mri_tumor.models import fuse_batch_norm, load_model

    model, _, _ = load_model(model_dir)
    return fuse_batch_norm(model)  # as the torch predictor runs it


def torch_model(predictor: Predictor) -> torch.nn.Module:
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
        maps = model.feature_maps(batch)
    with torch.enable_grad():
        maps = maps.detach().requires_grad_(True)
        logits = model.classify(model.pool_features(maps))
        logits[0, class_index].backward()
    assert maps.grad is not None
    weights = maps.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    cam = cam.numpy().astype(np.float32)
    low, high = float(cam.min()), float(cam.max())
    if high - low <= 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return np.clip((cam - low) / (high - low), 0.0, 1.0)


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
