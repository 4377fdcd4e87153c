"""Every figure the package draws: the training curves (``train`` writes ``curves.png``; the
evaluation report redraws them from ``history.json``), and the evaluation report's confusion
matrices, ROC curves, reliability diagram and worst mistakes.

Matplotlib and ``metrics`` only: every stage may draw. ``metadata``: PNG text chunks
(the report marks its own files with them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor import metrics

ZOOM_FPR = 0.2

CURVES = (("train_loss_epoch", "training", 0), ("val_loss", "validation", 0),
          ("train_acc", "training", 1), ("val_acc", "validation", 1))


def plot_history(history: Sequence[Mapping[str, Any]], path: Path,
                 metadata: dict[str, str] | None = None, dpi: int = 110) -> None:
    """Write the curves of ``history`` (rows as in ``history.json``: 0-based ``epoch`` plus
    metrics) as a PNG; a metric missing from a row leaves a gap. ``metadata``: PNG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(history)]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, ax in CURVES:
        values = [row.get(key) for row in history]
        if any(isinstance(v, int | float) for v in values):
            axes[ax].plot(epochs, [v if isinstance(v, int | float) else np.nan for v in values],
                          marker="o", label=label)
    axes[0].set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    axes[1].set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    try:
        figure.savefig(path, dpi=dpi, metadata=metadata, bbox_inches="tight")
    finally:
        plt.close(figure)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _display(names: Sequence[str], display: Mapping[str, str] | None) -> list[str]:
    """Class names as the model card shows them to people."""
    return [(display or {}).get(name, name) for name in names]


def _save(figure: Any, path: Path, metadata: Mapping[str, str] | None, dpi: int = 110) -> None:
    figure.savefig(path, dpi=dpi, metadata=dict(metadata or {}), bbox_inches="tight")
    _pyplot().close(figure)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path,
                          title: str, display: Mapping[str, str] | None = None,
                          metadata: Mapping[str, str] | None = None) -> None:
    """Heat map of counts; the colour is the share of the true class (row), so that
    classes of different sizes read alike."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    labels = _display(class_names, display)
    figure, ax = plt.subplots(figsize=(6.2, 5.2))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, f"{count}\n{shares[row, col]:.1%}", ha="center", va="center",
                fontsize=10, color="white" if shares[row, col] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    _save(figure, path, metadata)


def plot_roc_curves(probabilities: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], path: Path,
                    display: Mapping[str, str] | None = None,
                    metadata: Mapping[str, str] | None = None) -> None:
    """One-vs-rest ROC curve per class, with a zoom on the top-left corner beside it."""
    plt = _pyplot()
    figure, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4.8))
    for c, name in enumerate(_display(class_names, display)):
        positives = labels == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr = metrics.roc_curve(probabilities[:, c], positives)
        auc = metrics.binary_roc_auc(probabilities[:, c], positives)
        for ax in (full, zoom):
            ax.plot(fpr, tpr, drawstyle="default", linewidth=1.8, label=f"{name} (AUC {auc:.4f})")
    for ax in (full, zoom):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate")
        ax.grid(alpha=0.3)
    full.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC curves (one class against the rest)")
    zoom.set(xlim=(0, ZOOM_FPR), ylim=(_zoom_floor(probabilities, labels), 1.005),
             title=f"Zoom: false-positive rate up to {ZOOM_FPR:.0%}")
    full.legend(loc="lower right")
    _save(figure, path, metadata)


def _zoom_floor(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Lower y limit of the ROC zoom: just below the lowest true-positive rate reached at
    ``ZOOM_FPR``, so a good model's curves fill the panel and a poor one's still show."""
    lowest = 1.0
    for c in range(probabilities.shape[1]):
        positives = labels == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr = metrics.roc_curve(probabilities[:, c], positives)
        lowest = min(lowest, float(tpr[np.searchsorted(fpr, ZOOM_FPR, side="right") - 1]))
    return float(np.clip(np.floor(lowest * 20) / 20 - 0.05, 0.0, 0.95))


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray,
                     temperature: float, path: Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Reliability diagrams before (T = 1) and after temperature scaling, with counts."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True,
                                gridspec_kw={"height_ratios": [3, 1]})
    for col, (probabilities, title) in enumerate(
            ((before, "Before calibration (T = 1)"),
             (after, f"After temperature scaling (T = {temperature:.3f})"))):
        bins = metrics.reliability_bins(probabilities, labels)
        ece = metrics.expected_calibration_error(probabilities, labels)
        edges = bins["edges"]
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        filled = bins["count"] > 0
        top, bottom = axes[0, col], axes[1, col]
        top.bar(centres[filled], bins["accuracy"][filled], width=width * 0.95,
                edgecolor="black", color="#4c72b0", label="accuracy in bin")
        top.bar(centres[filled], (bins["confidence"] - bins["accuracy"])[filled],
                bottom=bins["accuracy"][filled], width=width * 0.95, color="#dd8452",
                alpha=0.45, hatch="//", label="gap to confidence")
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {ece:.4f}")
        top.legend(loc="upper left", fontsize=8)
        top.grid(alpha=0.3)
        bottom.bar(centres, bins["count"], width=width * 0.95, color="grey")
        bottom.set(xlabel="confidence of the predicted class", ylabel="images", yscale="symlog")
    _save(figure, path, metadata)


def plot_mistakes(mistakes: Sequence[Any], thumbnails: Sequence[np.ndarray | None], path: Path,
                  display: Mapping[str, str] | None = None,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Thumbnails of the worst mistakes with true label, prediction and confidence
    (``thumbnails[i]``: the grey pixels of ``mistakes[i]``, or None where it is unreadable)."""
    plt = _pyplot()
    columns = 4
    rows = max(1, -(-len(mistakes) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.5 * rows),
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, mistake, thumbnail in zip(axes.flat, mistakes, thumbnails, strict=False):
        if thumbnail is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        else:
            ax.imshow(thumbnail, cmap="gray", vmin=0, vmax=255)
        true_name, predicted_name = _display([mistake.true_label, mistake.predicted_label],
                                             display)
        ax.set_title(f"true: {true_name}\npredicted: {predicted_name} "
                     f"({mistake.confidence:.0%})\n{_shorten(mistake.relative_path, 34)}",
                     fontsize=9)
    figure.suptitle("Most confident mistakes", fontsize=12)
    _save(figure, path, metadata, dpi=80)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
