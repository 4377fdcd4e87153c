"""The shortcut audit: a classifier that sees nothing but brightness statistics, fitted on the
training images and scored on the evaluated ones. When it does well, the labels can be read off
a source's brightness."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mri_tumor import metrics

if TYPE_CHECKING:
    from mri_tumor.evaluation.leakage import HashedFolder
    from mri_tumor.evaluation.scoring import ScoredImages

# Shortcut audit: brightness statistics of the model-size grey pixels, nothing spatial.
HISTOGRAM_BINS = 32


FEATURE_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


SHORTCUT_L2 = 1e-3


# -- shortcut audit: how far brightness alone gets ---------------------------------------------
def intensity_features(pixels: np.ndarray) -> np.ndarray:
    """Brightness statistics of uint8 (N, H, W) pixels, with no spatial information: a
    32-bin normalised histogram, the mean, the standard deviation and the 1/5/25/50/75/95/99th
    percentiles (in grey levels / 255) -> float64 (N, 41)."""
    flat = np.asarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    count, size = flat.shape
    bins = (flat.astype(np.int64) * HISTOGRAM_BINS) // 256
    bins += HISTOGRAM_BINS * np.arange(count)[:, None]
    counts = np.bincount(bins.ravel(), minlength=count * HISTOGRAM_BINS)
    histogram = counts.reshape(count, HISTOGRAM_BINS) / size
    grey = flat / 255.0
    percentiles = np.percentile(grey, FEATURE_PERCENTILES, axis=1).T
    return np.hstack([histogram, grey.mean(axis=1, keepdims=True),
                      grey.std(axis=1, keepdims=True), percentiles])


@dataclass
class ShortcutClassifier:
    """Multinomial logistic regression on standardised brightness features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (F, C)
    bias: np.ndarray  # (C,)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class index per row of ``features``."""
        standardised = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return (standardised @ self.weights + self.bias).argmax(axis=1)


def fit_shortcut_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int,
                            l2: float = SHORTCUT_L2) -> ShortcutClassifier:
    """Fit the brightness-only classifier: softmax regression on standardised features, each
    class weighing the same in the loss, a small L2 penalty, L-BFGS (scipy). Deterministic."""
    from scipy.optimize import minimize

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) == 0:
        raise ValueError("no training images to fit the shortcut classifier on")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature: left at 0 after centring
    z = (x - mean) / scale
    dims = z.shape[1]
    onehot = np.eye(num_classes)[y]
    counts = np.bincount(y, minlength=num_classes)
    weight = 1.0 / (np.count_nonzero(counts) * counts[y])  # per image; each class sums to 1/K

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:dims * num_classes].reshape(dims, num_classes), theta[dims * num_classes:]
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        value = -(weight * (onehot * log_p).sum(axis=1)).sum() + 0.5 * l2 * (w ** 2).sum()
        grad = (np.exp(log_p) - onehot) * weight[:, None]
        return float(value), np.concatenate([(z.T @ grad + l2 * w).ravel(), grad.sum(axis=0)])

    result = minimize(loss, np.zeros(dims * num_classes + num_classes), jac=True,
                      method="L-BFGS-B", options={"maxiter": 1000})
    theta = result.x
    return ShortcutClassifier(mean, scale, theta[:dims * num_classes].reshape(dims, num_classes),
                              theta[dims * num_classes:])


def shortcut_baseline(training: HashedFolder, scored: ScoredImages,
                      class_names: Sequence[str]) -> float | None:
    """Accuracy on the evaluated images of the brightness-only classifier fitted on the
    training images (None without features, or with no training image of a model class)."""
    if training.features is None or scored.features is None:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    known = np.array([label in index for label in training.labels], dtype=bool)
    if not known.any():
        return None
    labels = np.array([index[label] for label in training.labels if label in index])
    classifier = fit_shortcut_classifier(training.features[known], labels, len(class_names))
    return metrics.accuracy(scored.labels, classifier.predict(scored.features))
