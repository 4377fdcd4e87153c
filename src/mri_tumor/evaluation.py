"""Evaluation stage: score labelled folders, compute metrics, check for leakage and
shortcuts, stress the model, report.

    evaluation = evaluate(predictor, collect_images([data_dir]), train_dirs=[train_dir])
    print(evaluation.metrics["accuracy"])

(the ``mri-tumor evaluate`` command in ``cli`` wraps this and ``report``.)

Probabilities come from ``Predictor.forward`` on exactly the pixels the predictor itself
would see (``read_image`` then ``to_model_pixels``), so the numbers describe the model as
users run it. Images are decoded in a small thread pool while the previous batch is scored.

Each data folder is a *source*. Metrics are also given per source and per MR sequence
(``by_group``) and per source x sequence x class (``by_cell``). With a split file only the
images on one side of it (default ``val``) are scored: that is how a model's own validation
images are measured.

With training folders, every evaluation image that has an exact or near-duplicate there
(perceptual hash, mirrored copies included) is flagged and all metrics are given twice: on
all images and on the leak-free rest. A classifier that sees nothing but brightness
statistics is fitted on the training images and scored on the evaluated ones (the shortcut
audit): when it does well, the labels can be read off the source's brightness. ``--stress``
scores the images again after histogram swaps, gamma changes and a mirror, and the model's
out-of-distribution scores tell whether the folder looks unlike its training data.
Research tool, not a diagnosis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from mri_tumor import metrics
from mri_tumor.calibration import softmax
from mri_tumor.data.folders import (
    FolderScan,
    LabelledImage,
    class_of_folder,
    scan_folders,
    source_name,
)
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import ImageReadError, read_image
from mri_tumor.data.splitting import (
    HASH_WORDS,
    NEAR_DUPLICATE_BITS,
    hamming,
    image_hashes,
    near_duplicate_pairs,
    read_split_csv,
)
from mri_tumor.inference import Predictor

JSON_KEYS = ("n", "classes", "accuracy", "macro_f1", "per_class", "confusion_matrix", "auc",
             "ece", "ece_uncalibrated", "leak_free", "by_group", "by_cell", "stress",
             "shortcut_baseline_accuracy", "shift_warning", "sequence_accuracy", "sequence",
             "skipped")
# Two decoding threads keep the model fed on a 2-core machine: JPEG decoding and resizing
# release the GIL, and a window of a few batches bounds the memory held by decoded images.
DECODE_WORKERS = 2
PREFETCH_BATCHES = 2
SUBSETS = ("train", "val", "test")

# --stress: the perturbations, in the order of the JSON object; the random choices of the
# histogram swaps are fixed by the seed, so a run can be repeated.
STRESS_KEYS = ("histogram_swap_other_class", "histogram_swap_same_class", "gamma_0.5",
               "gamma_2.0", "flip", "half_resolution")
STRESS_SEED = 0

# Shortcut audit: brightness statistics of the model-size grey pixels, nothing spatial.
HISTOGRAM_BINS = 32
FEATURE_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
SHORTCUT_L2 = 1e-3

# Distribution shift: a set of images is flagged as unlike the training data when
#   (a) the out-of-distribution guard rejects more than SHIFT_MIN_REJECTED (2%) of it AND more
#       than SHIFT_REJECT_FACTOR (3) times the share it rejected on the model's own validation
#       images (card: metrics.validation.ood_rejected; 0 when the card does not record it), or
#   (b) its median OOD score is above SHIFT_MEDIAN_FRACTION (60%) of the rejection threshold.
# (a) catches a folder with a tail of clearly foreign images, (b) one that is shifted as a
# whole while most images still pass the guard. Checked on all images, and per source when
# there are several.
SHIFT_REJECT_FACTOR = 3.0
SHIFT_MIN_REJECTED = 0.02
SHIFT_MEDIAN_FRACTION = 0.6
SHIFT_RULE = (f"flagged when the guard rejects more than {SHIFT_MIN_REJECTED:.0%} of the images "
              f"and more than {SHIFT_REJECT_FACTOR:g}x its rejection rate on the model's "
              f"validation images, or when the median OOD score is above "
              f"{SHIFT_MEDIAN_FRACTION:.0%} of the rejection threshold")

Item = TypeVar("Item")
Decoded = TypeVar("Decoded")


def _as_paths(dirs: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if dirs is None:
        return []
    if isinstance(dirs, str | Path):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


# -- which images ----------------------------------------------------------------------------
@dataclass
class ImageSet:
    """The labelled images to evaluate, from one or more source folders."""

    roots: list[Path]
    images: list[LabelledImage]
    names: list[str]  # relative paths, prefixed with the source name when there are 2+ roots
    skipped: list[tuple[str, str]] = field(default_factory=list)
    selection: str | None = None  # e.g. "the 862 'val' rows of runs/x/split.csv"

    @property
    def location(self) -> str:
        """The folder(s), for headings."""
        return ", ".join(str(root) for root in self.roots)


def collect_images(data_dirs: str | Path | Sequence[str | Path], split: Path | None = None,
                   subset: str = "val", scheme: str = "classes") -> ImageSet:
    """The images of one or more labelled folders (each a source), or only those listed on
    the ``subset`` side of a split CSV, resolved under the folders by their source names.
    ``scheme`` is how folders are labelled (the model card's ``label_scheme``).

    Raises FileNotFoundError / ValueError with a one-line message for a missing folder, file
    or source, an unknown class folder, or nothing to evaluate.
    """
    dirs = _as_paths(data_dirs)
    if not dirs:
        raise ValueError("no data folder given")
    if split is not None:
        return _split_images(dirs, Path(split), subset)
    scans = scan_folders(dirs, scheme)
    prefixed = len(scans) > 1
    images: list[LabelledImage] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    for scan in scans:
        prefix = f"{scan.source}/" if prefixed else ""
        images += scan.images
        names += [prefix + scan.relative(item.path) for item in scan.images]
        skipped += [(prefix + path, reason) for path, reason in scan.skipped]
    image_set = ImageSet(dirs, images, names, skipped)
    if not images:
        raise ValueError(f"{image_set.location}: no images found in the class folders")
    return image_set


def _split_images(dirs: list[Path], split: Path, subset: str) -> ImageSet:
    # training imports torch and Lightning: only needed, and only paid for, with --split
    from mri_tumor.training import row_path, source_roots

    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    for directory in dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such folder")
    names = [source_name(d) for d in dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"two data folders have the same name ({', '.join(names)}); each "
                         "folder is a source and is recorded by its name")
    if not split.is_file():
        raise FileNotFoundError(f"split file {split}: no such file")
    rows = [row for row in read_split_csv(split) if row.split == subset]
    if not rows:
        raise ValueError(f"split file {split}: no images on the '{subset}' side")
    roots = source_roots(dirs)
    unknown = sorted({row.source for row in rows} - roots.keys())
    if unknown:
        raise FileNotFoundError(
            f"split file {split}: its '{subset}' images come from source(s) "
            f"{', '.join(s or '(one unnamed folder)' for s in unknown)}, but no data folder of "
            f"that name was given (given: {', '.join(names)})")
    missing = [row for row in rows if not row_path(row, roots).is_file()]
    if missing:
        raise FileNotFoundError(f"split file {split}: {len(missing)} of its {len(rows)} '{subset}' "
                                f"images are not under the data folder(s), e.g. "
                                f"{row_path(missing[0], roots)}")
    prefixed = len(dirs) > 1
    images, relative = [], []
    for row in rows:
        source = row.source or source_name(roots[row.source])
        # splits written before the sequence column existed: the class folder tells it
        sequence = row.sequence or class_of_folder(Path(row.path).parts[0])[1]
        images.append(LabelledImage(row_path(row, roots), row.label, source, sequence))
        relative.append(f"{source}/{row.path}" if prefixed else row.path)
    return ImageSet(dirs, images, relative, [],
                    selection=f"the {len(rows)} '{subset}' images of {split}")


def _folder_set(scan: FolderScan) -> ImageSet:
    return ImageSet([scan.root], list(scan.images),
                    [scan.relative(item.path) for item in scan.images], list(scan.skipped))


# -- decoding ------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    """One file after decoding: model pixels, hashes and/or brightness features, or the
    reason it failed."""

    pixels: np.ndarray | None = None
    hashes: tuple[np.ndarray, np.ndarray] | None = None
    digest: str | None = None
    error: str | None = None
    features: np.ndarray | None = None


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
        batch_logits, scores, batch_sequences = _forward(predictor, np.stack(batch), tta)
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
    with _progress(len(images), "evaluating", progress) as bar:
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
        hashes=_stack_hashes([h[0] for h in hashes]) if with_hashes else None,
        mirrored_hashes=_stack_hashes([h[1] for h in hashes]) if with_hashes else None,
        digests=digests, skipped=skipped,
        features=np.stack(features) if with_features else None,
        pixels=np.stack(pixels) if keep_pixels else None, selection=image_set.selection)


def score_folder(predictor: Predictor, scan: FolderScan, batch_size: int = 64,
                 tta: bool = False, with_hashes: bool = False,
                 progress: bool = True) -> ScoredImages:
    """``score_images`` for every image of one scanned folder."""
    return score_images(predictor, _folder_set(scan), batch_size, tta, with_hashes,
                        progress=progress)


def _forward(predictor: Predictor, pixels: np.ndarray,
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


def _stack_hashes(words: list[np.ndarray]) -> np.ndarray:
    return np.array(words, dtype=np.uint64).reshape(len(words), HASH_WORDS)


# -- leakage -------------------------------------------------------------------------------
@dataclass
class HashedFolder:
    """Perceptual hashes and byte digests of every readable image of the training folder(s),
    with the labels and (when asked for) the brightness features of the shortcut audit."""

    roots: list[Path]
    relative_paths: list[str]  # prefixed with the source name when there are 2+ folders
    hashes: np.ndarray
    mirrored_hashes: np.ndarray
    digests: list[str]
    skipped: list[tuple[str, str]]
    labels: list[str] = field(default_factory=list)
    features: np.ndarray | None = None  # (N, F), from hash_training_folders(image_size=...)

    @property
    def location(self) -> str:
        """The folder(s), for headings."""
        return ", ".join(str(root) for root in self.roots)


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


def hash_training_folders(train_dirs: Path | Sequence[Path], image_size: int | None = None,
                          progress: bool = True,
                          only: set[tuple[str, str]] | None = None,
                          scheme: str = "classes") -> HashedFolder:
    """Hash every image of one or more training folders (either layout); unreadable files
    are skipped. With ``image_size`` the brightness features of the model-size pixels are
    computed in the same pass (the pixels themselves are not kept). ``only`` keeps just the
    listed ``(source, relative path)`` images (a split's training rows; source "" for a
    single folder)."""
    scans = scan_folders(_as_paths(train_dirs), scheme)
    prefixed = len(scans) > 1
    # A split names each row's source ("" in single-folder splits); a single training folder
    # matches rows by path alone.
    items = [(scan, item) for scan in scans for item in scan.images
             if only is None or (scan.source, scan.relative(item.path)) in only
             or (not prefixed and scan.relative(item.path) in {path for _, path in only})]
    if only is not None and not items:
        raise ValueError("none of the split's training rows are under the training folders "
                         f"{', '.join(str(scan.root) for scan in scans)}")
    skipped = [(f"{scan.source}/{path}" if prefixed else path, reason)
               for scan in scans for path, reason in scan.skipped]
    kept: list[str] = []
    labels: list[str] = []
    direct: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    digests: list[str] = []
    features: list[np.ndarray] = []

    def decode(index: int) -> DecodedImage:
        decoded = decode_file(items[index][1].path, image_size, with_hashes=True)
        if decoded.pixels is not None:
            decoded.features = intensity_features(decoded.pixels[None])[0]
            decoded.pixels = None  # thousands of training images: keep only the statistics
        return decoded

    indices = range(len(items))
    with _progress(len(items), "hashing training images", progress) as bar:
        for index, decoded in zip(indices, ordered_parallel_map(decode, indices,
                                                                workers=DECODE_WORKERS),
                                  strict=True):
            bar.update(1)
            scan, item = items[index]
            relative = (f"{scan.source}/" if prefixed else "") + scan.relative(item.path)
            if decoded.error is not None or decoded.hashes is None or decoded.digest is None:
                skipped.append((relative, decoded.error or "cannot read"))
                continue
            kept.append(relative)
            labels.append(item.label)
            direct.append(decoded.hashes[0])
            mirrored.append(decoded.hashes[1])
            digests.append(decoded.digest)
            if decoded.features is not None:
                features.append(decoded.features)
    return HashedFolder([scan.root for scan in scans], kept, _stack_hashes(direct),
                        _stack_hashes(mirrored), digests, skipped, labels,
                        np.stack(features) if image_size and features else None)


def hash_training_folder(train_dir: Path, progress: bool = True) -> HashedFolder:
    """``hash_training_folders`` for one folder, hashes only."""
    return hash_training_folders([Path(train_dir)], None, progress)


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
        "ece": metrics.expected_calibration_error(calibrated, labels),
        "ece_uncalibrated": metrics.expected_calibration_error(uncalibrated, labels),
    }


def group_metrics(scored: ScoredImages, class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{n, accuracy, macro_f1}`` per group: ``source:<name>`` for each source when there
    are two or more, then ``sequence:<seq>`` for each MR sequence the folder layout tells
    (images of unknown sequence are in no sequence group)."""
    labels, predicted = scored.labels, scored.logits.argmax(axis=1)
    sources, sequences = np.array(scored.sources), np.array(scored.sequences)
    groups: dict[str, np.ndarray] = {}
    if len(set(scored.sources)) > 1:
        groups |= {f"source:{name}": sources == name for name in sorted(set(scored.sources))}
    groups |= {f"sequence:{name}": sequences == name
               for name in sorted(set(scored.sequences) - {""})}
    return {name: {"n": int(mask.sum()),
                   "accuracy": metrics.accuracy(labels[mask], predicted[mask]),
                   "macro_f1": metrics.macro_f1(labels[mask], predicted[mask], len(class_names))}
            for name, mask in groups.items()}


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


# -- shortcut audit: how far brightness alone gets ---------------------------------------------
def intensity_features(pixels: np.ndarray) -> np.ndarray:
    """Brightness statistics of uint8 (N, H, W) pixels, with no spatial information: a
    32-bin normalised histogram, the mean, the standard deviation and the 1/5/25/50/75/95/99th
    percentiles (in grey levels / 255) -> float64 (N, 41)."""
    flat = np.asarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    count, size = flat.shape
    bins = (flat.astype(np.int64) * HISTOGRAM_BINS) // 256
    bins += HISTOGRAM_BINS * np.arange(count)[:, None]
    histogram = np.bincount(bins.ravel(), minlength=count * HISTOGRAM_BINS)
    histogram = histogram.reshape(count, HISTOGRAM_BINS) / size
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


# -- stress test -----------------------------------------------------------------------------
def gamma_pixels(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (p / 255) ** gamma``, rounded back to uint8 (gamma < 1 brightens)."""
    table = np.rint(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[np.asarray(pixels, dtype=np.uint8)]


def half_resolution_pixels(pixels: np.ndarray) -> np.ndarray:
    """Each uint8 (H, W) image shrunk to half its size (PIL's antialiased bilinear) and
    enlarged back to H x W."""
    out = np.empty_like(pixels)
    for i, image in enumerate(np.asarray(pixels, dtype=np.uint8)):
        height, width = image.shape
        small = Image.fromarray(image).resize((max(1, width // 2), max(1, height // 2)),
                                              Image.Resampling.BILINEAR)
        out[i] = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    return out


def match_histogram_pixels(pixels: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Each uint8 image of ``pixels`` given the grey-level histogram of the matching image of
    ``references`` (``skimage.exposure.match_histograms``), rounded back to uint8."""
    from skimage.exposure import match_histograms

    out = np.empty_like(pixels, dtype=np.uint8)
    for i, (image, reference) in enumerate(zip(pixels, references, strict=True)):
        out[i] = np.clip(np.rint(match_histograms(image, reference)), 0, 255).astype(np.uint8)
    return out


def pick_references(labels: np.ndarray, rng: np.random.Generator,
                    same_class: bool) -> np.ndarray:
    """For each image, a random other image of the same class (``same_class``; itself when
    its class has no other image) or of a different class (-1 when there is none)."""
    labels = np.asarray(labels)
    chosen = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels.tolist()):
        pool = np.flatnonzero(labels == label) if same_class else np.flatnonzero(labels != label)
        if same_class:
            pool = pool[pool != i]
        chosen[i] = rng.choice(pool) if len(pool) else (i if same_class else -1)
    return chosen


def stress_test(predictor: Predictor, pixels: np.ndarray, labels: np.ndarray,
                tta: bool = False, batch_size: int = 64, seed: int = STRESS_SEED,
                progress: bool = True) -> dict[str, float | None]:
    """Accuracy (in ``STRESS_KEYS`` order) on uint8 model pixels after each perturbation,
    scored by ``predictor.forward`` so the model's own preprocessing applies:

    - ``histogram_swap_other_class``: each image given the histogram of a random image of
      another class of the same set; a model that reads the class off the brightness fails;
    - ``histogram_swap_same_class``: the control, a random other image of the same class;
    - ``gamma_0.5`` / ``gamma_2.0``: gamma curves on [0, 1] pixels;
    - ``flip``: left-right mirror;
    - ``half_resolution``: shrunk to half the size and enlarged back, the detail a coarser
      acquisition or a smaller stored image lacks (sharpness differs by source too).

    None where undefined (a swap with another class when all images are of one class).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    other = pick_references(labels, rng, same_class=False)
    same = pick_references(labels, rng, same_class=True)
    perturbations: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "histogram_swap_other_class": lambda at: match_histogram_pixels(pixels[at],
                                                                        pixels[other[at]]),
        "histogram_swap_same_class": lambda at: match_histogram_pixels(pixels[at],
                                                                       pixels[same[at]]),
        "gamma_0.5": lambda at: gamma_pixels(pixels[at], 0.5),
        "gamma_2.0": lambda at: gamma_pixels(pixels[at], 2.0),
        "flip": lambda at: pixels[at][:, :, ::-1],
        "half_resolution": lambda at: half_resolution_pixels(pixels[at]),
    }
    result: dict[str, float | None] = {}
    with _progress(len(labels) * len(perturbations), "stress test", progress) as bar:
        for key, perturb in perturbations.items():
            if key == "histogram_swap_other_class" and (other < 0).any():
                result[key] = None
                bar.update(len(labels))
                continue
            predicted = []
            for start in range(0, len(labels), batch_size):
                at = np.arange(start, min(start + batch_size, len(labels)))
                logits = _forward(predictor, np.ascontiguousarray(perturb(at)), tta)[0]
                predicted.append(logits.argmax(axis=1))
                bar.update(len(at))
            result[key] = metrics.accuracy(labels, np.concatenate(predicted))
    return result


# -- distribution shift ----------------------------------------------------------------------
@dataclass(frozen=True)
class ShiftCheck:
    """How one set of images (all of them, or one source) fares with the OOD guard."""

    group: str  # "all images" or a source name
    n: int
    rejected_share: float
    median_score: float
    flagged: bool


def validation_rejected_share(predictor: Predictor) -> float | None:
    """The share of its validation images the guard rejected, from the model card."""
    validation = predictor.card.metrics.validation
    return None if validation is None else validation.ood_rejected


def shift_checks(scored: ScoredImages, threshold: float | None,
                 validation_share: float | None) -> list[ShiftCheck]:
    """The rule of ``SHIFT_RULE`` (see the constants) on all images and, with two or more
    sources, on each source; empty without a guard."""
    if threshold is None or scored.ood_scores is None:
        return []
    scores = np.asarray(scored.ood_scores, dtype=np.float64)
    sources = np.array(scored.sources)
    groups = [("all images", np.ones(len(scores), dtype=bool))]
    if len(set(scored.sources)) > 1:
        groups += [(name, sources == name) for name in sorted(set(scored.sources))]
    bar = max(SHIFT_MIN_REJECTED, SHIFT_REJECT_FACTOR * (validation_share or 0.0))
    checks = []
    for name, mask in groups:
        rejected = float((scores[mask] > threshold).mean())
        median = float(np.median(scores[mask]))
        flagged = rejected > bar or median > SHIFT_MEDIAN_FRACTION * threshold
        checks.append(ShiftCheck(name, int(mask.sum()), rejected, median, flagged))
    return checks


def shift_message(checks: list[ShiftCheck], threshold: float | None,
                  validation_share: float | None) -> str | None:
    """One warning naming every flagged set of images, or None."""
    flagged = [c for c in checks if c.flagged]
    if not flagged or threshold is None:
        return None
    # with several sources, the sources tell where the shift is; "all images" adds nothing
    named = [c for c in flagged if c.group != "all images"] or flagged
    validation = "not recorded" if validation_share is None else f"{validation_share:.1%}"
    parts = []
    for c in named:
        which = f"all {c.n} images" if c.group == "all images" else f"{c.group} ({c.n} images)"
        parts.append(f"{which}: {c.rejected_share:.1%} rejected by the out-of-distribution "
                     f"guard (validation: {validation}), median OOD score "
                     f"{c.median_score:.2f} = {c.median_score / threshold:.0%} of the "
                     f"threshold {threshold:.2f}")
    return ("Distribution shift: the images look unlike the model's training data; expect "
            "accuracy below its validation figure. " + "; ".join(parts) + ".")


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
        asked for: ``leak_free`` and ``shortcut_baseline_accuracy`` need --train-dir,
        ``stress`` needs --stress)."""
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
    train_list = _as_paths(train_dirs)
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


def split_training_rows(split: Path) -> set[tuple[str, str]]:
    """(source, path) of a split file's training rows: the training images when the
    evaluated folders hold both sides of the split."""
    return {(row.source, row.path) for row in read_split_csv(split) if row.split == "train"}
