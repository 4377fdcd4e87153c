"""Two segmentation models on the same patients: the paired Dice difference and its interval.

``mri-tumor evaluate-segmenter DATA --out REPORT`` writes each patient's Dice and outlined
volume to ``REPORT/segmentation.json``. This module reads two such reports (one per model,
same patients) and says whether the mean per-patient Dice differs by more than the patients'
sampling noise (a paired bootstrap over patients), how many patients each model outlines
better, and for how many each model's volume lies within the tolerance of the reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor.evaluation.comparison import paired_interval, report_file

SEGMENTATION_FILE = "segmentation.json"


@dataclass(frozen=True)
class PatientScores:
    """One model's per-patient scores, as ``evaluate-segmenter --out`` wrote them."""

    patients: list[str]
    dice: np.ndarray
    volume_ratio: np.ndarray  # nan where the reference is empty
    tolerance: float


@dataclass(frozen=True)
class SegmentationComparison:
    """Model A against model B on the same patients."""

    patients: int
    mean_dice_a: float
    mean_dice_b: float
    difference: float  # mean Dice of B - mean Dice of A
    difference_interval: tuple[float, float] | None  # None: under 2 patients
    better_a: int
    better_b: int
    volume_within_a: int
    volume_within_b: int
    volume_tolerance: float
    per_patient: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def has_segmentation_report(path: Path) -> bool:
    """Whether ``path`` is a ``segmentation.json`` or a folder holding one."""
    path = Path(path)
    return ((path.name == SEGMENTATION_FILE and path.is_file())
            or (path / SEGMENTATION_FILE).is_file())


def read_patient_scores(path: Path) -> PatientScores:
    """Read ``segmentation.json`` from a report folder (or the file itself).

    Raises FileNotFoundError or ValueError with a message that names the file."""
    json_path = report_file(path, SEGMENTATION_FILE,
                            "mri-tumor evaluate-segmenter ... --out FOLDER")
    try:
        report = json.loads(json_path.read_text(encoding="utf-8"))
        rows = report["per_patient"]
        patients = [str(row["patient"]) for row in rows]
        dice = np.array([float(row["dice"]) for row in rows])
        ratio = np.array([np.nan if row.get("volume_ratio") is None
                          else float(row["volume_ratio"]) for row in rows])
        tolerance = float(report["volume_tolerance"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{json_path}: not a report of `mri-tumor evaluate-segmenter` "
                         f"({type(error).__name__}: {error})") from None
    if not patients:
        raise ValueError(f"{json_path}: the report holds no patients")
    if len(set(patients)) < len(patients):
        raise ValueError(f"{json_path}: some patients appear more than once")
    return PatientScores(patients, dice, ratio, tolerance)


def compare_segmentations(a: PatientScores, b: PatientScores, resamples: int = 2000,
                          confidence: float = 0.9, seed: int = 0) -> SegmentationComparison:
    """A against B on their common patients; ValueError unless both hold the same ones."""
    if set(a.patients) != set(b.patients):
        only = sorted(set(a.patients) ^ set(b.patients))
        raise ValueError(f"the two reports hold different patients ({len(only)} in one only, "
                         f"e.g. {only[0]!r}); score both models on the same data and side")
    row_of = {patient: i for i, patient in enumerate(b.patients)}
    order = [row_of[patient] for patient in a.patients]
    dice_a, dice_b = a.dice, b.dice[order]
    ratio_a, ratio_b = a.volume_ratio, b.volume_ratio[order]
    tolerance = a.tolerance

    def difference(idx: np.ndarray) -> float:
        return float(dice_b[idx].mean() - dice_a[idx].mean())

    def within(ratio: np.ndarray) -> np.ndarray:
        return np.abs(np.nan_to_num(ratio, nan=np.inf) - 1) <= tolerance

    return SegmentationComparison(
        patients=len(a.patients), mean_dice_a=float(dice_a.mean()),
        mean_dice_b=float(dice_b.mean()), difference=difference(np.arange(len(dice_a))),
        difference_interval=paired_interval(difference, len(dice_a), resamples, confidence,
                                            seed),
        better_a=int((dice_a > dice_b).sum()), better_b=int((dice_b > dice_a).sum()),
        volume_within_a=int(within(ratio_a).sum()), volume_within_b=int(within(ratio_b).sum()),
        volume_tolerance=tolerance,
        per_patient=[{"patient": p, "dice_a": float(da), "dice_b": float(db),
                      "volume_ratio_a": None if np.isnan(ra) else float(ra),
                      "volume_ratio_b": None if np.isnan(rb) else float(rb)}
                     for p, da, db, ra, rb in zip(a.patients, dice_a, dice_b, ratio_a,
                                                  ratio_b, strict=True)])


def format_segmentation_comparison(result: SegmentationComparison, name_a: str, name_b: str,
                                   confidence: float) -> str:
    """A Markdown table of ``compare_segmentations``' result and how to read it."""
    level = f"{confidence:.0%}"
    interval = ("(one patient: no interval)" if result.difference_interval is None else
                f"[{result.difference_interval[0]:+.3f}, {result.difference_interval[1]:+.3f}]")
    lines = [f"A: {name_a}", f"B: {name_b}", "",
             "| patient | Dice A | Dice B | B - A | volume / reference A | B |",
             "|---|---|---|---|---|---|"]
    for row in result.per_patient:
        ratios = [("-" if r is None else f"{r:.2f}")
                  for r in (row["volume_ratio_a"], row["volume_ratio_b"])]
        lines.append(f"| {row['patient']} | {row['dice_a']:.3f} | {row['dice_b']:.3f} | "
                     f"{row['dice_b'] - row['dice_a']:+.3f} | {ratios[0]} | {ratios[1]} |")
    lines += ["", f"{result.patients} patients: mean Dice A {result.mean_dice_a:.3f}, B "
              f"{result.mean_dice_b:.3f}; B - A {result.difference:+.3f} {interval} ({level} "
              f"paired bootstrap over patients); better: A {result.better_a}, B "
              f"{result.better_b}; volume within {result.volume_tolerance:.0%} of the "
              f"reference: A {result.volume_within_a}, B {result.volume_within_b}.",
              "A difference whose interval holds 0 is within what these patients can tell "
              "apart."]
    return "\n".join(lines)
