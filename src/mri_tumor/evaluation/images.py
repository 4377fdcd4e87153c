"""Which images an evaluation scores (folders, or one side of a split file) and how they are
decoded: a small thread pool decodes the next batch while the previous one is scored."""

from __future__ import annotations

import hashlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from mri_tumor.data.folders import (
    FOLDER_ALIASES,
    FolderScan,
    LabelledImage,
    class_of_folder,
    scan_folders,
    source_name,
)
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import ImageReadError, read_image
from mri_tumor.data.splitting import (
    image_hashes,
    read_split_csv,
)

# Two decoding threads keep the model fed on a 2-core machine: JPEG decoding and resizing
# release the GIL, and a window of a few batches bounds the memory held by decoded images.
DECODE_WORKERS = 2


PREFETCH_BATCHES = 2


SUBSETS = ("train", "val", "test")


Item = TypeVar("Item")


Decoded = TypeVar("Decoded")


def as_paths(dirs: str | Path | Sequence[str | Path] | None) -> list[Path]:
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
    dirs = as_paths(data_dirs)
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
        raise ValueError(nothing_to_evaluate(scans, scheme))
    return image_set


# What each label scheme reads (the model card's ``label_scheme``).
SCHEME_LAYOUTS = {
    "classes": "class folders (glioma, meningioma, notumor, pituitary, or the SARTAJ names; "
               "label scheme 'classes') or '<Type> <Sequence>' folders of the types it maps "
               "onto those classes",
    "types": "'<Type> <Sequence>' folders (label scheme 'types'; e.g. 'Meningioma T1C+', "
             "'_NORMAL T2')",
}


def nothing_to_evaluate(scans: Sequence[FolderScan], scheme: str) -> str:
    """Why folders gave no image to evaluate, in one line: the layout the model's label
    scheme reads, and what was found instead."""
    location = ", ".join(str(scan.root) for scan in scans)
    expects = f"this model reads {SCHEME_LAYOUTS.get(scheme, 'other folders')}"
    passed = [entry for scan in scans for entry in scan.skipped]
    folders = [path.split("/ (")[0] for path, _ in passed if "/ (" in path]
    if folders and scheme == "types" and all(f.lower() in FOLDER_ALIASES for f in folders):
        return (f"{location}: no images to evaluate: {expects}, but found the class folders "
                f"{', '.join(folders)}, which the 4-class model 'default' reads")
    if folders:
        shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more"
                                          if len(folders) > 5 else "")
        return (f"{location}: no images to evaluate: {expects}; found {len(folders)} "
                f"folder(s), all passed over: {shown} ({passed[0][1]})")
    if passed:
        return (f"{location}: no images to evaluate: the class folders hold "
                f"{len(passed)} file(s) that are not images, e.g. {passed[0][0]} "
                f"({passed[0][1]})")
    return f"{location}: no images found in the class folders ({expects})"


def _split_images(dirs: list[Path], split: Path, subset: str) -> ImageSet:
    # training imports torch and Lightning: only needed, and only paid for, with --split
    from mri_tumor.data.rows import row_path, source_roots

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
    # A model trained on more sources than are scored now (e.g. the slice collections without
    # the whole-scan sources): score the given ones, and say which were not.
    skipped = [row for row in rows if row.source not in roots]
    rows = [row for row in rows if row.source in roots]
    unknown = sorted({row.source for row in skipped})
    if not rows:
        raise FileNotFoundError(
            f"split file {split}: its '{subset}' images come from source(s) "
            f"{', '.join(s or '(one unnamed folder)' for s in unknown)}, but no data folder of "
            f"that name was given (given: {', '.join(names)})")
    left_out = (f"; {len(skipped)} of source(s) {', '.join(unknown)} left out (no folder given)"
                if skipped else "")
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
                    selection=f"the {len(rows)} '{subset}' images of {split}{left_out}")


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


def progress_bar(total: int, description: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False)


def split_training_rows(split: Path) -> set[tuple[str, str]]:
    """(source, path) of a split file's training rows: the training images when the
    evaluated folders hold both sides of the split."""
    return {(row.source, row.path) for row in read_split_csv(split) if row.split == "train"}
