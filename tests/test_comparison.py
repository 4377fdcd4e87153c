"""`mri-tumor compare`: paired differences between two models' predictions on the same images,
checked against counts made by hand, and its refusals of reports that do not match."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import FIXTURE_IMAGES, run_cli

from mri_tumor.card import DISCLAIMER
from mri_tumor.evaluation.comparison import (
    ALL_IMAGES,
    PredictionTable,
    align,
    compare,
    read_predictions,
)
from mri_tumor.evaluation.report import PREDICTIONS_FILE
from mri_tumor.metrics import expected_calibration_error

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
FIXTURE_TYPES = FIXTURE_IMAGES.parent / "types"  # '<Type> <Sequence>' layout


def table(labels: np.ndarray, predicted: np.ndarray, confidence: float = 0.9,
          sources: list[str] | None = None) -> PredictionTable:
    """Images whose top class is ``predicted`` at ``confidence``, the rest spread evenly."""
    n = len(labels)
    probabilities = np.full((n, len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1))
    probabilities[np.arange(n), predicted] = confidence
    return PredictionTable(paths=[f"img{i}.png" for i in range(n)], labels=np.asarray(labels),
                           probabilities=probabilities,
                           sources=sources or ["one"] * n, class_names=list(CLASSES))


def wrong(labels: np.ndarray) -> np.ndarray:
    return (labels + 1) % len(CLASSES)


def test_differences_and_counts_match_a_hand_count() -> None:
    labels = np.arange(100) % 4
    sources = ["kaggle"] * 60 + ["teaching"] * 40
    predicted_a = labels.copy()
    predicted_a[80:] = wrong(labels[80:])  # A: 80 right
    predicted_b = labels.copy()
    predicted_b[90:] = wrong(labels[90:])  # B: the same 80 and images 80-89 too
    groups = {g.name: g for g in compare(table(labels, predicted_a, sources=sources),
                                         table(labels, predicted_b, sources=sources))}
    assert list(groups) == [ALL_IMAGES, "source:kaggle", "source:teaching"]
    everything = groups[ALL_IMAGES]
    assert (everything.n, everything.accuracy_a, everything.accuracy_b) == (100, 0.8, 0.9)
    assert (everything.right_only_a, everything.right_only_b) == (0, 10)
    assert everything.accuracy_difference == pytest.approx(0.1)
    low, high = everything.accuracy_difference_interval
    assert 0 < low < 0.1 < high  # B is right on a superset: no resample makes it worse
    # Images 80-99 are all teaching files: the Kaggle part is identical for both models.
    kaggle, teaching = groups["source:kaggle"], groups["source:teaching"]
    assert (kaggle.n, kaggle.accuracy_difference, kaggle.accuracy_difference_interval) == (
        60, 0.0, (0.0, 0.0))
    assert (teaching.n, teaching.right_only_b) == (40, 10)
    assert teaching.accuracy_difference == pytest.approx(0.25)


def test_sequences_are_groups_of_their_own_where_known() -> None:
    labels = np.arange(12) % 4
    predicted_b = labels.copy()
    predicted_b[[0, 1]] = wrong(labels[[0, 1]])  # both T2 images of the teaching files
    sources = ["teaching"] * 6 + ["kaggle"] * 6
    sequences = ["T2", "T2", "T1", "T1", "T1", "T1"] + [""] * 6  # Kaggle: not given
    a = dataclasses.replace(table(labels, labels, sources=sources), sequences=sequences)
    b = dataclasses.replace(table(labels, predicted_b, sources=sources), sequences=sequences)
    groups = {g.name: g for g in compare(a, b)}
    assert list(groups) == [ALL_IMAGES, "source:kaggle", "source:teaching", "sequence:T1",
                            "sequence:T2"]
    assert (groups["sequence:T2"].n, groups["sequence:T2"].right_only_a) == (2, 2)
    assert (groups["sequence:T1"].n, groups["sequence:T1"].accuracy_difference) == (4, 0.0)


def test_a_group_of_one_image_has_no_interval() -> None:
    labels = np.arange(6) % 4
    sequences = ["T1"] * 5 + ["T2"]
    a = dataclasses.replace(table(labels, labels), sequences=sequences)
    groups = {g.name: g for g in compare(a, a)}
    assert groups["sequence:T2"].n == 1
    assert groups["sequence:T2"].accuracy_difference_interval is None
    assert groups["sequence:T1"].accuracy_difference_interval == (0.0, 0.0)
    json.dumps([g.to_json() for g in groups.values()], allow_nan=False)  # strict JSON


def test_ece_is_the_metric_of_the_evaluation() -> None:
    labels = np.arange(400) % 4
    predicted = labels.copy()
    predicted[:100] = wrong(labels[:100])  # 75% right at 90% confidence: ECE 0.15
    a, b = table(labels, predicted, confidence=0.9), table(labels, predicted, confidence=0.75)
    [group] = compare(a, b)
    assert group.ece_a == pytest.approx(expected_calibration_error(a.probabilities, labels))
    assert group.ece_a == pytest.approx(0.15)
    assert group.ece_b == pytest.approx(0.0)
    assert group.ece_difference == pytest.approx(-0.15)
    assert group.accuracy_difference == 0.0  # same answers, other confidence
    # On a resample B's ECE is |accuracy - 0.75| and A's |accuracy - 0.9|; with 400 images
    # the accuracy stays near 0.75, so B stays the better calibrated.
    assert group.ece_difference_interval[1] < 0


def test_a_swap_of_errors_is_within_noise() -> None:
    labels = np.arange(200) % 4
    predicted_a, predicted_b = labels.copy(), labels.copy()
    predicted_a[:10] = wrong(labels[:10])
    predicted_b[10:20] = wrong(labels[10:20])
    [group] = compare(table(labels, predicted_a), table(labels, predicted_b))
    assert (group.right_only_a, group.right_only_b, group.accuracy_difference) == (10, 10, 0.0)
    low, high = group.accuracy_difference_interval
    assert low < 0 < high and high - low > 0.02


def test_rows_are_matched_by_path_not_by_order() -> None:
    labels = np.arange(30) % 4
    predicted = labels.copy()
    predicted[:5] = wrong(labels[:5])
    a = table(labels, predicted)
    order = np.random.default_rng(0).permutation(30)
    b = PredictionTable(paths=[a.paths[i] for i in order], labels=labels[order],
                        probabilities=a.probabilities[order], sources=a.sources,
                        class_names=a.class_names)
    assert np.array_equal(align(a, b).probabilities, a.probabilities)
    [group] = compare(a, b)
    assert (group.right_only_a, group.right_only_b, group.accuracy_difference) == (0, 0, 0.0)


@pytest.mark.parametrize("problem", ["images", "labels", "classes"])
def test_reports_of_different_images_are_refused(problem: str) -> None:
    labels = np.arange(8) % 4
    a = table(labels, labels)
    if problem == "images":
        b = PredictionTable([*a.paths[:-1], "other.png"], labels, a.probabilities, a.sources,
                            a.class_names)
        expected = "different images (1 only in the first, 1 only in the second"
    elif problem == "labels":
        b = table(wrong(labels), labels)
        expected = "different true labels"
    else:
        b = PredictionTable(a.paths, labels, a.probabilities, a.sources,
                            ["a", "b", "c", "d"])
        expected = "different classes"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        compare(a, b)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


TYPES = ["carcinoma (metastasis)", "papilloma (choroid plexus)", "normal"]
TYPE_ROWS = [["a.png", "carcinoma (metastasis)", "s", "0.7", "0.2", "0.1"],
             ["b.png", "normal", "s", "0.1", "0.1", "0.8"],
             ["c.png", "papilloma (choroid plexus)", "s", "0.5", "0.3", "0.2"]]


def test_a_report_with_the_old_column_names_compares_with_a_new_one(tmp_path: Path) -> None:
    """Reports written before the column keys (``p_carcinoma (metastasis)``) still read, and
    match a new one (``p_carcinoma_metastasis``) class for class."""
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    write_csv(old, ["path", "true_label", "source", *(f"p_{name}" for name in TYPES)], TYPE_ROWS)
    write_csv(new, ["path", "true_label", "source", "p_carcinoma_metastasis",
                    "p_papilloma_choroid_plexus", "p_normal"], TYPE_ROWS)
    a, b = read_predictions(old), read_predictions(new)
    assert a.class_names == b.class_names == ["carcinoma_metastasis", "papilloma_choroid_plexus",
                                              "normal"]
    assert a.labels.tolist() == b.labels.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    [everything] = [g for g in compare(a, b, resamples=200) if g.name == ALL_IMAGES]
    assert (everything.accuracy_a, everything.accuracy_b) == (pytest.approx(2 / 3),) * 2
    assert everything.right_only_a == everything.right_only_b == 0


def test_classes_whose_column_keys_clash_are_refused(tmp_path: Path) -> None:
    clash = tmp_path / "clash.csv"
    write_csv(clash, ["path", "true_label", "source", "p_a_b", "p_a_b_2"],
              [["x.png", "a b", "s", "0.9", "0.1"], ["y.png", "a_b", "s", "0.2", "0.8"]])
    with pytest.raises(ValueError, match="same column key"):
        read_predictions(clash)


@pytest.mark.parametrize("problem", ["missing", "not_predictions", "unknown_label",
                                     "repeated_path", "resamples", "confidence"])
def test_cli_refuses_bad_input_with_one_line(tmp_path: Path, problem: str) -> None:
    good = tmp_path / "good.csv"
    write_csv(good, ["path", "true_label", "source", "p_glioma", "p_notumor"],
              [["a.png", "glioma", "s", "0.9", "0.1"], ["b.png", "notumor", "s", "0.2", "0.8"]])
    other, extra = good, []
    if problem == "missing":
        other = tmp_path / "nowhere"
    elif problem == "not_predictions":
        other = tmp_path / "metrics.csv"
        write_csv(other, ["image", "score"], [["a.png", "1"]])
    elif problem == "unknown_label":
        other = tmp_path / "odd.csv"
        write_csv(other, ["path", "true_label", "source", "p_glioma", "p_notumor"],
                  [["a.png", "pituitary", "s", "0.9", "0.1"]])
    elif problem == "repeated_path":
        other = tmp_path / "twice.csv"
        write_csv(other, ["path", "true_label", "source", "p_glioma", "p_notumor"],
                  [["a.png", "glioma", "s", "0.9", "0.1"], ["a.png", "glioma", "s", "0.8", "0.2"]])
    else:
        extra = ["--resamples", "5"] if problem == "resamples" else ["--confidence", "90"]
    status, stdout, stderr = run_cli("compare", str(good), str(other), *extra)
    assert status == 2 and stdout == ""
    message = stderr.strip()
    assert message.startswith("mri-tumor compare: error:") and "\n" not in message
    assert {"missing": "no predictions.csv", "not_predictions": "not a predictions file",
            "unknown_label": "pituitary", "repeated_path": "more than once",
            "resamples": "--resamples",
            "confidence": "--confidence"}[problem] in message


def test_compare_reads_what_evaluate_writes(tmp_path: Path) -> None:
    report_a, report_b = tmp_path / "a", tmp_path / "b"
    status, _, _ = run_cli("evaluate", str(FIXTURE_IMAGES), "--out", str(report_a))
    assert status == 0
    # Model B: the same answers, except that it gets every glioma wrong.
    report_b.mkdir()
    with (report_a / PREDICTIONS_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    right_a = {row["path"] for row in rows if row["correct"] == "yes"}
    gliomas = {row["path"] for row in rows if row["true_label"] == "glioma"}
    for row in rows:
        if row["path"] in gliomas:
            row["p_glioma"], row["p_meningioma"] = "0.0", str(
                float(row["p_meningioma"]) + float(row["p_glioma"]))
    with (report_b / PREDICTIONS_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    status, stdout, stderr = run_cli("compare", str(report_a), str(report_b), "--json")
    assert status == 0 and DISCLAIMER in stderr
    result = json.loads(stdout)["groups"][ALL_IMAGES]
    assert result["n"] == len(rows) == len(read_predictions(report_a).paths)
    assert result["right_only_a"] == len(right_a & gliomas) > 0
    assert result["right_only_b"] == 0
    assert result["accuracy_a"] == pytest.approx(len(right_a) / len(rows), abs=1e-9)
    status, stdout, _ = run_cli("compare", str(report_a), str(report_b))
    assert status == 0 and "| all |" in stdout and DISCLAIMER in stdout


def test_compare_reads_what_evaluate_writes_for_the_types_model(tmp_path: Path) -> None:
    """The types model's classes have spaces and brackets; its predictions.csv names them by
    their keys, and compare reads it back with the true labels as the card names them."""
    report = tmp_path / "types"
    status, _, _ = run_cli("evaluate", str(FIXTURE_TYPES), "--model", "types", "--out",
                           str(report))
    assert status == 0
    with (report / PREDICTIONS_FILE).open(newline="") as handle:
        header = next(csv.reader(handle))
    probability_columns = [c for c in header if c.startswith("p_")]
    assert "p_carcinoma_metastasis" in probability_columns
    assert not any(" " in c or "(" in c or "+" in c for c in header)
    table = read_predictions(report)
    assert table.class_names == [c[2:] for c in probability_columns]
    status, stdout, _ = run_cli("compare", str(report), str(report), "--json")
    assert status == 0
    assert json.loads(stdout)["groups"][ALL_IMAGES]["accuracy_difference"] == 0
