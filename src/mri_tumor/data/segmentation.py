"""Slices and masks for the segmentation model, and its split by patient.

Reads the whole-scan layout of ``data.patients`` (``root/<patient>/<NNN>_FLAIR.jpg`` with
``<NNN>_mask.png``, the manual outline of the FLAIR abnormality). Every slice of a patient
goes to the same side; the held-out patients are drawn per institution, so that each
hospital is represented on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from mri_tumor.data.patients import SLICE_FILE


@dataclass(frozen=True)
class MaskedSlice:
    """One slice image with its tumour mask."""

    image: Path
    mask: Path
    patient: str
    number: int  # 1 = the first slice of the stack
    # Co-registered slices of other sequences (``masked_slices(companions=...)``), None
    # where the patient lacks that sequence.
    companions: tuple[Path | None, ...] = ()

    def channels(self) -> list[Path]:
        """The images of this slice's input channels: the slice, then each companion (the
        slice itself in place of a missing one)."""
        return [self.image, *(path or self.image for path in self.companions)]


def institution(patient: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``CS``; other names are their own institution."""
    parts = patient.split("_")
    return parts[1] if len(parts) > 2 else patient


def masked_slices(root: Path, sequence: str = "FLAIR", companions: Sequence[str] = ()
                  ) -> list[MaskedSlice]:
    """Every slice of ``sequence`` that has a mask, by patient and slice number, with the
    same slice of each ``companions`` sequence (``<NNN>_<sequence>.jpg``) where it exists."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    rows = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()
                              and not p.name.startswith(".")):
        for path in sorted(patient_dir.iterdir()):
            match = SLICE_FILE.match(path.name)
            if match is None or match["sequence"].upper() != sequence.upper():
                continue
            mask = path.with_name(f"{match['slice']}_mask.png")
            if mask.is_file():
                others = tuple(_existing(path.with_name(f"{match['slice']}_{other}.jpg"))
                               for other in companions)
                rows.append(MaskedSlice(path, mask, patient_dir.name, int(match["slice"]),
                                        others))
    if not rows:
        raise ValueError(f"{root}: no <NNN>_{sequence}.jpg slices with <NNN>_mask.png masks "
                         "in patient folders")
    return rows


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def neighbour_step(slices: int, stack_slices: int) -> int:
    """How many slices away a 2.5-D model's neighbours are taken in a stack of ``slices``:
    about as far through the head as one slice of a training stack of ``stack_slices``
    (the median of training), so a thin-slice volume gives the same context as training."""
    return max(1, round(slices / stack_slices)) if stack_slices > 0 else 1


def neighbour_pairs(count: int, step: int) -> list[tuple[int, int]]:
    """For each of ``count`` ordered slices, the indices of its neighbours ``step`` slices
    before and after, held at the stack's ends (the first slice is its own neighbour below)."""
    return [(max(0, i - step), min(count - 1, i + step)) for i in range(count)]


def median_stack_slices(rows: Sequence[MaskedSlice]) -> int:
    """The median number of slices in a patient's stack."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.patient] = counts.get(row.patient, 0) + 1
    return int(np.median(list(counts.values()))) if counts else 0


def with_neighbours(rows: Sequence[MaskedSlice], stack_slices: int) -> list[MaskedSlice]:
    """The rows with each slice's neighbours before and after (``neighbour_step``) as its
    two companion channels: the 2.5-D input, the slice itself in the first channel."""
    by_patient: dict[str, list[MaskedSlice]] = {}
    for row in rows:
        by_patient.setdefault(row.patient, []).append(row)
    out = []
    for patient_rows in by_patient.values():
        ordered = sorted(patient_rows, key=lambda r: r.number)
        step = neighbour_step(len(ordered), stack_slices)
        for row, (before, after) in zip(ordered, neighbour_pairs(len(ordered), step),
                                        strict=True):
            out.append(replace(row, companions=(ordered[before].image, ordered[after].image)))
    return out


def split_patients(patients: list[str], held_out: float, seed: int = 0) -> dict[str, str]:
    """Patient -> ``"train"`` or ``"test"``: about ``held_out`` of each institution's patients
    are held out, chosen by a seeded hash of the name (the same names give the same split)."""
    by_site: dict[str, list[str]] = {}
    for patient in sorted(set(patients)):
        by_site.setdefault(institution(patient), []).append(patient)
    sides = {}
    for site_patients in by_site.values():
        ranked = sorted(site_patients, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode())
                        .hexdigest())
        count = round(held_out * len(ranked))
        for i, patient in enumerate(ranked):
            sides[patient] = "test" if i < count else "train"
    return sides


def read_mask(path: Path) -> np.ndarray:
    """A mask image -> bool array (white = tumour)."""
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L")) > 127


def load_pairs(rows: list[MaskedSlice], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, size, size), or (N, C, size, size) for slices with companions
    (``MaskedSlice.channels``), and masks as bool (N, size, size), resized (bilinear; the
    mask's resampled share thresholded at one half)."""
    channels = 1 + (len(rows[0].companions) if rows else 0)
    images = np.empty((len(rows), channels, size, size), dtype=np.uint8)
    masks = np.empty((len(rows), size, size), dtype=bool)
    for i, row in enumerate(rows):
        for c, path in enumerate(row.channels()):
            with Image.open(path) as image:
                grey = image.convert("L")
                images[i, c] = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR)
                                          if grey.size != (size, size) else grey)
        mask = Image.fromarray(read_mask(row.mask).astype(np.float32))
        masks[i] = np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR)) >= 0.5
    return (images[:, 0] if channels == 1 else images), masks
