"""Scoring: probabilities from the predictor's own forward pass on exactly the pixels it would
see (``read_image`` then ``to_model_pixels``), and the metrics computed from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor import metrics
from mri_tumor.evaluation.images import (
    DECODE_WORKERS,
    PREFETCH_BATCHES,
    DecodedImage,
    ImageSet,
    decode_file,
    ordered_parallel_map,
    progress_bar,
)
from mri_tumor.evaluation.leakage import stack_hashes
from mri_tumor.evaluation.shortcut import intensity_features
from mri_tumor.inference import Predictor
from mri_tumor.models.calibration import softmax


# -- scoring -------------------------------------------------------------------------------
@dataclass
class ScoredImages:
    """The evaluated images that could be read, with the model's outputs."""

    roots: list[Path]
    paths: list[Path]
    relative_paths: list[str]
    labels: np.ndarray  # class index per image
    logits: np.ndarray  # (N, C), averaged over the image and its mirror with TTA
    ood_scores: np.ndarray | None  # None when the model has no out-of-distribution guard
    sequence_logits: np.ndarray | None = None  # (N, S) for a model with a sequence head
    sources: list[str] = field(default_factory=list)  # source name per image
    sequences: list[str] = field(default_factory=list)  # MR sequence per image ("" unknown)
    hashes: np.ndarray | None = None  # (N, HASH_WORDS) perceptual hashes, with --train-dir
    mirrored_hashes: np.ndarray | None = None
    digests: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    features: np.ndarray | None = None  # (N, F) brightness statistics, with --train-dir
    pixels: np.ndarray | None = None  # (N, H, W) uint8 model pixels, kept for --stress
    selection: str | None = None  # which images of the folders, when not all of them

    @property
    def location(self) -> str:
        """The folder(s), for headings."""
        return ", ".join(str(root) for root in self.roots)


def score_images(predictor: Predictor, image_set: ImageSet, batch_size: int = 64,
                 tta: bool = False, with_hashes: bool = False, with_features: bool = False,
                 keep_pixels: bool = False, progress: bool = True) -> ScoredImages:
    """Logits (and OOD scores) for every readable image of ``image_set``; bad files are
    skipped. Optionally also hashes (leakage), brightness features (shortcut audit) and the
    model pixels themselves (stress test)."""
    class_index = {name: i for i, name in enumerate(predictor.class_names)}
    unknown = sorted({item.label for item in image_set.images} - set(class_index))
    if unknown and len(unknown) == len({item.label for item in image_set.images}):
        raise ValueError(f"{image_set.location}: class(es) {', '.join(unknown)} are not among "
                         f"the model's classes ({', '.join(predictor.class_names)})")
    # Images of classes the model does not have are passed over, each folder named once.
    skipped = list(image_set.skipped) + [
        (f"{label} ({sum(item.label == label for item in image_set.images)} images)",
         f"not one of the model's classes ({', '.join(predictor.class_names)})")
        for label in unknown]
    kept_images = [i for i, item in enumerate(image_set.images) if item.label in class_index]
    image_set = dataclasses.replace(
        image_set, images=[image_set.images[i] for i in kept_images],
        names=[image_set.names[i] for i in kept_images])
    images = image_set.images
    kept: list[int] = []
    logits: list[np.ndarray] = []
    sequence_logits: list[np.ndarray] = []
    ood: list[np.ndarray] = []
    hashes: list[tuple[np.ndarray, np.ndarray]] = []
    digests: list[str] = []
    features: list[np.ndarray] = []
    pixels: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if not batch:
            return
        batch_logits, scores, batch_sequences = network_scores(predictor, np.stack(batch), tta)
        logits.append(batch_logits)
        if batch_sequences is not None:
            sequence_logits.append(batch_sequences)
        if predictor.ood_threshold is not None:
            ood.append(scores)
        batch.clear()

    def decode(index: int) -> DecodedImage:
        decoded = decode_file(images[index].path, predictor.spec.image_size, with_hashes)
        if with_features and decoded.pixels is not None:
            decoded.features = intensity_features(decoded.pixels[None])[0]
        return decoded

    indices = range(len(images))
    with progress_bar(len(images), "evaluating", progress) as bar:
        for index, decoded in zip(indices, ordered_parallel_map(
                decode, indices, workers=DECODE_WORKERS, window=PREFETCH_BATCHES * batch_size),
                strict=True):
            bar.update(1)
            if decoded.error is not None:
                skipped.append((image_set.names[index], decoded.error))
                continue
            assert decoded.pixels is not None
            kept.append(index)
            batch.append(decoded.pixels)
            if keep_pixels:
                pixels.append(decoded.pixels)
            if decoded.features is not None:
                features.append(decoded.features)
            if decoded.hashes is not None and decoded.digest is not None:
                hashes.append(decoded.hashes)
                digests.append(decoded.digest)
            if len(batch) == batch_size:
                flush()
        flush()
    if not kept:
        raise ValueError(f"{image_set.location}: no readable images to evaluate"
                         + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    return ScoredImages(
        roots=list(image_set.roots), paths=[images[i].path for i in kept],
        relative_paths=[image_set.names[i] for i in kept],
        labels=np.array([class_index[images[i].label] for i in kept]),
        logits=np.concatenate(logits).astype(np.float64),
        ood_scores=np.concatenate(ood) if ood else None,
        sequence_logits=(np.concatenate(sequence_logits).astype(np.float64)
                         if sequence_logits else None),
        sources=[images[i].source for i in kept], sequences=[images[i].sequence for i in kept],
        hashes=stack_hashes([h[0] for h in hashes]) if with_hashes else None,
        mirrored_hashes=stack_hashes([h[1] for h in hashes]) if with_hashes else None,
        digests=digests, skipped=skipped,
        features=np.stack(features) if with_features else None,
        pixels=np.stack(pixels) if keep_pixels else None, selection=image_set.selection)


def network_scores(predictor: Predictor, pixels: np.ndarray,
             tta: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, OOD scores and sequence logits (None without that head) of a batch; with TTA
    the logits of the mirror image are averaged in, while the OOD score stays that of the
    image as the user gave it."""
    batch = np.concatenate([pixels, pixels[:, :, ::-1]]) if tta else pixels
    outputs = predictor.network_outputs(batch)
    logits, scores = outputs["logits"], outputs["ood_score"]
    sequences = outputs.get("sequence_logits")
    if not tta:
        return logits, scores, sequences
    half = len(pixels)
    return ((logits[:half] + logits[half:]) / 2.0, scores[:half],
            None if sequences is None else (sequences[:half] + sequences[half:]) / 2.0)


# -- metrics -------------------------------------------------------------------------------
def compute_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                    temperature: float) -> dict[str, Any]:
    """Every metric of the report for one set of images, as plain JSON-ready values.

    Keys: n, accuracy, macro_f1, per_class, macro_avg, weighted_avg, confusion_matrix, auc,
    ece (after temperature scaling with ``temperature``), ece_uncalibrated (T = 1).
    Undefined values (an empty set, the AUC of an absent class) are None.
    """
    num_classes = len(class_names)
    n = len(labels)
    if n == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None,
                "per_class": {c: {"precision": None, "recall": None, "f1": None, "support": 0}
                              for c in class_names},
                "macro_avg": None, "weighted_avg": None,
                "confusion_matrix": [[0] * num_classes for _ in class_names],
                "auc": dict.fromkeys(class_names), "ece": None, "ece_uncalibrated": None}
    calibrated = softmax(logits, temperature)
    uncalibrated = softmax(logits, 1.0)
    predicted = calibrated.argmax(axis=1)
    report = metrics.classification_report(labels, predicted, num_classes)
    per_class = report["per_class"]
    auc = metrics.roc_auc_ovr(calibrated, labels)
    return {
        "n": n,
        "accuracy": metrics.accuracy(labels, predicted),
        "macro_f1": metrics.macro_f1(labels, predicted, num_classes),
        "per_class": {name: {"precision": float(per_class["precision"][c]),
                             "recall": float(per_class["recall"][c]),
                             "f1": float(per_class["f1"][c]),
                             "support": int(per_class["support"][c])}
                      for c, name in enumerate(class_names)},
        "macro_avg": {k: float(v) for k, v in report["macro"].items()},
        "weighted_avg": {k: float(v) for k, v in report["weighted"].items()},
        "confusion_matrix": metrics.confusion_matrix(labels, predicted, num_classes).tolist(),
        "auc": {name: None if np.isnan(value) else float(value)
                for name, value in zip(class_names, auc, strict=True)},
        "ece": metrics.expected_calibration_error(calibrated, labels),
        "ece_uncalibrated": metrics.expected_calibration_error(uncalibrated, labels),
    }
