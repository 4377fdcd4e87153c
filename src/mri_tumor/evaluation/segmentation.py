"""How well the segmentation model outlines tumours: Dice and volume per patient.

Each patient's stack of slices is outlined as a whole (``Segmenter.segment_stack``, the
card's post-processing in 3-D) and compared with the manual masks: the Dice overlap of the
3-D masks, and the outlined volume against the reference (voxel counts; a JPEG stack has no
voxel size, so the volume is compared as a ratio). The summary is the mean over patients
with its bootstrap interval (patients, not slices, are the independent cases).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mri_tumor.card import SPLIT_FILE
from mri_tumor.data.segmentation import MaskedSlice, masked_slices, read_mask, with_neighbours
from mri_tumor.evaluation.intervals import CONFIDENCE, mean_interval

logger = logging.getLogger(__name__)

# A patient's outlined volume is "right" within this share of the reference (issue #35).
VOLUME_TOLERANCE = 0.2


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Dice overlap of two bool masks; 1.0 when both are empty."""
    total = int(predicted.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, reference).sum()) / total


def split_of(model_dir: Path) -> dict[str, str]:
    """Patient -> side (``train`` / ``test``) from a segmentation model's ``split.csv``."""
    path = Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the model folder has no split (which patients it "
                                "was trained on)")
    with path.open(newline="") as handle:
        return {row["patient"]: row["split"] for row in csv.DictReader(handle)}


def score_patient(segmenter: Any, rows: Sequence[MaskedSlice]) -> dict[str, Any]:
    """One patient's Dice and volumes (rows: the patient's slices)."""
    ordered = sorted(rows, key=lambda r: r.number)
    images: list[Any] = []
    for row in ordered:
        channels = [_grey(path) for path in row.channels()]
        images.append(channels[0] if len(channels) == 1 else channels)
    predicted = segmenter.segment_stack(images)
    reference = np.stack([read_mask(r.mask) for r in ordered], axis=-1)
    raw = np.stack(segmenter.probabilities(images), axis=-1) >= segmenter.card.threshold
    ref_voxels, pred_voxels = int(reference.sum()), int(predicted.sum())
    return {"patient": ordered[0].patient, "slices": len(ordered),
            "tumour_slices": int(reference.any(axis=(0, 1)).sum()),
            "dice": round(dice(predicted, reference), 4),
            "dice_without_postprocessing": round(dice(raw, reference), 4),
            "reference_voxels": ref_voxels, "outlined_voxels": pred_voxels,
            "volume_ratio": round(pred_voxels / ref_voxels, 4) if ref_voxels else None}


def _grey(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")


def evaluate_segmentation(segmenter: Any, data_dir: Path, patients: Sequence[str] | None,
                          neighbours: bool = True) -> dict[str, Any]:
    """Per-patient scores and their summary over ``patients`` (None: every patient). A 2.5-D
    model reads each slice with its neighbours, or with ``neighbours=False`` alone, as it
    reads a slice image."""
    rows = masked_slices(Path(data_dir), segmenter.card.sequence, segmenter.card.companions)
    if segmenter.card.neighbours and neighbours:
        rows = with_neighbours(rows, segmenter.card.stack_slices)
    by_patient: dict[str, list[MaskedSlice]] = {}
    for row in rows:
        if patients is None or row.patient in patients:
            by_patient.setdefault(row.patient, []).append(row)
    if missing := sorted(set(patients or []) - by_patient.keys()):
        raise ValueError(f"{data_dir}: {len(missing)} patient(s) of the split are not there "
                         f"(first: {missing[0]})")
    scores = []
    for patient, patient_rows in sorted(by_patient.items()):
        scores.append(score_patient(segmenter, patient_rows))
        logger.info("%s: Dice %.3f", patient, scores[-1]["dice"])
    dices = [s["dice"] for s in scores]
    with_tumour = [s for s in scores if s["reference_voxels"]]
    within = [abs(s["volume_ratio"] - 1) <= VOLUME_TOLERANCE for s in with_tumour]
    return {
        "patients": len(scores), "slices": sum(s["slices"] for s in scores),
        "mean_dice": round(float(np.mean(dices)), 4) if dices else None,
        "mean_dice_interval": mean_interval(dices),
        "median_dice": round(float(np.median(dices)), 4) if dices else None,
        "mean_dice_without_postprocessing": round(float(np.mean(
            [s["dice_without_postprocessing"] for s in scores])), 4) if scores else None,
        "volume_within_20_percent": round(float(np.mean(within)), 4) if within else None,
        "volume_tolerance": VOLUME_TOLERANCE,
        "interval": f"{CONFIDENCE:.0%} percentile bootstrap over patients",
        "per_patient": scores,
    }


def format_segmentation_metrics(metrics: dict[str, Any]) -> str:
    """The evaluation as a short table for people."""
    interval = metrics["mean_dice_interval"]
    lines = [f"{metrics['patients']} patients, {metrics['slices']} slices",
             f"mean Dice per patient: {metrics['mean_dice']:.3f}"
             + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
             + f" (median {metrics['median_dice']:.3f}; without post-processing "
               f"{metrics['mean_dice_without_postprocessing']:.3f})"]
    if metrics["volume_within_20_percent"] is not None:
        lines.append(f"outlined volume within {metrics['volume_tolerance']:.0%} of the "
                     f"reference: {metrics['volume_within_20_percent']:.0%} of patients")
    lines.append("")
    lines.append(f"{'patient':<26} {'slices':>6} {'tumour':>6} {'Dice':>6} {'volume':>7}")
    for s in metrics["per_patient"]:
        ratio = f"{s['volume_ratio']:.2f}x" if s["volume_ratio"] is not None else "-"
        lines.append(f"{s['patient']:<26} {s['slices']:>6} {s['tumour_slices']:>6} "
                     f"{s['dice']:>6.3f} {ratio:>7}")
    return "\n".join(lines) + "\n"
