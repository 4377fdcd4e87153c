"""Batch augmentation in torch, so it runs wherever the batch is (GPU when there is one)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the recipe lives with training; these functions only read it
    from mri_tumor.training.config import AugmentConfig


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
    return augment_with_masks(pixels, None, config)[0]


def augment_with_masks(pixels: torch.Tensor, masks: torch.Tensor | None,
                       config: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``augment_batch``, and the same geometric transform applied to (B, 1, H, W) float
    ``masks`` (bilinear, thresholded at one half); intensity changes touch the images only."""
    n = pixels.shape[0]
    theta = random_affine_matrices(n, config, pixels.device).to(pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved = None
    if masks is not None:
        moved = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) >= 0.5).to(masks.dtype)
    if config.contrast > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        factor = 1 + _uniform(n, config.contrast, pixels.device).view(n, 1, 1, 1)
        out = (out - mean) * factor + mean
    if config.brightness > 0:
        out = out + _uniform(n, config.brightness, pixels.device).view(n, 1, 1, 1)
    out = lower_resolution(out, config.resolution)
    out = intensity_changes(out.clamp(0.0, 1.0), config)
    if config.probability < 1:
        untouched = torch.rand(n, 1, 1, 1, device=pixels.device) >= config.probability
        out = torch.where(untouched, pixels, out)
        if masks is not None and moved is not None:
            moved = torch.where(untouched, masks, moved)
    return out, moved


def lower_resolution(pixels: torch.Tensor, resolution: float) -> torch.Tensor:
    """Shrink each image of a (B, 1, H, W) batch by a random factor in [1, 1 + resolution]
    (antialiased bilinear) and enlarge it back to H x W: the detail a coarser acquisition or
    a smaller stored image would have lost."""
    if resolution <= 0:
        return pixels
    height, width = pixels.shape[-2:]
    factors = (1 + torch.rand(len(pixels)) * resolution).tolist()
    out = []
    for image, factor in zip(pixels, factors, strict=True):
        small = (max(1, round(height / factor)), max(1, round(width / factor)))
        image = F.interpolate(image[None], size=small, mode="bilinear", antialias=True,
                              align_corners=False)
        out.append(F.interpolate(image, size=(height, width), mode="bilinear",
                                 align_corners=False))
    return torch.cat(out)


def intensity_changes(pixels: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Gamma, bias field and Rician noise on a (B, 1, H, W) batch in [0, 1]."""
    n, _, height, width = pixels.shape
    device = pixels.device
    out = pixels
    if config.gamma > 0:
        log_gamma = _uniform(n, math.log1p(config.gamma), device).view(n, 1, 1, 1)
        out = out.clamp_min(1e-6) ** torch.exp(log_gamma)
    if config.bias_field > 0:
        # A second-order polynomial in x and y with random coefficients: the slow
        # brightness drift across the field of view of a receive coil.
        y, x = torch.meshgrid(torch.linspace(-1, 1, height, device=device),
                              torch.linspace(-1, 1, width, device=device), indexing="ij")
        basis = torch.stack([x, y, x * y, x * x, y * y])  # (5, H, W)
        coefficients = _uniform(n * 5, config.bias_field / 2, device).view(n, 5, 1, 1)
        out = out * torch.exp((coefficients * basis).sum(1, keepdim=True))
    if config.noise > 0:
        sigma = torch.rand(n, 1, 1, 1, device=device) * config.noise
        real = out + sigma * torch.randn_like(out)
        out = torch.sqrt(real * real + (sigma * torch.randn_like(out)) ** 2)
    return out.clamp(0.0, 1.0)
