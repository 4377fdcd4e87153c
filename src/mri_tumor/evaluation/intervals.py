"""How sure the numbers of an evaluation are: percentile bootstrap intervals of accuracy,
macro-F1 and ECE over the images, and the groups too small to say much.

Every resample draws as many images as the set has, with replacement, from a generator with
a fixed seed, so the same predictions always give the same intervals; the three metrics are
computed on the same resamples. Like ``mri-tumor compare`` (``comparison``), the bootstrap
treats images as independent: slices of one patient are not, so the true uncertainty is
somewhat larger.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mri_tumor.metrics import ECE_BINS

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
METHOD = "percentile bootstrap over images"
SMALL_GROUP = 100  # a group with fewer images than this gets a warning
INTERVAL_METRICS = ("accuracy", "macro_f1", "ece")
_CHUNK = 100  # resamples drawn and scored at a time (bounds the memory of large sets)


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """(chunk, n) arrays of image indices, ``resamples`` rows in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))


def resampled_metrics(probabilities: np.ndarray, labels: np.ndarray,
                      indices: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and ECE (``metrics``' definitions: macro-F1 over the classes present,
    15 equal-width bins of the top-class confidence) of each row of ``indices`` (resamples x
    images), vectorised over the rows."""
    rows, n = indices.shape
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == labels
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, ECE_BINS - 1)
    offsets = np.arange(rows)[:, None]

    cells = (offsets * classes + labels[indices]) * classes + predicted[indices]
    matrix = np.bincount(cells.ravel(), minlength=rows * classes * classes).reshape(
        rows, classes, classes).astype(float)
    true_positive = np.diagonal(matrix, axis1=1, axis2=2)
    predicted_count, support = matrix.sum(axis=1), matrix.sum(axis=2)
    precision = np.divide(true_positive, predicted_count, out=np.zeros_like(true_positive),
                          where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive),
                       where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    present = support > 0
    macro_f1 = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    bins = (offsets * ECE_BINS + which[indices]).ravel()
    right = np.bincount(bins, weights=correct[indices].ravel().astype(float),
                        minlength=rows * ECE_BINS)
    sure = np.bincount(bins, weights=confidence[indices].ravel(), minlength=rows * ECE_BINS)
    ece = np.abs(right - sure).reshape(rows, ECE_BINS).sum(axis=1) / n
    return {"accuracy": correct[indices].mean(axis=1), "macro_f1": macro_f1, "ece": ece}


def bootstrap_intervals(probabilities: np.ndarray, labels: np.ndarray,
                        resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = SEED) -> dict[str, list[float] | None]:
    """``{accuracy, macro_f1, ece}`` -> ``[low, high]``, the percentile bootstrap interval
    (None for each with fewer than two images)."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        return dict.fromkeys(INTERVAL_METRICS)
    values: dict[str, list[np.ndarray]] = {name: [] for name in INTERVAL_METRICS}
    for indices in _resamples(len(labels), resamples, seed):
        for name, scores in resampled_metrics(probabilities, labels, indices).items():
            values[name].append(scores)
    tail = 100 * (1 - confidence) / 2
    return {name: [float(v) for v in np.percentile(np.concatenate(chunks), [tail, 100 - tail])]
            for name, chunks in values.items()}


def interval_summary(probabilities: np.ndarray, labels: np.ndarray,
                     groups: dict[str, np.ndarray], leak_free: np.ndarray | None = None,
                     resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = SEED) -> dict[str, Any]:
    """The ``intervals`` of an evaluation: how they were made, then those of all images, of
    the leak-free ones (``leak_free``: a mask; None without training folders) and of each
    group (name -> mask, as in ``by_group``)."""
    def of(mask: np.ndarray) -> dict[str, list[float] | None]:
        return bootstrap_intervals(probabilities[mask], labels[mask], resamples, confidence,
                                   seed)

    everything = np.ones(len(labels), dtype=bool)
    return {"method": METHOD, "confidence": confidence, "resamples": resamples, "seed": seed,
            "all": of(everything),
            "leak_free": None if leak_free is None else of(leak_free),
            "by_group": {name: of(mask) for name, mask in groups.items()}}


def cell_name(cell: dict[str, Any]) -> str:
    """A source x sequence x class cell of ``by_cell`` as one name: ``cell:<source> x
    <sequence> x <class>`` (no sequence where the layout does not tell it)."""
    return "cell:" + " x ".join(part for part in (cell["source"], cell["sequence"],
                                                  cell["class"]) if part)


def small_groups(by_group: dict[str, dict[str, Any]], by_cell: Sequence[dict[str, Any]],
                 limit: int = SMALL_GROUP) -> list[dict[str, Any]]:
    """``{group, n}`` for each group (``by_group``) and cell (``by_cell``) with fewer than
    ``limit`` images, in that order."""
    named = [(name, values["n"]) for name, values in by_group.items()]
    named += [(cell_name(cell), cell["n"]) for cell in by_cell]
    return [{"group": name, "n": int(n)} for name, n in named if n < limit]


def small_group_warning(small: Sequence[dict[str, Any]], limit: int = SMALL_GROUP,
                        shown: int = 4) -> str | None:
    """One line that names the groups under ``limit`` images (the first ``shown`` of them);
    None when there are none."""
    if not small:
        return None
    named = ", ".join(f"{g['group']} ({g['n']})" for g in small[:shown])
    more = f" and {len(small) - shown} more" if len(small) > shown else ""
    return (f"Warning: {len(small)} group(s) have fewer than {limit} images, so their "
            f"numbers are uncertain: {named}{more}.")


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES,
                  confidence: float = CONFIDENCE, seed: int = SEED) -> list[float] | None:
    """Percentile bootstrap interval ``[low, high]`` of the mean of per-case values (per
    patient, say); None for fewer than two."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    means = np.concatenate([data[rows].mean(axis=1)
                            for rows in _resamples(len(data), resamples, seed)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]
