"""``evaluate``: score a labelled set and gather every check into one ``Evaluation`` (the
``mri-tumor evaluate`` command wraps this and ``report``). Research tool, not a diagnosis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor import metrics
from mri_tumor.data.folders import (
    scan_folders,
)
from mri_tumor.evaluation.groups import (
    cell_metrics,
    group_masks,
    group_metrics,
    sequence_metrics,
)
from mri_tumor.evaluation.images import ImageSet, as_paths, collect_images
from mri_tumor.evaluation.intervals import interval_summary, small_group_warning, small_groups
from mri_tumor.evaluation.leakage import (
    HashedFolder,
    TrainingMatch,
    find_training_duplicates,
    hash_training_folders,
)
from mri_tumor.evaluation.scoring import ScoredImages, compute_metrics, score_images
from mri_tumor.evaluation.shift import (
    ShiftCheck,
    shift_checks,
    shift_message,
    validation_rejected_share,
)
from mri_tumor.evaluation.shortcut import shortcut_baseline
from mri_tumor.evaluation.stress import STRESS_KEYS, stress_test
from mri_tumor.inference import Predictor
from mri_tumor.models.calibration import softmax

JSON_KEYS = ("n", "classes", "accuracy", "macro_f1", "per_class", "confusion_matrix", "auc",
             "ece", "ece_uncalibrated", "leak_free", "by_group", "by_cell", "stress",
             "shortcut_baseline_accuracy", "shift_warning", "sequence_accuracy", "sequence",
             "skipped", "intervals", "small_groups")


# -- the whole evaluation ------------------------------------------------------------------
@dataclass
class Mistake:
    """A misclassified image, for the gallery."""

    path: Path
    relative_path: str
    true_label: str
    predicted_label: str
    confidence: float


@dataclass
class Evaluation:
    """Everything the summary, the JSON and the report are made from."""

    predictor: Predictor
    scored: ScoredImages
    metrics: dict[str, Any]
    tta: bool
    seconds: float
    leak_free: dict[str, Any] | None = None  # metrics on images with no training duplicate
    duplicates: list[list[TrainingMatch]] | None = None
    training: HashedFolder | None = None
    by_group: dict[str, dict[str, Any]] = field(default_factory=dict)  # see group_metrics
    by_cell: list[dict[str, Any]] = field(default_factory=list)  # see cell_metrics
    stress: dict[str, Any] | None = None  # with --stress: see stress_test and evaluate
    shortcut_accuracy: float | None = None  # brightness-only classifier, with --train-dir
    shift: list[ShiftCheck] = field(default_factory=list)
    shift_warning: str | None = None
    sequence: dict[str, Any] | None = None  # a model with a sequence head: see sequence_metrics
    intervals: dict[str, Any] | None = None  # bootstrap intervals: see interval_summary
    small_groups: list[dict[str, Any]] = field(default_factory=list)  # see small_groups

    @property
    def small_group_warning(self) -> str | None:
        """One line naming the groups and cells under 100 images (None: there are none)."""
        return small_group_warning(self.small_groups)

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in output order."""
        return self.predictor.class_names

    @property
    def display_names(self) -> dict[str, str]:
        """Each class as the model card shows it to people."""
        return {name: self.predictor.card.display_name(name) for name in self.class_names}

    @property
    def temperature(self) -> float:
        """The calibration temperature from the model card."""
        return float(self.predictor.card.temperature)

    def probabilities(self, calibrated: bool = True) -> np.ndarray:
        """Softmax probabilities with the card's temperature (or T = 1)."""
        return softmax(self.scored.logits, self.temperature if calibrated else 1.0)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class index per image."""
        return self.scored.logits.argmax(axis=1)

    @property
    def rejected(self) -> int | None:
        """How many images the OOD guard would reject (None: the model has no guard)."""
        threshold = self.predictor.ood_threshold
        if threshold is None or self.scored.ood_scores is None:
            return None
        return int((self.scored.ood_scores > threshold).sum())

    @property
    def leaked(self) -> np.ndarray | None:
        """Per image: True when it has a duplicate in the training folder."""
        if self.duplicates is None:
            return None
        return np.array([bool(found) for found in self.duplicates], dtype=bool)

    def worst_mistakes(self, limit: int = 12) -> list[Mistake]:
        """Misclassified images, the most confidently wrong first."""
        probabilities = self.probabilities()
        predicted = self.predicted
        wrong = np.flatnonzero(predicted != self.scored.labels)
        confidence = probabilities[wrong, predicted[wrong]]
        order = wrong[np.argsort(-confidence, kind="stable")][:limit]
        return [Mistake(self.scored.paths[i], self.scored.relative_paths[i],
                        self.class_names[self.scored.labels[i]], self.class_names[predicted[i]],
                        float(probabilities[i, predicted[i]])) for i in order]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: exactly the keys of ``JSON_KEYS`` (null where a part was not
        asked for: ``leak_free`` and ``shortcut_baseline_accuracy`` need training folders,
        ``stress`` needs the stress test). New keys go at the end; none is ever renamed."""
        m = self.metrics
        leak_free = None
        if self.leak_free is not None:
            leak_free = {key: self.leak_free[key] for key in ("n", "accuracy", "macro_f1")}
        result = {
            "n": m["n"], "classes": list(self.class_names), "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "per_class": m["per_class"],
            "confusion_matrix": m["confusion_matrix"], "auc": m["auc"], "ece": m["ece"],
            "ece_uncalibrated": m["ece_uncalibrated"], "leak_free": leak_free,
            "by_group": self.by_group, "by_cell": self.by_cell, "stress": self.stress,
            "shortcut_baseline_accuracy": self.shortcut_accuracy,
            "shift_warning": self.shift_warning,
            "sequence_accuracy": self.sequence["accuracy"] if self.sequence else None,
            "sequence": self.sequence,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.scored.skipped],
            "intervals": self.intervals, "small_groups": self.small_groups,
        }
        assert tuple(result) == JSON_KEYS
        return result


def evaluate(predictor: Predictor, data: ImageSet | Path | Sequence[Path],
             train_dirs: Path | Sequence[Path] | None = None, batch_size: int = 64,
             tta: bool = False, progress: bool = True, *, stress: bool = False,
             train_only: set[tuple[str, str]] | None = None) -> Evaluation:
    """Score labelled images (an ``ImageSet`` from ``collect_images``, or folders) and compute
    all metrics: per group and cell, twice with training folders (all images, leak-free
    ones) plus the shortcut audit, the distribution-shift check, and with ``stress`` the
    stress test (on the leak-free images when training folders are given)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    image_set = (data if isinstance(data, ImageSet)
                 else collect_images(data, scheme=predictor.card.label_scheme))
    train_list = as_paths(train_dirs)
    for train_dir in train_list:
        if not train_dir.is_dir():
            raise FileNotFoundError(f"training folder {train_dir}: no such folder")
    if train_list:
        # fail on a bad training folder before the long scoring step
        scan_folders(train_list, predictor.card.label_scheme)
    started = time.perf_counter()
    scored = score_images(predictor, image_set, batch_size, tta, with_hashes=bool(train_list),
                          with_features=bool(train_list), keep_pixels=stress, progress=progress)
    seconds = time.perf_counter() - started
    names = predictor.class_names
    temperature = float(predictor.card.temperature)
    evaluation = Evaluation(predictor, scored,
                            compute_metrics(scored.logits, scored.labels, names, temperature),
                            tta, seconds)
    evaluation.by_group = group_metrics(scored, names)
    evaluation.sequence = sequence_metrics(scored, predictor.card.sequence_names,
                                           predictor.card.sequence_temperature)
    evaluation.by_cell = cell_metrics(scored, names)
    evaluation.small_groups = small_groups(evaluation.by_group, evaluation.by_cell)
    validation_share = validation_rejected_share(predictor)
    evaluation.shift = shift_checks(scored, predictor.ood_threshold, validation_share)
    evaluation.shift_warning = shift_message(evaluation.shift, predictor.ood_threshold,
                                             validation_share)
    clean = np.ones(len(scored.labels), dtype=bool)
    if train_list:
        training = hash_training_folders(train_list, predictor.spec.image_size, progress,
                                         only=train_only, scheme=predictor.card.label_scheme)
        duplicates = find_training_duplicates(scored, training)
        clean = np.array([not found for found in duplicates], dtype=bool)
        evaluation.training = training
        evaluation.duplicates = duplicates
        evaluation.leak_free = compute_metrics(scored.logits[clean], scored.labels[clean],
                                               names, temperature)
        evaluation.shortcut_accuracy = shortcut_baseline(training, scored, names)
    evaluation.intervals = interval_summary(evaluation.probabilities(), scored.labels,
                                            group_masks(scored), clean if train_list else None)
    if stress:
        assert scored.pixels is not None
        labels = scored.labels[clean]
        # Measured on the leak-free images when the leakage check ran: a memorised training
        # image would hide how the model copes with the change.
        evaluation.stress = {
            "n": int(clean.sum()), "subset": "leak_free" if train_list else "all",
            "unperturbed": (metrics.accuracy(labels, scored.logits[clean].argmax(axis=1))
                            if clean.any() else None),
            **(stress_test(predictor, scored.pixels[clean], labels, tta, batch_size,
                           progress=progress) if clean.any() else dict.fromkeys(STRESS_KEYS)),
        }
        scored.pixels = None  # not needed any more, and large
    return evaluation
