"""Temperature scaling (Guo et al., 2017): one scalar T so that softmax(logits / T) is
calibrated. Fitted on the validation split at the end of training and stored in the card."""

from __future__ import annotations

import numpy as np

from mri_tumor.card import LowConfidence


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    groups: np.ndarray | None = None) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    With ``groups`` (the source of each image) every source weighs the same whatever its size
    (``group_weights``): a pooled fit would calibrate the largest source and leave a smaller
    one over- or under-confident.
    """
    import torch  # not at module level: the ONNX backend imports softmax without torch

    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    weights = torch.as_tensor(group_weights(len(labels), groups), dtype=torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t,
                                                   reduction="none")
        loss = (losses * weights).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


# A source with fewer held-out images than this says too little to weigh as much as the others
# (or, in ``ood.source_balanced_quantile``, to set a cut of its own: the 99.5th percentile of
# fewer than 100 scores is the highest one or next to it).
MIN_SOURCE_IMAGES = 100


def group_weights(n: int, groups: np.ndarray | None = None,
                  min_count: int = MIN_SOURCE_IMAGES) -> np.ndarray:
    """Per-item weights summing to 1 in which each group (source) of at least ``min_count``
    items weighs the same, and a smaller one in proportion to its size."""
    if groups is None:
        return np.full(n, 1.0 / n)
    _, index, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    weights = 1.0 / np.maximum(counts[index], min_count)
    return weights / weights.sum()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


# An answer is flagged "unsure" when, on the validation images, answers at most that
# confident were right less often than this.
UNSURE_ACCURACY = 0.8
UNSURE_MIN_COUNT = 20  # fewer validation answers than this below a level say too little
UNSURE_GRID = np.round(np.arange(0.50, 1.0, 0.01), 2)


def fit_low_confidence(confidence: np.ndarray, correct: np.ndarray,
                       target: float = UNSURE_ACCURACY) -> LowConfidence:
    """The confidence level below which calibrated validation answers were right less than
    ``target`` of the time: the highest level on a 1% grid where that holds for at least
    ``UNSURE_MIN_COUNT`` answers (0.5 when no level does: too few mistakes to tell).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    threshold = float(UNSURE_GRID[0])
    for level in UNSURE_GRID:
        below = confidence < level
        if below.sum() >= UNSURE_MIN_COUNT and correct[below].mean() < target:
            threshold = float(level)
    below = confidence < threshold
    return LowConfidence(threshold=threshold,
                         accuracy_below=float(correct[below].mean()) if below.any() else None,
                         n_below=int(below.sum()), target=target)
