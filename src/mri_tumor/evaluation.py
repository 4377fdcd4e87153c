"""Evaluation stage: score a labelled folder, compute metrics, check for leakage, report.

    mri-tumor evaluate DATA_DIR [--model DIR] [--train-dir DIR] [--out DIR] [--json] [--tta]

Probabilities come from ``Predictor.forward`` on exactly the pixels the predictor itself
would see (``read_image`` then ``to_model_pixels``), so the numbers describe the model as
users run it. Images are decoded in a small thread pool while the previous batch is scored.
With a training folder, every evaluation image that has an exact or near-duplicate there
(perceptual hash, mirrored copies included) is flagged and all metrics are given twice: on
all images and on the leak-free rest. Research tool, not a diagnosis.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from mri_tumor import metrics
from mri_tumor.calibration import softmax
from mri_tumor.card import DISCLAIMER
from mri_tumor.data.folders import FolderScan, scan_folder
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import ImageReadError, read_image
from mri_tumor.data.splitting import (
    HASH_WORDS,
    NEAR_DUPLICATE_BITS,
    hamming,
    image_hashes,
    near_duplicate_pairs,
)
from mri_tumor.inference import Predictor

JSON_KEYS = ("n", "classes", "accuracy", "macro_f1", "per_class", "confusion_matrix", "auc",
             "ece", "ece_uncalibrated", "leak_free", "skipped")
ECE_BINS = 15
# Two decoding threads keep the model fed on a 2-core machine: JPEG decoding and resizing
# release the GIL, and a window of a few batches bounds the memory held by decoded images.
DECODE_WORKERS = 2
PREFETCH_BATCHES = 2

Item = TypeVar("Item")
Decoded = TypeVar("Decoded")


# -- decoding ------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    """One file after decoding: model pixels and/or hashes, or the reason it failed."""

    pixels: np.ndarray | None = None
    hashes: tuple[np.ndarray, np.ndarray] | None = None
    digest: str | None = None
    error: str | None = None


def decode_file(path: Path, image_size: int | None, with_hashes: bool) -> DecodedImage:
    """Read one file the way the predictor does; never raises for a bad file."""
    try:
        image = read_image(path)
        pixels = to_model_pixels(image, image_size) if image_size else None
        if not with_hashes:
            return DecodedImage(pixels=pixels)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return DecodedImage(pixels=pixels, hashes=image_hashes(image), digest=digest)
    except ImageReadError as error:
        return DecodedImage(error=str(error).split(": ", 1)[-1])
    except (OSError, ValueError, MemoryError) as error:
        return DecodedImage(error=f"cannot read ({error})")
    except Exception as error:  # a decoder bug on one file must not end a long evaluation
        return DecodedImage(error=f"cannot decode ({type(error).__name__}: {error})")


def ordered_parallel_map(function: Callable[[Item], Decoded], items: Iterable[Item],
                         workers: int = DECODE_WORKERS, window: int = 64) -> Iterator[Decoded]:
    """``map(function, items)`` run in a thread pool, in order, at most ``window`` ahead
    (``workers`` = 0: plainly in this thread)."""
    if workers < 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    pending: deque[Future[Decoded]] = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for item in iterator:
                pending.append(pool.submit(function, item))
                break
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, description: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)


# -- scoring -------------------------------------------------------------------------------
@dataclass
class ScoredImages:
    """The images of an evaluation folder that could be read, with the model's outputs."""

    root: Path
    paths: list[Path]
    relative_paths: list[str]
    labels: np.ndarray  # class index per image
    logits: np.ndarray  # (N, C), averaged over the image and its mirror with TTA
    ood_scores: np.ndarray | None  # None when the model has no out-of-distribution guard
    hashes: np.ndarray | None = None  # (N, HASH_WORDS) perceptual hashes, with --train-dir
    mirrored_hashes: np.ndarray | None = None
    digests: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def score_folder(predictor: Predictor, scan: FolderScan, batch_size: int = 64,
                 tta: bool = False, with_hashes: bool = False,
                 progress: bool = True) -> ScoredImages:
    """Logits (and OOD scores) for every readable image of ``scan``; bad files are skipped."""
    class_index = {name: i for i, name in enumerate(predictor.class_names)}
    unknown = sorted({item.label for item in scan.images} - set(class_index))
    if unknown:
        raise ValueError(f"{scan.root}: class(es) {', '.join(unknown)} are not among the "
                         f"model's classes ({', '.join(predictor.class_names)})")
    skipped = list(scan.skipped)
    kept: list[int] = []
    logits: list[np.ndarray] = []
    ood: list[np.ndarray] = []
    hashes: list[tuple[np.ndarray, np.ndarray]] = []
    digests: list[str] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if not batch:
            return
        batch_logits, scores = _forward(predictor, np.stack(batch), tta)
        logits.append(batch_logits)
        if predictor.ood_threshold is not None:
            ood.append(scores)
        batch.clear()

    def decode(index: int) -> DecodedImage:
        return decode_file(scan.images[index].path, predictor.spec.image_size, with_hashes)

    indices = range(len(scan.images))
    with _progress(len(scan.images), "evaluating", progress) as bar:
        for index, decoded in zip(indices, ordered_parallel_map(
                decode, indices, workers=DECODE_WORKERS, window=PREFETCH_BATCHES * batch_size),
                strict=True):
            bar.update(1)
            if decoded.error is not None:
                skipped.append((scan.relative(scan.images[index].path), decoded.error))
                continue
            assert decoded.pixels is not None
            kept.append(index)
            batch.append(decoded.pixels)
            if decoded.hashes is not None and decoded.digest is not None:
                hashes.append(decoded.hashes)
                digests.append(decoded.digest)
            if len(batch) == batch_size:
                flush()
        flush()
    if not kept:
        raise ValueError(f"{scan.root}: no readable images to evaluate"
                         + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    paths = [scan.images[i].path for i in kept]
    return ScoredImages(
        root=scan.root, paths=paths, relative_paths=[scan.relative(p) for p in paths],
        labels=np.array([class_index[scan.images[i].label] for i in kept]),
        logits=np.concatenate(logits).astype(np.float64),
        ood_scores=np.concatenate(ood) if ood else None,
        hashes=_stack_hashes([h[0] for h in hashes]) if with_hashes else None,
        mirrored_hashes=_stack_hashes([h[1] for h in hashes]) if with_hashes else None,
        digests=digests, skipped=skipped)


def _forward(predictor: Predictor, pixels: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and OOD scores of a batch; with TTA the logits of the mirror image are averaged
    in, while the OOD score stays that of the image as the user gave it."""
    if not tta:
        logits, _, scores = predictor.forward(pixels)
        return logits, scores
    both = np.concatenate([pixels, pixels[:, :, ::-1]])
    logits, _, scores = predictor.forward(both)
    half = len(pixels)
    return (logits[:half] + logits[half:]) / 2.0, scores[:half]


def _stack_hashes(words: list[np.ndarray]) -> np.ndarray:
    return np.array(words, dtype=np.uint64).reshape(len(words), HASH_WORDS)


# -- leakage -------------------------------------------------------------------------------
@dataclass
class HashedFolder:
    """Perceptual hashes and byte digests of every readable image of a training folder."""

    root: Path
    relative_paths: list[str]
    hashes: np.ndarray
    mirrored_hashes: np.ndarray
    digests: list[str]
    skipped: list[tuple[str, str]]


@dataclass(frozen=True)
class TrainingMatch:
    """A training image that duplicates an evaluation image."""

    train_path: str  # relative to the training folder
    bits: int  # Hamming distance of the 256-bit perceptual hashes (mirror taken if closer)
    mirrored: bool  # the closer match is the mirrored image
    identical: bool  # byte-for-byte the same file

    @property
    def kind(self) -> str:
        """A short description: identical file, mirrored copy or near-duplicate."""
        if self.identical:
            return "identical file"
        if self.mirrored:
            return f"mirrored copy ({self.bits} bits)"
        return f"near-duplicate ({self.bits} bits)"


def hash_training_folder(train_dir: Path, progress: bool = True) -> HashedFolder:
    """Hash every image of a training folder (either layout); unreadable files are skipped."""
    scan = scan_folder(train_dir)
    skipped = list(scan.skipped)
    kept: list[str] = []
    direct: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    digests: list[str] = []

    def decode(index: int) -> DecodedImage:
        return decode_file(scan.images[index].path, None, with_hashes=True)

    indices = range(len(scan.images))
    with _progress(len(scan.images), "hashing training images", progress) as bar:
        for index, decoded in zip(indices, ordered_parallel_map(decode, indices,
                                                                workers=DECODE_WORKERS),
                                  strict=True):
            bar.update(1)
            relative = scan.relative(scan.images[index].path)
            if decoded.error is not None or decoded.hashes is None or decoded.digest is None:
                skipped.append((relative, decoded.error or "cannot read"))
                continue
            kept.append(relative)
            direct.append(decoded.hashes[0])
            mirrored.append(decoded.hashes[1])
            digests.append(decoded.digest)
    return HashedFolder(Path(train_dir), kept, _stack_hashes(direct), _stack_hashes(mirrored),
                        digests, skipped)


def find_training_duplicates(scored: ScoredImages, training: HashedFolder,
                             max_bits: int = NEAR_DUPLICATE_BITS) -> list[list[TrainingMatch]]:
    """For each evaluation image, the training images that duplicate it (closest first)."""
    if scored.hashes is None or scored.mirrored_hashes is None:
        raise ValueError("the evaluation images were scored without hashes")
    matches: list[list[TrainingMatch]] = [[] for _ in scored.relative_paths]
    if len(training.relative_paths) == 0:
        return matches
    rows, cols = near_duplicate_pairs(scored.hashes, scored.mirrored_hashes, training.hashes,
                                      max_bits)
    direct = hamming(scored.hashes[rows], training.hashes[cols])
    flipped = hamming(scored.mirrored_hashes[rows], training.hashes[cols])
    for i, j, d, f in zip(rows.tolist(), cols.tolist(), direct.tolist(), flipped.tolist(),
                          strict=True):
        identical = scored.digests[i] == training.digests[j]
        matches[i].append(TrainingMatch(training.relative_paths[j], int(min(d, f)), f < d,
                                        identical))
    for found in matches:
        found.sort(key=lambda m: (not m.identical, m.bits, m.train_path))
    return matches


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
        "ece": metrics.expected_calibration_error(calibrated, labels, ECE_BINS),
        "ece_uncalibrated": metrics.expected_calibration_error(uncalibrated, labels, ECE_BINS),
    }


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

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in output order."""
        return self.predictor.class_names

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
        """The ``--json`` object: exactly the keys of ``JSON_KEYS``."""
        m = self.metrics
        leak_free = None
        if self.leak_free is not None:
            leak_free = {key: self.leak_free[key] for key in ("n", "accuracy", "macro_f1")}
        result = {
            "n": m["n"], "classes": list(self.class_names), "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "per_class": m["per_class"],
            "confusion_matrix": m["confusion_matrix"], "auc": m["auc"], "ece": m["ece"],
            "ece_uncalibrated": m["ece_uncalibrated"], "leak_free": leak_free,
            "skipped": [{"path": path, "reason": reason} for path, reason in self.scored.skipped],
        }
        assert tuple(result) == JSON_KEYS
        return result


def evaluate(predictor: Predictor, data_dir: Path, train_dir: Path | None = None,
             batch_size: int = 64, tta: bool = False, progress: bool = True) -> Evaluation:
    """Score a labelled folder and compute all metrics (twice when ``train_dir`` is given)."""
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    scan = scan_folder(data_dir)
    if train_dir is not None:
        if not Path(train_dir).is_dir():
            raise FileNotFoundError(f"--train-dir {train_dir}: no such folder")
        scan_folder(train_dir)  # fail on a bad training folder before the long scoring step
    if not scan.images:
        raise ValueError(f"{data_dir}: no images found in the class folders")
    started = time.perf_counter()
    scored = score_folder(predictor, scan, batch_size, tta, with_hashes=train_dir is not None,
                          progress=progress)
    seconds = time.perf_counter() - started
    temperature = float(predictor.card.temperature)
    evaluation = Evaluation(predictor, scored,
                            compute_metrics(scored.logits, scored.labels, predictor.class_names,
                                            temperature), tta, seconds)
    if train_dir is not None:
        training = hash_training_folder(Path(train_dir), progress)
        duplicates = find_training_duplicates(scored, training)
        clean = np.array([not found for found in duplicates], dtype=bool)
        evaluation.training = training
        evaluation.duplicates = duplicates
        evaluation.leak_free = compute_metrics(scored.logits[clean], scored.labels[clean],
                                               predictor.class_names, temperature)
    return evaluation


def run_evaluate_command(args: argparse.Namespace) -> int:
    """``mri-tumor evaluate``: print a summary (or JSON) and optionally write a report."""
    from mri_tumor import report
    from mri_tumor.frontend import load_predictor

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    # Folder problems are reported before the model is loaded and anything is scored.
    if not scan_folder(args.data_dir).images:
        raise ValueError(f"{args.data_dir}: no images found in the class folders")
    if args.train_dir is not None:
        if not args.train_dir.is_dir():
            raise FileNotFoundError(f"--train-dir {args.train_dir}: no such folder")
        scan_folder(args.train_dir)
    if args.out is not None:
        report.check_output_dir(args.out)  # before the long part: refuse early, write nothing
    predictor = load_predictor(args.model, backend=args.backend)
    evaluation = evaluate(predictor, args.data_dir, args.train_dir, args.batch_size, args.tta)
    report_path = report.write_report(evaluation, args.out) if args.out is not None else None
    if args.json:
        print(json.dumps(evaluation.to_json()))
        if report_path is not None:
            print(f"Report: {report_path}", file=sys.stderr)
        print(DISCLAIMER, file=sys.stderr)
    else:
        print(report.format_summary(evaluation, report_path))
    return 0
