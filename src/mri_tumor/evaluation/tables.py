"""The tables and headlines of an evaluation, as Markdown (``report.md``) or aligned text (the
console summary), with the bootstrap intervals where there are some."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def display_names(names: Sequence[str], display: Mapping[str, str] | None) -> list[str]:
    """Class names as the model card shows them to people."""
    return [(display or {}).get(name, name) for name in names]


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def metrics_rows(result: dict[str, Any], class_names: Sequence[str],
                 display: Mapping[str, str] | None = None) -> list[list[str]]:
    """Classification-report rows: header, one row per class, macro and weighted averages."""
    rows = [["class", "precision", "recall", "F1", "support", "ROC AUC"]]
    for name in class_names:
        scores = result["per_class"][name]
        rows.append([*display_names([name], display), number(scores["precision"]),
                     number(scores["recall"]), number(scores["f1"]), str(scores["support"]),
                     number(result["auc"][name])])
    for key, label in (("macro_avg", "macro average"), ("weighted_avg", "weighted average")):
        average = result[key]
        if average is None:
            continue
        rows.append([label, number(average["precision"]), number(average["recall"]),
                     number(average["f1"]), str(int(average["support"])), ""])
    return rows


def confusion_rows(result: dict[str, Any], class_names: Sequence[str],
                   display: Mapping[str, str] | None = None) -> list[list[str]]:
    """Confusion-matrix rows: true class down, predicted class across."""
    labels = display_names(class_names, display)
    rows = [["true \\ predicted", *labels]]
    rows += [[label, *map(str, counts)]
             for label, counts in zip(labels, result["confusion_matrix"], strict=True)]
    return rows


def sequence_headline(sequence: dict[str, Any]) -> str:
    return (f"MR sequence (second head), {sequence['n']} images: accuracy "
            f"{number(sequence['accuracy'])}, ECE {number(sequence['ece'])}; confusion "
            "matrix (rows = true sequence):")


def sequence_rows(sequence: dict[str, Any]) -> list[list[str]]:
    """The sequence head's confusion matrix: true sequence down, predicted across."""
    names = sequence["classes"]
    return [["true \\ predicted", *names],
            *[[name, *map(str, counts)]
              for name, counts in zip(names, sequence["confusion_matrix"], strict=True)]]


def _looks_numeric(cell: str) -> bool:
    return cell in ("", "-") or cell.lstrip("+-").rstrip("%").replace(".", "", 1).isdigit()


STRESS_LABELS = {
    "histogram_swap_other_class": "histogram of an image of another class",
    "histogram_swap_same_class": "histogram of another image of the same class (control)",
    "gamma_0.5": "gamma 0.5 (brighter)",
    "gamma_2.0": "gamma 2.0 (darker)",
    "flip": "left-right mirror",
    "half_resolution": "half the resolution",
}


def group_rows(by_group: dict[str, dict[str, Any]],
               intervals: Mapping[str, Mapping[str, Any]] | None = None) -> list[list[str]]:
    """Per-source and per-sequence rows: group, n, accuracy, macro-F1, each with its interval
    when ``intervals`` (group -> the group's intervals) are given."""
    rows = [["group", "n", "accuracy", "macro-F1"]]
    rows += [[name, str(v["n"]),
              with_interval(v["accuracy"], (intervals or {}).get(name, {}).get("accuracy")),
              with_interval(v["macro_f1"], (intervals or {}).get(name, {}).get("macro_f1"))]
             for name, v in by_group.items()]
    return rows


def cell_rows(by_cell: list[dict[str, Any]],
              display: Mapping[str, str] | None = None) -> list[list[str]]:
    """Source x sequence x class rows: the accuracy there is the class's recall."""
    rows = [["source", "sequence", "class", "n", "accuracy"]]
    rows += [[f"`{c['source']}`", c["sequence"] or "-", *display_names([c["class"]], display),
              str(c["n"]), number(c["accuracy"])] for c in by_cell]
    return rows


def stress_rows(stress: dict[str, Any]) -> list[list[str]]:
    """Accuracy per perturbation, and its change from the unperturbed images."""
    base = stress["unperturbed"]
    rows = [["images", "accuracy", "change"], ["as given", number(base), ""]]
    for key, label in STRESS_LABELS.items():
        value = stress.get(key)
        change = "-" if value is None or base is None else f"{value - base:+.4f}"
        rows.append([label, number(value), change])
    return rows


def stress_subset(stress: dict[str, Any]) -> str:
    return (f"the {stress['n']} leak-free images (no duplicate in training)"
            if stress["subset"] == "leak_free" else f"all {stress['n']} images")


def render_table(rows: list[list[str]], markdown: bool) -> str:
    """A Markdown table, or an aligned plain-text one for the console."""
    if markdown:
        numeric = [i > 0 and all(_looks_numeric(row[i]) for row in rows[1:])
                   for i in range(len(rows[0]))]
        lines = ["| " + " | ".join(rows[0]) + " |",
                 "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip() for row in rows)


def with_interval(value: float | None, interval: Sequence[float] | None) -> str:
    """``0.9667 [0.9551, 0.9768]``; the value alone without an interval."""
    if interval is None or value is None:
        return number(value)
    return f"{number(value)} [{number(interval[0])}, {number(interval[1])}]"


def headline(result: dict[str, Any], intervals: Mapping[str, Any] | None = None) -> str:
    """Accuracy, macro-F1 and ECE in a line, with their intervals when given."""
    def value(key: str) -> str:
        return with_interval(result[key], (intervals or {}).get(key))

    return (f"accuracy {value('accuracy')}, macro-F1 {value('macro_f1')}, ECE {value('ece')} "
            f"(before calibration {number(result['ece_uncalibrated'])})")


def interval_note(intervals: Mapping[str, Any] | None) -> str | None:
    """What the brackets mean (None: no intervals)."""
    if intervals is None:
        return None
    return (f"[low, high]: {intervals['confidence']:.0%} {intervals['method']} "
            f"({intervals['resamples']} resamples, seed {intervals['seed']}). The images are "
            "taken as independent; slices of one patient are not, so the true uncertainty is "
            "somewhat larger.")
