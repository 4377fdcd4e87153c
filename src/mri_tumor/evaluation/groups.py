"""Metrics per source and MR sequence (``by_group``), per sequence, and per source x sequence x
class (``by_cell``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mri_tumor import metrics
from mri_tumor.models.calibration import softmax

if TYPE_CHECKING:
    from mri_tumor.evaluation.scoring import ScoredImages


def group_masks(scored: ScoredImages) -> dict[str, np.ndarray]:
    """The images of each group, by name: ``source:<name>`` for each source when there are
    two or more, then ``sequence:<seq>`` for each MR sequence the folder layout tells (images
    of unknown sequence are in no sequence group)."""
    sources, sequences = np.array(scored.sources), np.array(scored.sequences)
    groups: dict[str, np.ndarray] = {}
    if len(set(scored.sources)) > 1:
        groups |= {f"source:{name}": sources == name for name in sorted(set(scored.sources))}
    groups |= {f"sequence:{name}": sequences == name
               for name in sorted(set(scored.sequences) - {""})}
    return groups


def group_metrics(scored: ScoredImages, class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{n, accuracy, macro_f1}`` per group of ``group_masks``."""
    labels, predicted = scored.labels, scored.logits.argmax(axis=1)
    return {name: {"n": int(mask.sum()),
                   "accuracy": metrics.accuracy(labels[mask], predicted[mask]),
                   "macro_f1": metrics.macro_f1(labels[mask], predicted[mask], len(class_names))}
            for name, mask in group_masks(scored).items()}


def sequence_metrics(scored: ScoredImages, sequence_names: Sequence[str],
                     temperature: float) -> dict[str, Any] | None:
    """How well a sequence head names the MR sequence, on the images whose folder tells it:
    ``{classes, n, accuracy, confusion_matrix, ece}`` (rows = true sequence). None when the
    model has no sequence head or no image's sequence is one it knows."""
    if scored.sequence_logits is None or not sequence_names:
        return None
    index = {name: i for i, name in enumerate(sequence_names)}
    known = np.array([sequence in index for sequence in scored.sequences])
    if not known.any():
        return None
    truth = np.array([index[s] for s in np.array(scored.sequences)[known]])
    logits = scored.sequence_logits[known]
    predicted = logits.argmax(axis=1)
    matrix = np.zeros((len(sequence_names), len(sequence_names)), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return {"classes": list(sequence_names), "n": int(known.sum()),
            "accuracy": metrics.accuracy(truth, predicted),
            "confusion_matrix": matrix.tolist(),
            "ece": metrics.expected_calibration_error(softmax(logits, temperature), truth)}


def cell_metrics(scored: ScoredImages, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``{source, sequence, class, n, accuracy}`` for every source x sequence x true class
    that has images (sequence "" where the folder layout does not tell it); the accuracy of
    a one-class cell is that class's recall there."""
    labels, predicted = scored.labels, scored.logits.argmax(axis=1)
    keys = list(zip(scored.sources, scored.sequences, labels.tolist(), strict=True))
    cells = []
    for source, sequence, label in sorted(set(keys)):
        mask = np.array([key == (source, sequence, label) for key in keys])
        cells.append({"source": source, "sequence": sequence, "class": class_names[label],
                      "n": int(mask.sum()),
                      "accuracy": metrics.accuracy(labels[mask], predicted[mask])})
    return cells
