"""Evaluate per scan: whole volumes and series, the answer per scan and per slice position.

Scan folders come in two layouts:

- the patient layout of ``data.patients`` (every slice of each patient, with masks): each
  patient gives one scan per sequence, read as a volume (the JPEG stack is windowed and
  cropped as a NIfTI volume would be), with slice labels from the masks (tumour, clear: two
  or more slices away from the tumour, or next to it);
- ``ROOT/<class>/<scan>``: a NIfTI file or a folder of DICOM files per scan, labelled by its
  class folder (``notumor/healthy_1.nii.gz``).

With a split (``--split``), only the scans of patients on the chosen side are scored: a
patient's group in the split is its folder (patient layout) or ``<class>/<scan name>``.
Research tool, not a diagnosis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mri_tumor.data.folders import PATIENT_TUMOUR_CLASS, source_name
from mri_tumor.data.patients import SLICE_FILE, is_patient_layout, patient_slices
from mri_tumor.data.reading import Frame, read_frames, stack_series
from mri_tumor.data.volume import Volume, axial_slices, is_nifti_name
from mri_tumor.inference.scans import ScanRule, summarise_scan

CLEAR, TUMOUR, NEAR = "clear", "tumour", "near"
# Slices in the outer tenth of a stack at either end are "outer" (skull cap, skull base).
OUTER_SHARE = 0.1
BOOTSTRAP_DRAWS = 2000


@dataclass
class ScanCase:
    """One scan to score: its label and sequence, how to read its frames, slice labels."""

    name: str
    label: str
    sequence: str
    source: str
    group: str
    read: Callable[[], list[Frame]]
    slice_labels: dict[int, str] = field(default_factory=dict)
    stack_size: int = 0


def _stack_frames(paths: list[Path], name: str) -> list[Frame]:
    """A stack of 2-D slice images as one axial volume, through the product's volume path."""
    planes = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths]
    data = np.stack([plane[::-1, ::-1].T for plane in planes], axis=2)  # rows, columns -> RAS
    volume = Volume(data, np.eye(4), name, name)
    return [Frame(f"{name}#{index}", image, name, None, index, name)
            for index, image, _ in axial_slices(volume)]


def patient_cases(root: Path, normal_label: str) -> list[ScanCase]:
    """Every (patient, sequence) stack of a patient-layout folder, as scans."""
    source = source_name(root)
    labelled, _ = patient_slices(root, "classes", normal_label, PATIENT_TUMOUR_CLASS)
    state: dict[tuple[str, int], str] = {}
    for path, label, _, patient in labelled:
        number = int(SLICE_FILE.match(path.name)["slice"])  # type: ignore[index]
        state[(patient, number)] = CLEAR if label == normal_label else TUMOUR
    cases = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        by_sequence: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for path in patient_dir.iterdir():
            match = SLICE_FILE.match(path.name)
            if match and match["sequence"].lower() != "mask":
                by_sequence[match["sequence"].upper()].append((int(match["slice"]), path))
        tumour_label = next((label for _, label, _, p in labelled
                             if p == patient_dir.name and label != normal_label), None)
        for sequence, items in sorted(by_sequence.items()):
            items.sort()
            labels = {k: state.get((patient_dir.name, number), NEAR)
                      for k, (number, _) in enumerate(items)}
            name = f"{patient_dir}/{sequence}"
            paths = [p for _, p in items]
            cases.append(ScanCase(name, tumour_label or normal_label, sequence, source,
                                  patient_dir.name,
                                  partial(_stack_frames, paths, name),
                                  labels, len(items)))
    return cases


def class_folder_cases(root: Path) -> list[ScanCase]:
    """``root/<class>/<scan>`` scans (NIfTI files or DICOM folders), labelled by folder."""
    source = source_name(root)
    cases = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for scan in sorted(class_dir.iterdir()):
            if scan.is_file() and is_nifti_name(scan):
                stem = scan.name.split(".")[0]
                cases.append(ScanCase(str(scan), class_dir.name, "", source,
                                      f"{class_dir.name}/{stem}",
                                      partial(read_frames, scan)))
            elif scan.is_dir():
                files = sorted(p for p in scan.iterdir() if p.is_file())
                cases.append(ScanCase(str(scan), class_dir.name, "", source,
                                      f"{class_dir.name}/{scan.name}",
                                      partial(_series_frames, files)))
    return cases


def find_cases(roots: Sequence[Path], normal_label: str,
               groups: set[tuple[str, str]] | None = None) -> list[ScanCase]:
    """The scans under each root (either layout), optionally only the split groups given."""
    cases: list[ScanCase] = []
    for root in roots:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        found = (patient_cases(root, normal_label) if is_patient_layout(root)
                 else class_folder_cases(root))
        if groups is not None:
            found = [c for c in found if (c.source, c.group) in groups]
        cases.extend(found)
    if not cases:
        raise ValueError(f"no scans found in {', '.join(map(str, roots))}" +
                         (" on this side of the split" if groups is not None else ""))
    return cases


def split_groups(rows: Sequence[Any], subset: str) -> set[tuple[str, str]]:
    """The (source, patient or scan) groups of a split's ``subset`` side."""
    groups = set()
    for row in rows:
        if row.split == subset:
            parts = row.path.split("/")
            groups.add((row.source, parts[0] if len(parts) == 2 else "/".join(parts[:2])))
    return groups


def rule_fitting_groups(rows: Sequence[Any], normal_label: str, side: str = "train",
                        healthy_side: str | None = None) -> set[tuple[str, str]]:
    """The groups whose scans fit a scan rule: the patients of every source with a tumour on
    the split's ``side``, and the scans of every all-normal source (healthy volumes) on
    ``healthy_side`` (``side`` unless given). ``side="val"`` fits the rule out of fold."""
    with_tumour = {row.source for row in rows if row.label != normal_label}
    groups = {g for g in split_groups(rows, side) if g[0] in with_tumour}
    return groups | {g for g in split_groups(rows, healthy_side or side)
                     if g[0] not in with_tumour}


def score_cases(predictor: Any, cases: Sequence[ScanCase], rule: ScanRule | None = None,
                batch_size: int = 64) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per scan: its summary and truth; per slice: tumour probability, status and truth."""
    rule = rule or ScanRule.from_card(predictor.card)
    normal = predictor.card.normal_class
    scans, slices = [], []
    for case in cases:
        frames = case.read()
        results = [r for start in range(0, len(frames), batch_size)
                   for r in predictor.predict_frames(frames[start:start + batch_size])]
        readable = [r for r in results if r.status == "ok"]
        summary = summarise_scan(readable, len(results) - len(readable), rule, normal,
                                 case.name)
        scans.append({"scan": case.name, "truth": case.label, "sequence": case.sequence,
                      "source": case.source, **{k: summary[k] for k in (
                          "status", "label", "probability", "slices", "refused")},
                      "tumour_probability": summary.get("tumour_probability")})
        size = case.stack_size or (max((r.slice_index or 0) for r in results) + 1
                                   if results else 0)
        for result in results:
            index = result.slice_index or 0
            position = index / max(1, size - 1)
            slices.append({
                "scan": case.name, "sequence": case.sequence, "source": case.source,
                "index": index, "truth": case.slice_labels.get(index, ""),
                "case_label": case.label,
                "outer": position < OUTER_SHARE or position > 1 - OUTER_SHARE,
                "status": str(result.status), "label": result.label,
                "p_tumour": (1 - result.probabilities[normal]) if result.probabilities
                and normal in result.probabilities else None})
    return scans, slices


def _share_interval(hits: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """A share with its 90% percentile-bootstrap interval (over the units given)."""
    if len(hits) == 0:
        return {"n": 0, "share": None, "interval": None}
    draws = rng.integers(0, len(hits), (BOOTSTRAP_DRAWS, len(hits)))
    means = hits[draws].mean(axis=1)
    return {"n": len(hits), "share": round(float(hits.mean()), 4),
            "interval": [round(float(np.percentile(means, 5)), 4),
                         round(float(np.percentile(means, 95)), 4)]}


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(scores)
    return round(float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)


def scan_metrics(scans: Sequence[dict[str, Any]], slices: Sequence[dict[str, Any]],
                 normal: str, seed: int = 0) -> dict[str, Any]:
    """Scan-level accuracy per (truth, sequence) with bootstrap intervals over scans, and
    slice-level tumour presence per sequence (where slice labels exist)."""
    rng = np.random.default_rng(seed)
    by_cell: dict[str, list[bool]] = defaultdict(list)
    for scan in scans:
        right = scan["status"] == "ok" and scan["label"] == scan["truth"]
        by_cell[f"{scan['truth']} {scan['sequence'] or 'any sequence'}"].append(right)
        if scan["sequence"]:
            by_cell[f"{scan['truth']} all"].append(right)
    cells = {key: _share_interval(np.array(v, dtype=float), rng)
             for key, v in sorted(by_cell.items())}
    tumour = [s["status"] == "ok" and s["label"] != normal for s in scans if s["truth"] != normal]
    healthy = [s["status"] == "ok" and s["label"] == normal for s in scans if s["truth"] == normal]
    per_sequence: dict[str, Any] = {}
    for sequence in sorted({s["sequence"] for s in slices if s["truth"]}):
        rows = [s for s in slices if s["sequence"] == sequence and s["truth"]]
        ok = [s for s in rows if s["status"] == "ok"]
        tumour_rows = [s for s in ok if s["truth"] == TUMOUR]
        clear_rows = [s for s in ok if s["truth"] == CLEAR]
        labelled = [s for s in ok if s["truth"] in (TUMOUR, CLEAR)]
        central = [s for s in rows if not s["outer"]]
        outer = [s for s in rows if s["outer"]]
        per_sequence[sequence] = {
            "tumour_slices_called_their_class": _share_interval(
                np.array([s["label"] == s["case_label"] for s in tumour_rows], float), rng),
            "clear_slices_called_normal": _share_interval(
                np.array([s["label"] == normal for s in clear_rows], float), rng),
            "tumour_presence_auc": _auc(np.array([s["p_tumour"] for s in labelled]),
                                        np.array([s["truth"] == TUMOUR for s in labelled])),
            "refused_central": _share_interval(
                np.array([s["status"] != "ok" for s in central], float), rng),
            "refused_outer": _share_interval(
                np.array([s["status"] != "ok" for s in outer], float), rng),
        }
    return {"scans": len(scans), "by_truth_and_sequence": cells,
            "sensitivity": _share_interval(np.array(tumour, float), rng),
            "specificity": _share_interval(np.array(healthy, float), rng),
            "slices_by_sequence": per_sequence}


def format_scan_metrics(metrics: dict[str, Any]) -> str:
    """The scan metrics as a short text table."""
    def show(cell: dict[str, Any]) -> str:
        if not cell["n"]:
            return "-"
        low, high = cell["interval"]
        return f"{cell['share']:.1%} [{low:.1%}, {high:.1%}] (n={cell['n']})"

    lines = [f"{metrics['scans']} scans: answer right per truth and sequence (90% interval)"]
    lines += [f"  {key}: {show(cell)}" for key, cell in metrics["by_truth_and_sequence"].items()]
    lines.append(f"  sensitivity (tumour scans called a tumour): {show(metrics['sensitivity'])}")
    lines.append(f"  specificity (normal scans called normal): {show(metrics['specificity'])}")
    for sequence, row in metrics["slices_by_sequence"].items():
        lines.append(f"slices {sequence}: tumour slices called their class "
                     f"{show(row['tumour_slices_called_their_class'])}; clear called "
                     f"normal {show(row['clear_slices_called_normal'])}; AUC "
                     f"{row['tumour_presence_auc']}; refused central "
                     f"{show(row['refused_central'])}, outer {show(row['refused_outer'])}")
    return "\n".join(lines)


def _series_frames(files: list[Path]) -> list[Frame]:
    """The frames of a folder of DICOM files, stacked into their series."""
    return stack_series([frame for path in files for frame in read_frames(path)])
