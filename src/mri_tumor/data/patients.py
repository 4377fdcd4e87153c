"""The whole-scan layout: one folder per patient, every slice of the stack, tumour masks.

    root/<patient>/<NNN>_<Sequence>.jpg     e.g. 001_T1.jpg, 001_FLAIR.jpg, 001_T1C+.jpg
    root/<patient>/<NNN>_mask.png           the manual tumour mask of slice NNN (white = tumour)
    root/slices.csv                         optional: patient, slice, tumour_pixels, histology

(the layout of the public LGG segmentation set of Buda et al. 2019, TCIA TCGA-LGG). Every
patient has a tumour, so a slice's label comes from its mask, not from the patient:

- a slice whose mask shows tumour is the patient's tumour class (glioma; with the ``types``
  scheme the histology when it is one of the types, else the slice is skipped);
- a slice two or more slices away from every tumour slice is the normal class;
- a slice next to a tumour slice is skipped: the mask was drawn on FLAIR, and a faint edge of
  the lesion, or the partial-volume rim, is often visible on it, so either label is doubtful.

All slices of one patient carry the patient as their ``group``: a split never puts slices of
one patient on two sides.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

# ``001_T1C+.jpg`` -> slice 1, sequence T1C+; ``001_mask.png`` is the mask of slice 1.
SLICE_FILE = re.compile(r"^(?P<slice>\d+)_(?P<sequence>T1C\+|T1|T2|FLAIR|mask)\.(jpe?g|png)$",
                        re.IGNORECASE)
# Slices this close (in slice steps) to a tumour slice, but without tumour, are skipped.
UNCERTAIN_DISTANCE = 1
HISTOLOGY_TYPES = {"astrocytoma": "astrocytoma", "oligodendroglioma": "oligodendroglioma"}


def is_patient_layout(root: Path) -> bool:
    """True when ``root`` holds patient folders with ``NNN_mask.png`` slice masks."""
    for child in sorted(root.iterdir())[:20]:
        if child.is_dir() and any(p.name.lower().endswith("_mask.png")
                                  for p in child.iterdir()):
            return True
    return False


def _slice_table(root: Path) -> dict[tuple[str, int], tuple[int, str]]:
    """(patient, slice) -> (tumour pixels, histology) from ``slices.csv``, if present."""
    table: dict[tuple[str, int], tuple[int, str]] = {}
    path = root / "slices.csv"
    if not path.is_file():
        return table
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            table[(row["patient"], int(row["slice"]))] = (int(row["tumour_pixels"]),
                                                          row.get("histology", ""))
    return table


def _mask_pixels(path: Path) -> int:
    with Image.open(path) as mask:
        return int((np.asarray(mask.convert("L")) > 127).sum())


def patient_slices(root: Path, scheme: str, normal_label: str, tumour_label: str
                   ) -> tuple[list[tuple[Path, str, str, str]], list[tuple[str, str]]]:
    """Labelled slices of a patient-layout folder: ``(path, label, sequence, patient)``
    rows, and the files passed over with the reason (relative path, reason).
    ``tumour_label`` is the classes scheme's label of every patient's tumour."""
    table = _slice_table(root)
    rows: list[tuple[Path, str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()
                              and not p.name.startswith(".")):
        patient = patient_dir.name
        images: dict[int, list[tuple[Path, str]]] = {}
        tumour: dict[int, int] = {}
        histology = ""
        for path in sorted(patient_dir.iterdir()):
            match = SLICE_FILE.match(path.name)
            if match is None:
                skipped.append((f"{patient}/{path.name}", "not a <NNN>_<Sequence> slice file"))
                continue
            number = int(match["slice"])
            if match["sequence"].lower() == "mask":
                known = table.get((patient, number))
                tumour[number] = known[0] if known else _mask_pixels(path)
                histology = (known[1] if known else "") or histology
            else:
                images.setdefault(number, []).append((path, match["sequence"].upper()))
        tumour_slices = sorted(n for n, pixels in tumour.items() if pixels > 0)
        for number, files in sorted(images.items()):
            label: str | None
            reason: str | None
            if number not in tumour:
                label, reason = None, "no mask for this slice"
            elif tumour[number] > 0:
                label = (tumour_label if scheme == "classes"
                         else HISTOLOGY_TYPES.get(histology.lower()))
                reason = None if label else f"histology {histology or 'unknown'} is not a type"
            elif tumour_slices and min(abs(number - t) for t in tumour_slices) \
                    <= UNCERTAIN_DISTANCE:
                label, reason = None, "next to a tumour slice (label uncertain)"
            else:
                label, reason = normal_label, None
            for path, sequence in files:
                if label is None:
                    skipped.append((f"{patient}/{path.name}", str(reason)))
                else:
                    rows.append((path, label, sequence, patient))
    return rows, skipped
