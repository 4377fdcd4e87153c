"""Two models' scan answers on the same scans: paired differences with bootstrap intervals.

``mri-tumor evaluate --scans ... --out REPORT`` writes each scan's answer to
``REPORT/scans.json``. This module reads two such reports (one per model, same scans) and says
whether the models' scan answers differ by more than the scans' sampling noise, as
``evaluation.comparison`` does for images: per group (all scans, each true class, each true
class and MR sequence), how many scans each answers right, the scans only one of them gets
right, and a paired bootstrap interval of the difference. A scan is answered right when its
status is ``ok`` and its label is the truth; a scan ``not_assessable`` is not right.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mri_tumor.evaluation.comparison import paired_interval, report_file

SCANS_FILE = "scans.json"
ALL_SCANS = "all"


@dataclass(frozen=True)
class ScanAnswers:
    """One model's answers on labelled scans, as ``evaluate --scans`` wrote them."""

    scans: list[str]
    truths: list[str]
    sequences: list[str]  # "" where the layout does not name one
    right: np.ndarray  # bool per scan


@dataclass(frozen=True)
class ScanGroupComparison:
    """Model A against model B on one group of scans."""

    name: str
    n: int
    right_a: int
    right_b: int
    right_only_a: int
    right_only_b: int
    difference: float  # share right by B - share right by A
    difference_interval: tuple[float, float] | None  # None: under 2 scans

    def to_json(self) -> dict:
        return asdict(self)


def has_scan_report(path: Path) -> bool:
    """Whether ``path`` is a ``scans.json`` or a folder holding one."""
    path = Path(path)
    return (path.name == SCANS_FILE and path.is_file()) or (path / SCANS_FILE).is_file()


def read_scan_answers(path: Path) -> ScanAnswers:
    """Read ``scans.json`` from a report folder (or the file itself).

    Raises FileNotFoundError or ValueError with a message that names the file."""
    json_path = report_file(path, SCANS_FILE, "mri-tumor evaluate --scans ... --out FOLDER")
    try:
        scans = json.loads(json_path.read_text(encoding="utf-8"))["scans"]
        names = [str(scan["scan"]) for scan in scans]
        truths = [str(scan["truth"]) for scan in scans]
        right = np.array([scan.get("status") == "ok" and scan.get("label") == scan["truth"]
                          for scan in scans], dtype=bool)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{json_path}: not a scan report of `mri-tumor evaluate --scans` "
                         f"({type(error).__name__}: {error})") from None
    if not scans:
        raise ValueError(f"{json_path}: the report holds no scans")
    if len(set(names)) < len(names):
        raise ValueError(f"{json_path}: some scans appear more than once, so they cannot be "
                         "matched with another report's")
    return ScanAnswers(scans=names, truths=truths, right=right,
                       sequences=[str(scan.get("sequence") or "") for scan in scans])


def align_scans(a: ScanAnswers, b: ScanAnswers) -> ScanAnswers:
    """B's scans in A's order; ValueError unless both hold the same scans and truths."""
    only_a, only_b = set(a.scans) - set(b.scans), set(b.scans) - set(a.scans)
    if only_a or only_b:
        example = sorted(only_a or only_b)[0]
        raise ValueError(f"the two reports hold different scans ({len(only_a)} only in the "
                         f"first, {len(only_b)} only in the second, e.g. {example!r}); score "
                         "both models on the same folders, split and subset")
    row_of = {scan: i for i, scan in enumerate(b.scans)}
    order = [row_of[scan] for scan in a.scans]
    if [b.truths[i] for i in order] != a.truths:
        raise ValueError("the two reports give some scans different true labels")
    return ScanAnswers(scans=list(a.scans), truths=list(a.truths),
                       sequences=list(a.sequences), right=b.right[order])


def compare_scan_answers(a: ScanAnswers, b: ScanAnswers, resamples: int = 2000,
                         confidence: float = 0.9, seed: int = 0) -> list[ScanGroupComparison]:
    """A against B on all scans, on each true class, and on each true class and sequence."""
    b = align_scans(a, b)
    if len(a.scans) < 2:
        raise ValueError("a comparison needs at least two scans")
    truths, sequences = np.array(a.truths), np.array(a.sequences)
    groups = {ALL_SCANS: np.arange(len(a.scans))}
    for truth in sorted(set(a.truths)):
        groups[f"truth:{truth}"] = np.flatnonzero(truths == truth)
        for sequence in sorted(set(sequences[truths == truth]) - {""}):
            groups[f"truth:{truth} sequence:{sequence}"] = np.flatnonzero(
                (truths == truth) & (sequences == sequence))
    compared = []
    for name, rows in groups.items():
        right_a, right_b = a.right[rows], b.right[rows]

        def difference(idx: np.ndarray, right_a=right_a, right_b=right_b) -> float:
            return float(right_b[idx].mean() - right_a[idx].mean())

        compared.append(ScanGroupComparison(
            name=name, n=len(rows), right_a=int(right_a.sum()), right_b=int(right_b.sum()),
            right_only_a=int((right_a & ~right_b).sum()),
            right_only_b=int((right_b & ~right_a).sum()),
            difference=difference(np.arange(len(rows))),
            difference_interval=paired_interval(difference, len(rows), resamples,
                                                confidence, seed)))
    return compared


def format_scan_comparison(groups: list[ScanGroupComparison], name_a: str, name_b: str,
                           confidence: float) -> str:
    """A Markdown table of ``compare_scan_answers``' result and one line on how to read it."""
    level = f"{confidence:.0%}"
    lines = [f"A: {name_a}", f"B: {name_b}", "",
             f"| scans | n | right by A | right by B | B - A ({level} interval) | right only "
             "by A / by B |", "|---|---|---|---|---|---|"]
    for g in groups:
        interval = ("(one scan: no interval)" if g.difference_interval is None else
                    f"[{g.difference_interval[0]:+.1%}, {g.difference_interval[1]:+.1%}]")
        lines.append(f"| {g.name} | {g.n} | {g.right_a} ({g.right_a / g.n:.1%}) | {g.right_b} "
                     f"({g.right_b / g.n:.1%}) | {g.difference:+.1%} {interval} | "
                     f"{g.right_only_a} / {g.right_only_b} |")
    lines += ["", f"Paired bootstrap over the scans ({level}): a difference whose interval "
              "holds 0 is within what these scans can tell apart. A scan is right when its "
              "answer is its true class (not assessable: not right)."]
    return "\n".join(lines)
