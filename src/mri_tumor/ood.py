"""Out-of-distribution guard: is this input a brain MRI slice like those the model knows?

Method: Mahalanobis distance (Lee et al., 2018) on the network's pooled features. Training
images give one mean per class and a shared, shrunk covariance; an input's score is its
squared distance to the nearest class mean. Photos, documents, CT, X-rays, blank and noise
images land far from every class. The threshold is a high quantile of the scores of held-out
(validation) brain MRIs, so about that fraction of real MRIs is wrongly rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Fraction of held-out brain MRI slices the guard may reject; the threshold is set there.
DEFAULT_REJECT_RATE = 0.005
SHRINKAGE = 0.1


@dataclass
class OODGuard:
    class_means: np.ndarray  # (C, D)
    whitening: np.ndarray  # (D, D): precision = whitening @ whitening.T
    threshold: float

    def __post_init__(self) -> None:
        # Computed in torch, on the same thread pool as the network: numpy's BLAS threads
        # and torch's spinning against each other cost 20 ms a call on 2 cores.
        self._whitening = torch.from_numpy(np.ascontiguousarray(self.whitening, np.float32))
        self._projected_means = torch.from_numpy(
            np.ascontiguousarray(self.class_means, np.float32)) @ self._whitening

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each feature row to its nearest class mean,
        divided by the feature dimension."""
        with torch.inference_mode():
            rows = torch.from_numpy(np.ascontiguousarray(features, np.float32))
            projected = rows @ self._whitening
            distances = torch.cdist(projected, self._projected_means,
                                    compute_mode="donot_use_mm_for_euclid_dist") ** 2
            return (distances.min(dim=1).values / projected.shape[1]).numpy().astype(np.float64)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"ood_class_means": torch.from_numpy(self.class_means.astype(np.float32)),
                "ood_whitening": torch.from_numpy(self.whitening.astype(np.float32))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor],
                     threshold: float | None) -> OODGuard | None:
        if threshold is None or "ood_whitening" not in tensors:
            return None
        return cls(tensors["ood_class_means"].float().numpy(),
                   tensors["ood_whitening"].float().numpy(), float(threshold))


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
