"""What a trained network gives for a batch of uint8 pixels, without augmentation: logits and
pooled features (``predict_outputs``), and one block's statistics (``predict_statistics``), as
the guard's fits read them."""

from __future__ import annotations

import numpy as np
import torch

from mri_tumor.data.preprocess import PreprocessSpec, normalize
from mri_tumor.models.network import Network, network_outputs


@torch.inference_mode()
def predict_outputs(model: Network, pixels: torch.Tensor, spec: PreprocessSpec,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of a model for uint8 pixel batches, without augmentation."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in range(0, len(pixels), batch_size):
        batch = normalize(pixels[start:start + batch_size].to(device), spec)
        outputs = network_outputs(model, batch.contiguous(memory_format=torch.channels_last))
        logits.append(outputs.logits.float().cpu())
        features.append(outputs.features.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


@torch.inference_mode()
def predict_statistics(model: Network, pixels: torch.Tensor, spec: PreprocessSpec, block: int,
                       batch_size: int = 64) -> np.ndarray:
    """Block ``block``'s per-channel mean and std for uint8 pixel batches (N, 2 x channels)."""
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(pixels), batch_size):
        batch = normalize(pixels[start:start + batch_size].to(device), spec)
        _, statistics = model.forward_features_with_statistics(batch.float(), block)
        parts.append(statistics.float().cpu().numpy())
    return np.concatenate(parts)
