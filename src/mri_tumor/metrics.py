"""Classification metrics on plain numpy arrays (labels are class indices)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Equal-width confidence bins of the expected calibration error, everywhere it is given.
ECE_BINS = 15

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive),
                          where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive),
                       where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``y_true``."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    scores = per_class_scores(matrix)
    present = scores["support"] > 0
    return float(scores["f1"][present].mean()) if present.any() else 0.0


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i + 1]].
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


# -- Additions for the evaluation report (``mri-tumor evaluate``) -------------------------


def classification_report(y_true: np.ndarray, y_pred: np.ndarray,
                          num_classes: int) -> dict[str, dict[str, Any]]:
    """Per-class precision, recall, F1 and support plus macro and weighted averages.

    Like scikit-learn's classification report, except that the macro average runs over the
    classes present in ``y_true`` (as ``macro_f1`` does), so an absent class does not pull
    it towards zero. The weighted average weighs each class by its support.
    """
    scores = per_class_scores(confusion_matrix(y_true, y_pred, num_classes))
    support = scores["support"].astype(float)
    present = support > 0
    averages: dict[str, dict[str, Any]] = {"per_class": dict(scores)}
    for name in ("macro", "weighted"):
        averages[name] = {"support": float(support.sum())}
        for key in ("precision", "recall", "f1"):
            if not present.any():
                averages[name][key] = 0.0
            elif name == "macro":
                averages[name][key] = float(scores[key][present].mean())
            else:
                averages[name][key] = float((scores[key] * support).sum() / support.sum())
    return averages


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    run_starts = np.concatenate(([0], np.flatnonzero(np.diff(ordered)) + 1))
    run_ends = np.concatenate((run_starts[1:], [len(values)]))
    run_ranks = (run_starts + 1 + run_ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, run_ends - run_starts)
    return ranks


def binary_roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); a tie counts one half.

    NaN when there are no positives or no negatives (the area is undefined).
    """
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(probabilities: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (NaN for a class that is absent or alone)."""
    y_true = np.asarray(y_true)
    return np.array([binary_roc_auc(probabilities[:, c], y_true == c)
                     for c in range(probabilities.shape[1])])


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0).

    Tied scores move the curve diagonally, so its trapezoid area equals ``binary_roc_auc``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], positives[order]
    run_ends = np.concatenate((np.flatnonzero(np.diff(ordered)), [len(ordered) - 1]))
    true_positives = np.cumsum(hits)[run_ends]
    false_positives = run_ends + 1 - true_positives
    n_pos, n_neg = max(int(positives.sum()), 1), max(int((~positives).sum()), 1)
    return (np.concatenate(([0.0], false_positives / n_neg)),
            np.concatenate(([0.0], true_positives / n_pos)))


def reliability_bins(probabilities: np.ndarray, y_true: np.ndarray,
                     bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence and accuracy of the top class.

    Binned exactly as ``expected_calibration_error`` (bin i holds (edges[i], edges[i+1]]);
    empty bins have NaN confidence and accuracy.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy_per_bin = np.bincount(which, weights=correct.astype(float),
                                       minlength=bins) / counts
    return {"edges": edges, "count": counts, "confidence": mean_confidence,
            "accuracy": accuracy_per_bin}
