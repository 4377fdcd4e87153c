"""Out-of-distribution guard: is this input a brain MRI slice like those the model knows?

Method: Mahalanobis distance (Lee et al., 2018) on the network's pooled features. Training
images give one mean per class and a shared, shrunk covariance; an input's score is its
squared distance to the nearest class mean. Photos, documents, CT, X-rays, blank and noise
images land far from every class. The threshold is a high quantile of the scores of held-out
(validation) brain MRIs, so about that fraction of real MRIs is wrongly rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Fraction of held-out brain MRI slices the guard may reject; the threshold is set there.
DEFAULT_REJECT_RATE = 0.005
# Share of the covariance replaced by a scaled identity. With the shipped model, on the
# non-MRI set of benchmarks/ood_eval.py at the same MRI rejection rate: 0.01 rejects 98.3%,
# 0.1 96.4%, 0.3 95.4% (chosen on that set, so its figure is optimistic).
SHRINKAGE = 0.01


@dataclass
class OODGuard:
    class_means: np.ndarray  # (C, D)
    whitening: np.ndarray  # (D, D): precision = whitening @ whitening.T
    threshold: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each feature row to its nearest class mean,
        divided by the feature dimension (see ``mahalanobis_module``)."""
        import torch

        # In torch, on the same thread pool as the network: numpy's BLAS threads and
        # torch's spinning against each other cost 20 ms a call on 2 cores.
        with torch.inference_mode():
            return self.module()(torch.from_numpy(np.ascontiguousarray(features, np.float32))
                                 ).numpy().astype(np.float64)

    def module(self) -> Any:
        """The score as a ``torch.nn.Module`` (the torch backend runs it, ONNX exports it)."""
        if getattr(self, "_module", None) is None:
            self._module = mahalanobis_module(self.class_means, self.whitening)
        return self._module

    def to_tensors(self) -> dict[str, Any]:
        import torch

        return {"ood_class_means": torch.from_numpy(self.class_means.astype(np.float32)),
                "ood_whitening": torch.from_numpy(self.whitening.astype(np.float32))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], threshold: float | None) -> OODGuard | None:
        """From the ``extra.`` tensors stored with the weights (torch tensors or numpy)."""
        if threshold is None or "ood_whitening" not in tensors:
            return None
        return cls(_float32(tensors["ood_class_means"]), _float32(tensors["ood_whitening"]),
                   float(threshold))


def _float32(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "numpy"):
        tensor = tensor.float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def mahalanobis_module(class_means: np.ndarray, whitening: np.ndarray) -> Any:
    """``nn.Module``: pooled features (B, D) -> guard score (B,). Built by a function so that
    importing this module does not import torch (the ONNX backend runs without it)."""
    import torch
    from torch import nn

    class _MahalanobisScore(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = torch.from_numpy(np.ascontiguousarray(whitening, np.float32))
            means = torch.from_numpy(np.ascontiguousarray(class_means, np.float32))
            self.register_buffer("projected_means", means @ w)
            # Shipped guards are stored in fp16: keep them so (an exact round trip) to halve
            # the 1280 x 1280 matrix in exported ONNX files.
            if torch.equal(w.half().float(), w):
                w = w.half()
            self.register_buffer("whitening", w)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            projected = features @ self.whitening.float()
            gaps = projected.unsqueeze(1) - self.projected_means.unsqueeze(0)
            return (gaps * gaps).sum(dim=2).min(dim=1).values / projected.shape[1]

    return _MahalanobisScore().eval()


def fit_guard(train_features: np.ndarray, train_labels: np.ndarray, heldout_features: np.ndarray,
              num_classes: int, reject_rate: float = DEFAULT_REJECT_RATE) -> OODGuard:
    """Fit class means and covariance on training features; set the threshold on held-out ones."""
    x = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])
    centered = x - means[labels]
    covariance = centered.T @ centered / len(x)
    # Shrink towards a scaled identity: 1280 dimensions from a few thousand images.
    target = np.trace(covariance) / covariance.shape[0]
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * target * np.eye(covariance.shape[0])
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whitening = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    guard = OODGuard(means.astype(np.float32), whitening.astype(np.float32), threshold=np.inf)
    guard.threshold = float(np.quantile(guard.score(heldout_features), 1.0 - reject_rate))
    return guard
