"""Batch augmentation in torch, so it runs wherever the batch is (GPU when there is one)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """The seed's Keras augmentation, plus brightness/contrast jitter. Zero disables a part."""

    rotation: float = 40.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.2  # fraction of width/height
    shear: float = 0.2  # shear factor (0.2 is about 11 degrees)
    zoom: float = 0.2  # scale uniform in [1 - zoom, 1 + zoom]
    horizontal_flip: bool = True
    brightness: float = 0.1  # added to [0, 1] pixels, uniform in [-b, b]
    contrast: float = 0.1  # multiplied around the image mean, uniform in [1 - c, 1 + c]
    # Share of the images in a batch that are transformed; the rest pass through unchanged,
    # so the network also sees images as they arrive at inference (never resampled).
    probability: float = 1.0

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def _uniform(n: int, limit: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * limit


def random_affine_matrices(n: int, config: AugmentConfig, device: torch.device) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates, for ``F.affine_grid``."""
    angle = _uniform(n, math.radians(config.rotation), device)
    shear = _uniform(n, config.shear, device)
    scale = 1 + _uniform(n, config.zoom, device)
    flip = torch.ones(n, device=device)
    if config.horizontal_flip:
        flip = torch.where(torch.rand(n, device=device) < 0.5, -flip, flip)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Inverse map: sampling a zoomed-in image means reading a smaller region, hence 1/scale.
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear_m = torch.zeros(n, 2, 2, device=device)
    shear_m[:, 0, 0] = 1
    shear_m[:, 0, 1] = shear
    shear_m[:, 1, 1] = 1
    linear = a @ shear_m / scale.view(n, 1, 1)
    linear[:, :, 0] *= flip.view(n, 1)
    shift = torch.stack([_uniform(n, 2 * config.shift, device),
                         _uniform(n, 2 * config.shift, device)], -1)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def augment_batch(pixels: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Randomly transform a (B, 1, H, W) float batch in [0, 1]; outside pixels become black.

    Each image is transformed with ``config.probability`` and otherwise returned as it is.
    """
    n = pixels.shape[0]
    theta = random_affine_matrices(n, config, pixels.device).to(pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if config.contrast > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        factor = 1 + _uniform(n, config.contrast, pixels.device).view(n, 1, 1, 1)
        out = (out - mean) * factor + mean
    if config.brightness > 0:
        out = out + _uniform(n, config.brightness, pixels.device).view(n, 1, 1, 1)
    out = out.clamp(0.0, 1.0)
    if config.probability < 1:
        untouched = torch.rand(n, 1, 1, 1, device=pixels.device) >= config.probability
        out = torch.where(untouched, pixels, out)
    return out
