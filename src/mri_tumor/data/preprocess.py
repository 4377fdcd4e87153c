"""The one preprocessing path: decode -> grayscale -> resize -> normalise.

Training, evaluation and every front end call these functions with parameters from the
model card, so the same image gives the same tensor everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mri_tumor.data.reading import ImageSource, read_image

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX backend runs without it
    import torch


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_channels: int = 3

    @classmethod
    def from_card(cls, card) -> PreprocessSpec:
        return cls(card.image_size, tuple(card.mean), tuple(card.std), card.input_channels)


def to_model_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """Grayscale PIL image -> uint8 array of shape (image_size, image_size)."""
    if image.mode != "L":
        raise ValueError(f"expected a grayscale image, got mode {image.mode}")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize_array(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``normalize`` in numpy for uint8 (B, H, W) pixels: the same float32 operations in the
    same order, so the result is bit-identical (a test checks it)."""
    grey = pixels[:, None].astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    grey = np.broadcast_to(grey, (grey.shape[0], spec.input_channels, *grey.shape[2:]))
    return np.ascontiguousarray((grey - mean) / std)


def normalize(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Batch of grey pixels -> normalised model input of shape (B, C, H, W), float32.

    ``pixels`` is uint8 (B, H, W) straight from ``to_model_pixels`` or float (B, 1, H, W)
    in [0, 1] after augmentation.
    """
    import torch

    if pixels.dtype == torch.uint8:
        pixels = pixels.unsqueeze(1).float() / 255.0
    mean = torch.tensor(spec.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    grey = pixels.expand(-1, spec.input_channels, -1, -1)
    return ((grey - mean) / std).contiguous()


def preprocess(source: ImageSource | Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Any image source -> model input tensor of shape (C, H, W)."""
    import torch

    pixels = to_model_pixels(read_image(source), spec.image_size)
    return normalize(torch.from_numpy(pixels.copy()).unsqueeze(0), spec)[0]
