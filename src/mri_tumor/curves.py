"""The training-curves figure: loss and accuracy per epoch, training and validation.

``train`` draws it into a run folder (``curves.png``) and the evaluation report draws it from a
run's ``history.json``. It imports nothing of the package, so both can use it without an
import circle (``report`` reaches ``evaluation``, which reaches ``training``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
