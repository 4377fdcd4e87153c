"""The one preprocessing path: decode -> grayscale -> resize -> intensity -> normalise.

The intensity step (``PreprocessSpec.intensity``, from the model card) is either ``"none"``
(pixels / 255, models trained before it existed) or ``"equalize"``: per-image histogram
equalisation, which replaces each grey level by its mid-rank among the image's pixels. Any
increasing brightness change (gamma, window, contrast curve, another scanner's histogram)
keeps the ranks, so the network input does not carry the source's brightness: the classes
of the public sets differ in brightness by source, and a network that sees raw grey levels
learns that instead of the tumour.

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
    intensity: str = "none"  # "none" or "equalize" (see the module docstring)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity standardisation {self.intensity!r}; "
                             f"known: {', '.join(INTENSITY_MODES)}")

    @classmethod
    def from_card(cls, card) -> PreprocessSpec:
        return cls(card.image_size, tuple(card.mean), tuple(card.std), card.input_channels,
                   getattr(card, "intensity", "none"))


INTENSITY_MODES = ("none", "equalize")


def to_model_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """Grayscale PIL image -> uint8 array of shape (image_size, image_size)."""
    if image.mode != "L":
        raise ValueError(f"expected a grayscale image, got mode {image.mode}")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def equalize_array(pixels: np.ndarray) -> np.ndarray:
    """Histogram equalisation of uint8 (B, H, W) pixels -> float32 (B, 1, H, W) in (0, 1).

    Each grey level becomes the mid-rank of its pixels, ``(below + equal / 2) / count``,
    computed exactly in integers and float64, so ``equalize`` in torch gives the same bits.
    """
    batch = pixels.reshape(len(pixels), -1)
    out = np.empty(batch.shape, dtype=np.float32)
    for i, image in enumerate(batch):
        counts = np.bincount(image, minlength=256).astype(np.int64)
        lut = (2 * np.cumsum(counts) - counts) / np.float64(2 * image.size)
        out[i] = lut.astype(np.float32)[image]
    return out.reshape(len(pixels), 1, *pixels.shape[1:])


def equalize(pixels: torch.Tensor) -> torch.Tensor:
    """``equalize_array`` in torch for a batch: uint8 (B, H, W), or float (B, 1, H, W) in
    [0, 1] (rounded to 256 grey levels first, as augmented batches are) -> float32
    (B, 1, H, W)."""
    import torch

    if pixels.dtype != torch.uint8:
        pixels = (pixels.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)
    batch, height, width = pixels.shape
    levels = pixels.reshape(batch, -1).long()
    counts = torch.zeros(batch, 256, dtype=torch.int64, device=pixels.device)
    counts.scatter_add_(1, levels, torch.ones_like(levels))
    lut = (2 * counts.cumsum(1) - counts).double() / (2 * height * width)
    return lut.float().gather(1, levels).view(batch, 1, height, width)


def normalize_array(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``normalize`` in numpy for uint8 (B, H, W) pixels: the same float32 operations in the
    same order, so the result is bit-identical (a test checks it). (B, C, H, W) pixels are
    several co-registered sequences, one per channel, each equalised on its own."""
    if pixels.ndim == 4:  # one channel per sequence
        b, c = pixels.shape[:2]
        flat = normalize_array(pixels.reshape(b * c, *pixels.shape[2:]),
                               PreprocessSpec(spec.image_size, (0.0,), (1.0,), 1,
                                              spec.intensity))
        grey = flat.reshape(b, c, *pixels.shape[2:])
    elif spec.intensity == "equalize":
        grey = equalize_array(pixels)
    else:
        grey = pixels[:, None].astype(np.float32) / np.float32(255.0)
    if 1 < grey.shape[1] < spec.input_channels:  # fewer sequences than channels
        grey = np.concatenate([grey, np.repeat(grey[:, :1], spec.input_channels
                                               - grey.shape[1], axis=1)], axis=1)
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

    if pixels.dim() == 4 and pixels.shape[1] > 1:  # one channel per sequence, each alone
        b, c = pixels.shape[:2]
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        flat = normalize(pixels.reshape(b * c, 1, *pixels.shape[2:]),
                         PreprocessSpec(spec.image_size, (0.0,), (1.0,), 1, spec.intensity))
        pixels = flat.reshape(b, c, *pixels.shape[2:])
    elif spec.intensity == "equalize":
        pixels = equalize(pixels)
    elif pixels.dtype == torch.uint8:
        pixels = pixels.unsqueeze(1).float() / 255.0
    if 1 < pixels.shape[1] < spec.input_channels:  # fewer sequences than channels: the
        # first (the sequence the masks were drawn on) fills the rest
        pixels = torch.cat([pixels, pixels[:, :1].expand(
            -1, spec.input_channels - pixels.shape[1], -1, -1)], dim=1)
    mean = torch.tensor(spec.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    grey = pixels.expand(-1, spec.input_channels, -1, -1)
    return ((grey - mean) / std).contiguous()


def preprocess(source: ImageSource | Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Any image source -> model input tensor of shape (C, H, W)."""
    import torch

    pixels = to_model_pixels(read_image(source), spec.image_size)
    return normalize(torch.from_numpy(pixels.copy()).unsqueeze(0), spec)[0]
