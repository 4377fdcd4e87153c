"""Leakage: evaluation images with an exact or near-duplicate among the training images
(perceptual hash, mirrored copies included)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mri_tumor.data.folders import (
    scan_folders,
)
from mri_tumor.data.splitting import (
    HASH_WORDS,
    NEAR_DUPLICATE_BITS,
    hamming,
    near_duplicate_pairs,
)
from mri_tumor.evaluation.images import (
    DECODE_WORKERS,
    DecodedImage,
    as_paths,
    decode_file,
    ordered_parallel_map,
    progress_bar,
)
from mri_tumor.evaluation.shortcut import intensity_features

if TYPE_CHECKING:
    from mri_tumor.evaluation.scoring import ScoredImages


def stack_hashes(words: list[np.ndarray]) -> np.ndarray:
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
    scans = scan_folders(as_paths(train_dirs), scheme)
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
    with progress_bar(len(items), "hashing training images", progress) as bar:
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
    return HashedFolder([scan.root for scan in scans], kept, stack_hashes(direct),
                        stack_hashes(mirrored), digests, skipped, labels,
                        np.stack(features) if image_size and features else None)


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
