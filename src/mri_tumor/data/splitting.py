"""Duplicate-aware, stratified train / validation (/ test) split.

The public brain-tumour sets hold exact copies, re-saved copies and mirrored copies of the
same slice. A random split puts one copy in training and another in validation and inflates
the score (the seed's 95% was measured that way). Here every image gets a perceptual hash
of itself and of its mirror image; images whose hashes are within a few bits of each other
are joined into one group (transitively), and whole groups are assigned to one side.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mri_tumor.data.folders import (
    CLASS_NAMES,
    TYPE_LABELS,
    FolderScan,
    LabelledImage,
    load_exclusions,
)
from mri_tumor.data.reading import ImageReadError, read_image

# A 16 x 16 DCT hash (256 bits). The usual 8 x 8 hash is too coarse for MRI: slices share a
# dark background and an oval outline, and at 6 bits of 64 one "group" swallowed 741 images of
# the training set. At 256 bits the nearest-neighbour distances are bimodal: copies (re-saved,
# resized, mirrored) lie within 0-12 bits, distinct slices mostly beyond 24.
HASH_SIZE = 16
HASH_WORDS = HASH_SIZE * HASH_SIZE // 64
NEAR_DUPLICATE_BITS = 16
SPLIT_COLUMNS = ("path", "label", "split", "group", "phash")
# Written by multi-source training; a split file without them (one source) still reads.
SOURCE_COLUMNS = ("source", "sequence")


@dataclass
class SplitRow:
    path: str  # relative to the dataset folder, with forward slashes
    label: str
    split: str  # "train", "val" or "test"
    group: int
    phash: str
    source: str = ""  # the data folder's source name ("" in single-folder splits)
    sequence: str = ""  # MR sequence when the folder layout tells it


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """256-bit perceptual hash of an image as 4 uint64 words."""
    import imagehash  # only splitting needs it; training from a split CSV does not

    bits = imagehash.phash(image, hash_size=HASH_SIZE).hash.flatten()
    return np.packbits(bits).view(np.uint64)


def image_hashes(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Perceptual hash of a grayscale image and of its left-right mirror."""
    return perceptual_hash(image), perceptual_hash(ImageOps.mirror(image))


def hash_to_hex(words: np.ndarray) -> str:
    return words.view(np.uint8).tobytes().hex()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between hash arrays (..., HASH_WORDS), broadcasting over leading axes."""
    return np.bitwise_count(a ^ b).sum(axis=-1)


def near_duplicate_pairs(hashes: np.ndarray, mirrored: np.ndarray, reference: np.ndarray,
                         max_bits: int = NEAR_DUPLICATE_BITS,
                         same_set: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j): image i (or its mirror) is within ``max_bits`` of reference j."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    chunk = 256
    for start in range(0, len(hashes), chunk):
        block = slice(start, start + chunk)
        direct = hamming(hashes[block, None], reference[None, :])
        flipped = hamming(mirrored[block, None], reference[None, :])
        close = np.minimum(direct, flipped) <= max_bits
        i, j = np.nonzero(close)
        i = i + start
        if same_set:  # drop self-pairs; (i, j) and (j, i) may differ via the mirror hash
            keep = i != j
            i, j = i[keep], j[keep]
        rows.append(i)
        cols.append(j)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def duplicate_groups(hashes: np.ndarray, mirrored: np.ndarray,
                     max_bits: int = NEAR_DUPLICATE_BITS) -> np.ndarray:
    """Group id per image; exact and near-duplicates (mirrors included) share a group."""
    n = len(hashes)
    i, j = near_duplicate_pairs(hashes, mirrored, hashes, max_bits, same_set=True)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def join_named_groups(groups: np.ndarray, names: list[tuple[str, str]]) -> np.ndarray:
    """Group images that share a non-empty group name (a patient, a scan) within their
    source by that name, so that all slices of one patient are on one side; images without
    a name keep their duplicate groups."""
    n = len(groups)
    if not any(name for _, name in names):  # no layout named groups: splits stay as before
        return groups
    first: dict[tuple[str, str], int] = {}
    offset = int(groups.max()) + 1 if n else 0
    # Graph over images (0..n-1) and duplicate groups (n + group): an image joins its
    # duplicate group and the first image of its named group.
    # Images with a name are joined by it alone: the outer slices of different patients'
    # stacks (near-blank, skull cap) look alike and would chain whole sources together.
    rows, cols = [], []
    for i, group in enumerate(groups):
        rows.append(i)
        cols.append(first.setdefault(names[i], i) if names[i][1] else n + int(group))
    size = n + offset
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    _, renumbered = np.unique(labels[:n], return_inverse=True)
    return renumbered


def hash_folder(scan: FolderScan,
                progress: Callable[[Iterable], Iterable] | None = None
                ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Hash every image of a scan; unreadable ones are added to ``scan.skipped``.

    Returns the indices (into ``scan.images``) that were read, and their two hash arrays.
    """
    kept: list[int] = []
    direct: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    items = list(enumerate(scan.images))
    for index, item in (progress(items) if progress else items):
        try:
            image = read_image(item.path)
        except ImageReadError as error:
            scan.skipped.append((scan.relative(item.path), str(error).split(": ", 1)[-1]))
            continue
        d, m = image_hashes(image)
        kept.append(index)
        direct.append(d)
        mirrored.append(m)
    shape = (len(kept), HASH_WORDS)
    return (kept, np.array(direct, dtype=np.uint64).reshape(shape),
            np.array(mirrored, dtype=np.uint64).reshape(shape))


def split_folder(scan: FolderScan, val_fraction: float = 0.15, test_fraction: float = 0.0,
                 seed: int = 0, max_bits: int = NEAR_DUPLICATE_BITS,
                 progress: Callable[[Iterable], Iterable] | None = None) -> list[SplitRow]:
    """Stratified split in which no duplicate group is on two sides. Deterministic per seed."""
    return split_folders([scan], val_fraction, test_fraction, seed, max_bits, progress)


def split_folders(scans: list[FolderScan], val_fraction: float = 0.15,
                  test_fraction: float = 0.0, seed: int = 0,
                  max_bits: int = NEAR_DUPLICATE_BITS,
                  progress: Callable[[Iterable], Iterable] | None = None) -> list[SplitRow]:
    """Split several sources at once: stratified by source and class, and no duplicate group
    (near-copies are searched across all sources) on two sides. Deterministic per seed."""
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("validation and test fractions must be in (0, 1) and sum below 1")
    images: list[tuple[FolderScan, LabelledImage]] = []
    direct_parts, mirrored_parts = [], []
    for scan in scans:
        kept, direct, mirrored = hash_folder(scan, progress)
        images.extend((scan, scan.images[i]) for i in kept)
        direct_parts.append(direct)
        mirrored_parts.append(mirrored)
    direct = np.concatenate(direct_parts) if direct_parts else np.zeros((0, HASH_WORDS), np.uint64)
    mirrored = (np.concatenate(mirrored_parts) if mirrored_parts
                else np.zeros((0, HASH_WORDS), np.uint64))
    groups = duplicate_groups(direct, mirrored, max_bits)
    groups = join_named_groups(groups, [(item.source, item.group) for _, item in images])
    strata = [(item.source, item.label) for _, item in images]

    members: dict[int, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        members[int(group)].append(position)
    # A group is filed under its most common (source, class) so that each is split in
    # proportion.
    by_stratum: dict[tuple[str, str], list[int]] = defaultdict(list)
    for group, positions in sorted(members.items()):
        majority = Counter(strata[p] for p in positions).most_common(1)[0][0]
        by_stratum[majority].append(group)

    rng = random.Random(seed)
    side_of_group: dict[int, str] = {}
    for stratum in sorted(by_stratum):
        stratum_groups = by_stratum[stratum]
        rng.shuffle(stratum_groups)
        if len(stratum_groups) == 1:  # one patient or collection: it cannot be split
            side_of_group[stratum_groups[0]] = "train"
            continue
        total = sum(len(members[g]) for g in stratum_groups)
        targets = [("test", test_fraction * total), ("val", val_fraction * total)]
        filled = {"test": 0, "val": 0}
        for group in stratum_groups:
            side = "train"
            for name, target in targets:
                if filled[name] < target:
                    side = name
                    break
            if side != "train":
                filled[side] += len(members[group])
            side_of_group[group] = side

    return [SplitRow(scan.relative(item.path), item.label, side_of_group[int(groups[position])],
                     int(groups[position]), hash_to_hex(direct[position]),
                     item.source if len(scans) > 1 else "", item.sequence)
            for position, (scan, item) in enumerate(images)]


def write_split_csv(rows: list[SplitRow], path: Path) -> None:
    """Save a split so that training, evaluation and later runs reuse it exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS + SOURCE_COLUMNS)
        for row in rows:
            writer.writerow([row.path, row.label, row.split, row.group, row.phash, row.source,
                             row.sequence])


def read_split_csv(path: Path, exclude: bool = True) -> list[SplitRow]:
    """Load a split written by ``write_split_csv``; a malformed file raises ValueError.

    With ``exclude`` the images of the reviewed exclusion list (``folders.load_exclusions``)
    are left out, so that training, calibration and evaluation from a split never use them.
    """
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or set(SPLIT_COLUMNS) - set(reader.fieldnames):
            raise ValueError(f"{path}: not a split file (needs columns {', '.join(SPLIT_COLUMNS)})")
        try:
            rows = [SplitRow(r["path"], r["label"], r["split"], int(r["group"]), r["phash"],
                             r.get("source") or "", r.get("sequence") or "")
                    for r in reader]
        except (TypeError, ValueError, csv.Error) as error:
            raise ValueError(f"{path}: not a valid split file (line {reader.line_num}: "
                             f"{error})") from None
    if exclude:
        excluded = load_exclusions()
        rows = [r for r in rows if (r.source, r.path) not in excluded]
    bad = ({r.label for r in rows} - set(CLASS_NAMES) - set(TYPE_LABELS)) | (
        {r.split for r in rows} - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{path}: unexpected labels or splits {sorted(bad)}")
    return rows


def split_summary(rows: list[SplitRow]) -> dict[str, dict[str, int]]:
    """Image counts per split and class."""
    summary: dict[str, dict[str, int]] = {}
    labels = sorted({row.label for row in rows})
    for row in rows:
        summary.setdefault(row.split, dict.fromkeys(labels, 0))[row.label] += 1
    return summary


def source_summary(rows: list[SplitRow]) -> dict[str, dict[str, dict[str, int]]]:
    """Image counts per source, split and class (source "" is a single-folder split)."""
    summary: dict[str, dict[str, dict[str, int]]] = {}
    labels = sorted({row.label for row in rows})
    for row in rows:
        per_split = summary.setdefault(row.source, {})
        per_split.setdefault(row.split, dict.fromkeys(labels, 0))[row.label] += 1
    return summary


def folder_fingerprint(roots: dict[str, Path] | Path,
                       files: Iterable[tuple[str, str]] | Iterable[str]) -> str:
    """SHA-256 over the names and bytes of the given files (``(source, relative path)``
    pairs, or relative paths under one folder): identifies the training data."""
    if isinstance(roots, Path):
        roots = {"": roots}
    keyed = [item if isinstance(item, tuple) else ("", item) for item in files]
    digest = hashlib.sha256()
    for source, relative in sorted(keyed):
        digest.update((f"{source}/{relative}" if source else relative).encode())
        digest.update(hashlib.sha256((roots[source] / relative).read_bytes()).digest())
    return digest.hexdigest()
