"""Two models on the same labelled images: paired differences with bootstrap intervals.

``mri-tumor evaluate --out REPORT`` writes each image's probabilities to
``REPORT/predictions.csv``; this module reads two such files (one per model, same images),
and tells per source whether the models differ by more than the images' sampling noise: the
accuracy and ECE of each, the images only one of them gets right, and a paired bootstrap
interval for each difference (both models scored on the same resampled images, so what the
images have in common cancels out). A difference whose interval holds 0 is within noise.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from mri_tumor.columns import PROBABILITY_PREFIX, column_key
from mri_tumor.evaluation.report import PREDICTIONS_FILE
from mri_tumor.metrics import expected_calibration_error

ALL_IMAGES = "all"


@dataclass(frozen=True)
class PredictionTable:
    """One model's calibrated probabilities on labelled images, as ``evaluate`` wrote them."""

    paths: list[str]
    labels: np.ndarray  # class index of each image's true label
    probabilities: np.ndarray  # images x classes
    sources: list[str]
    class_names: list[str]  # the key of each class (``columns.column_key``), column order
    sequences: list[str] | None = None  # MR sequence where the folder names say it, else ""


@dataclass(frozen=True)
class GroupComparison:
    """Model A against model B on one group of images: all of them, one source
    (``source:NAME``) or one MR sequence (``sequence:NAME``), named as in ``evaluate``'s
    ``by_group``."""

    name: str
    n: int
    accuracy_a: float
    accuracy_b: float
    right_only_a: int
    right_only_b: int
    accuracy_difference: float  # B - A
    accuracy_difference_interval: tuple[float, float] | None  # None: under 2 images
    ece_a: float
    ece_b: float
    ece_difference: float  # B - A
    ece_difference_interval: tuple[float, float] | None

    def to_json(self) -> dict:
        return asdict(self)


def report_file(path: Path, name: str, how: str) -> Path:
    """``path`` itself, or ``path/name`` for a report folder; FileNotFoundError saying ``how``
    such a file is written when there is none."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {name} here (write one with `{how}`)")
    return file


def read_predictions(path: Path) -> PredictionTable:
    """Read ``predictions.csv`` from a report folder (or the file itself).

    Raises FileNotFoundError or ValueError with a message that names the file."""
    csv_path = report_file(path, PREDICTIONS_FILE, "mri-tumor evaluate ... --out FOLDER")
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns, rows = list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{csv_path}: not a readable CSV file ({error})") from None
    # The probability columns, by the key of their class: ``p_carcinoma_metastasis`` as
    # ``evaluate`` writes it now, and ``p_carcinoma (metastasis)`` as it wrote it before.
    probability_columns = {column_key(c.removeprefix(PROBABILITY_PREFIX)): c for c in columns
                           if c.startswith(PROBABILITY_PREFIX)}
    class_names = list(probability_columns)
    missing = [c for c in ("path", "true_label", "source") if c not in columns]
    if missing or not class_names or not rows:
        problem = ("no column " + ", ".join(missing or ["p_<class>"]) if missing or not
                   class_names else "no images")
        raise ValueError(f"{csv_path}: not a predictions file of `mri-tumor evaluate` "
                         f"({problem})")
    labels = sorted({row["true_label"] for row in rows})
    keys: dict[str, str] = {}
    for label in labels:
        if (other := keys.setdefault(column_key(label), label)) != label:
            raise ValueError(f"{csv_path}: the classes {other!r} and {label!r} have the same "
                             "column key, so their probabilities cannot be told apart")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [label for label in labels if column_key(label) not in index]
    if unknown:
        raise ValueError(f"{csv_path}: true labels without a probability column: "
                         f"{', '.join(unknown)}")
    try:
        probabilities = np.array([[float(row[probability_columns[key]]) for key in class_names]
                                  for row in rows])
    except ValueError as error:
        raise ValueError(f"{csv_path}: a probability is not a number ({error})") from None
    paths = [row["path"] for row in rows]
    if len(set(paths)) < len(paths):
        raise ValueError(f"{csv_path}: some image paths appear more than once, so the rows "
                         "cannot be matched with another report's")
    return PredictionTable(paths=paths,
                           labels=np.array([index[column_key(row["true_label"])]
                                            for row in rows]),
                           probabilities=probabilities,
                           sources=[row["source"] for row in rows], class_names=class_names,
                           sequences=[row.get("sequence") or "" for row in rows])


def align(a: PredictionTable, b: PredictionTable) -> PredictionTable:
    """B's rows in A's order; ValueError unless both hold the same images, labels and classes."""
    if a.class_names != b.class_names:
        raise ValueError(f"the two reports score different classes ({', '.join(a.class_names)} "
                         f"vs {', '.join(b.class_names)})")
    only_a, only_b = set(a.paths) - set(b.paths), set(b.paths) - set(a.paths)
    if only_a or only_b or len(a.paths) != len(b.paths):
        example = sorted(only_a or only_b or [""])[0]
        raise ValueError(f"the two reports hold different images ({len(only_a)} only in the "
                         f"first, {len(only_b)} only in the second, e.g. {example!r}); score "
                         "both models on the same folders and split")
    row_of = {path: i for i, path in enumerate(b.paths)}
    order = np.array([row_of[path] for path in a.paths])
    if not np.array_equal(a.labels, b.labels[order]):
        raise ValueError("the two reports give some images different true labels")
    return PredictionTable(paths=list(a.paths), labels=b.labels[order],
                           probabilities=b.probabilities[order],
                           sources=[b.sources[i] for i in order], class_names=b.class_names,
                           sequences=None if b.sequences is None
                           else [b.sequences[i] for i in order])


def paired_interval(statistic, n: int, resamples: int, confidence: float,
                    seed: int) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(indices)`` over resampled image indices
    (None for fewer than two images)."""
    if n < 2:
        return None
    result = bootstrap((np.arange(n),), lambda idx: statistic(idx.astype(int)),
                       vectorized=False, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def compare_group(name: str, a: PredictionTable, b: PredictionTable, rows: np.ndarray,
                  resamples: int = 2000, confidence: float = 0.9,
                  seed: int = 0) -> GroupComparison:
    """Compare A and B (aligned) on the images ``rows``."""
    labels = a.labels[rows]
    prob_a, prob_b = a.probabilities[rows], b.probabilities[rows]
    right_a = prob_a.argmax(axis=1) == labels
    right_b = prob_b.argmax(axis=1) == labels

    def accuracy_difference(idx: np.ndarray) -> float:
        return float(right_b[idx].mean() - right_a[idx].mean())

    def ece_difference(idx: np.ndarray) -> float:
        return (expected_calibration_error(prob_b[idx], labels[idx])
                - expected_calibration_error(prob_a[idx], labels[idx]))

    everything = np.arange(len(rows))
    ece_a = expected_calibration_error(prob_a, labels)
    ece_b = expected_calibration_error(prob_b, labels)
    return GroupComparison(
        name=name, n=len(rows), accuracy_a=float(right_a.mean()),
        accuracy_b=float(right_b.mean()), right_only_a=int((right_a & ~right_b).sum()),
        right_only_b=int((right_b & ~right_a).sum()),
        accuracy_difference=accuracy_difference(everything),
        accuracy_difference_interval=paired_interval(accuracy_difference, len(rows),
                                                     resamples, confidence, seed),
        ece_a=ece_a, ece_b=ece_b, ece_difference=ece_b - ece_a,
        ece_difference_interval=paired_interval(ece_difference, len(rows), resamples,
                                                confidence, seed))


def compare(a: PredictionTable, b: PredictionTable, resamples: int = 2000,
            confidence: float = 0.9, seed: int = 0) -> list[GroupComparison]:
    """A against B on all images, then on each source (when there is more than one) and
    each MR sequence (where model A's report gives it)."""
    b = align(a, b)
    if len(a.paths) < 2:
        raise ValueError("a comparison needs at least two images")
    groups = {ALL_IMAGES: np.arange(len(a.paths))}
    for kind, values in (("source", a.sources), ("sequence", a.sequences or [])):
        names = sorted(set(values) - {""})
        if kind == "sequence" or len(names) > 1:
            groups |= {f"{kind}:{name}": np.flatnonzero(np.array(values) == name)
                       for name in names}
    return [compare_group(name, a, b, rows, resamples, confidence, seed)
            for name, rows in groups.items()]


def format_comparison(groups: list[GroupComparison], name_a: str, name_b: str,
                      confidence: float) -> str:
    """A Markdown table of ``compare``'s result and one line on how to read it."""
    level = f"{confidence:.0%}"
    lines = [f"A: {name_a}", f"B: {name_b}", "",
             f"| images | n | accuracy A | accuracy B | B - A ({level} interval) | right only "
             f"by A / by B | ECE A | ECE B | B - A ({level} interval) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(
            f"| {g.name} | {g.n} | {g.accuracy_a:.1%} | {g.accuracy_b:.1%} | "
            f"{_difference(g.accuracy_difference, g.accuracy_difference_interval, '+.1%')} | "
            f"{g.right_only_a} / {g.right_only_b} | {g.ece_a:.3f} | {g.ece_b:.3f} | "
            f"{_difference(g.ece_difference, g.ece_difference_interval, '+.3f')} |")
    lines += ["", f"Paired bootstrap over the images ({level}): a difference whose interval "
              "holds 0 is within what these images can tell apart."]
    return "\n".join(lines)


def _difference(value: float, interval: tuple[float, float] | None, spec: str) -> str:
    if interval is None:
        return f"{value:{spec}} (one image: no interval)"
    return f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]"
