"""How sure `mri-tumor evaluate`'s numbers are: the bootstrap intervals (checked against the
metrics they resample and against hand-made cases), the warning on groups under 100 images,
where both are shown, and the message when a folder has the layout of another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import FIXTURE_IMAGES, run_cli

from mri_tumor import metrics
from mri_tumor.card import DISCLAIMER
from mri_tumor.evaluation import JSON_KEYS
from mri_tumor.evaluation.intervals import (
    bootstrap_intervals,
    resampled_metrics,
    small_group_warning,
    small_groups,
)
from mri_tumor.evaluation.report import REPORT_FILE

FIXTURE_TYPES = FIXTURE_IMAGES.parent / "types"  # '<Type> <Sequence>' layout


def random_predictions(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, classes)) + 2.0 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, labels


@pytest.mark.parametrize("classes", [2, 4, 15])
def test_resampled_metrics_are_the_metrics_of_each_resample(classes: int) -> None:
    probabilities, labels = random_predictions(60, classes)
    rng = np.random.default_rng(1)
    indices = np.vstack([np.arange(60), rng.integers(0, 60, size=(5, 60)),
                         np.zeros((1, 60), dtype=int)])  # the last: one image 60 times
    scores = resampled_metrics(probabilities, labels, indices)
    for row, idx in enumerate(indices):
        p, y = probabilities[idx], labels[idx]
        predicted = p.argmax(axis=1)
        assert scores["accuracy"][row] == pytest.approx(metrics.accuracy(y, predicted))
        assert scores["macro_f1"][row] == pytest.approx(metrics.macro_f1(y, predicted, classes))
        assert scores["ece"][row] == pytest.approx(metrics.expected_calibration_error(p, y))


def test_intervals_are_fixed_by_the_seed_and_narrow_with_more_images() -> None:
    probabilities, labels = random_predictions(2000, 4)
    first = bootstrap_intervals(probabilities[:200], labels[:200])
    assert first == bootstrap_intervals(probabilities[:200], labels[:200])  # seed 0
    assert first != bootstrap_intervals(probabilities[:200], labels[:200], seed=1)
    large = bootstrap_intervals(probabilities, labels)
    accuracy = metrics.accuracy(labels, probabilities.argmax(axis=1))
    for name in ("accuracy", "macro_f1", "ece"):
        low, high = large[name]
        assert low < high
        assert high - low < first[name][1] - first[name][0]
    assert large["accuracy"][0] < accuracy < large["accuracy"][1]
    # A binomial proportion's 95% interval is about +-1.96 standard errors wide.
    half_width = 1.96 * np.sqrt(accuracy * (1 - accuracy) / len(labels))
    assert (large["accuracy"][1] - large["accuracy"][0]) / 2 == pytest.approx(half_width,
                                                                                rel=0.15)


def test_a_perfect_set_has_no_spread_and_one_image_has_no_interval() -> None:
    labels = np.arange(40) % 4
    probabilities = np.full((40, 4), 0.02)
    probabilities[np.arange(40), labels] = 0.94
    perfect = bootstrap_intervals(probabilities, labels)
    assert perfect["accuracy"] == perfect["macro_f1"] == [1.0, 1.0]
    assert perfect["ece"] == pytest.approx([0.06, 0.06])  # confidence 0.94, always right
    assert bootstrap_intervals(probabilities[:1], labels[:1]) == dict.fromkeys(
        ("accuracy", "macro_f1", "ece"))


def test_groups_and_cells_under_100_images_are_named_in_one_line() -> None:
    by_group = {"source:a": {"n": 150}, "sequence:T1": {"n": 99}}
    by_cell = [{"source": "a", "sequence": "", "class": "glioma", "n": 100},
               {"source": "a", "sequence": "T1", "class": "carcinoma (metastasis)", "n": 12}]
    small = small_groups(by_group, by_cell)
    assert small == [{"group": "sequence:T1", "n": 99},
                     {"group": "cell:a x T1 x carcinoma (metastasis)", "n": 12}]
    warning = small_group_warning(small)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("Warning: 2 group(s) have fewer than 100 images")
    assert "sequence:T1 (99)" in warning and "carcinoma (metastasis) (12)" in warning
    many = [{"group": f"g{i}", "n": i} for i in range(9)]
    assert small_group_warning(many, shown=4).endswith("g3 (3) and 5 more.")
    assert small_group_warning([]) is None


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str, Path]:
    """``evaluate --json`` and the text summary with ``--out``, on both fixture folders."""
    out = tmp_path_factory.mktemp("report") / "report"
    status, stdout, stderr = run_cli("evaluate", str(FIXTURE_IMAGES), str(FIXTURE_TYPES),
                                     "--json", "--backend", "onnx")
    assert status == 0, stderr
    status, text, _ = run_cli("evaluate", str(FIXTURE_IMAGES), str(FIXTURE_TYPES),
                              "--backend", "onnx", "--out", str(out))
    assert status == 0
    return json.loads(stdout), stderr, text, out


def test_json_adds_the_intervals_and_small_groups_and_keeps_every_key(two_sources) -> None:
    result, stderr, _, _ = two_sources
    assert tuple(result) == JSON_KEYS
    assert JSON_KEYS[:18] == (
        "n", "classes", "accuracy", "macro_f1", "per_class", "confusion_matrix", "auc", "ece",
        "ece_uncalibrated", "leak_free", "by_group", "by_cell", "stress",
        "shortcut_baseline_accuracy", "shift_warning", "sequence_accuracy", "sequence",
        "skipped")  # the keys before the intervals, unchanged
    intervals = result["intervals"]
    assert (intervals["confidence"], intervals["resamples"], intervals["seed"]) == (0.95, 1000, 0)
    assert intervals["leak_free"] is None  # no --train-dir
    for name in ("accuracy", "macro_f1", "ece"):
        low, high = intervals["all"][name]
        assert 0 <= low <= high <= 1
    assert intervals["all"]["accuracy"][0] <= result["accuracy"] <= intervals["all"][
        "accuracy"][1]
    assert set(intervals["by_group"]) == set(result["by_group"])
    # 38 images: every group and cell is small, each named once
    expected = [*result["by_group"], *(f"cell:{c['source']} x " + (
        f"{c['sequence']} x " if c["sequence"] else "") + c["class"] for c in result["by_cell"])]
    assert [g["group"] for g in result["small_groups"]] == expected
    warnings = [line for line in stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and f"{len(expected)} group(s)" in warnings[0]
    assert DISCLAIMER in stderr


def test_summary_and_report_show_the_intervals_and_the_warning(two_sources) -> None:
    result, _, text, out = two_sources
    low, high = result["intervals"]["all"]["accuracy"]
    interval = f"[{low:.4f}, {high:.4f}]"
    assert f"All images: accuracy {result['accuracy']:.4f} {interval}" in text
    assert "95% percentile bootstrap over images (1000 resamples, seed 0)" in text
    assert "Warning: " in text and "fewer than 100 images" in text
    group, values = next(iter(result["by_group"].items()))
    group_low, group_high = result["intervals"]["by_group"][group]["accuracy"]
    assert f"{values['accuracy']:.4f} [{group_low:.4f}, {group_high:.4f}]" in text
    assert text.rstrip().endswith(DISCLAIMER)
    report = (out / REPORT_FILE).read_text()
    assert f"| all | {result['n']} | {result['accuracy']:.4f} {interval} |" in report
    assert "1000 resamples, seed 0" in report and "fewer than 100 images" in report
    assert report.rstrip().endswith(f"*{DISCLAIMER}*")


def test_the_types_model_on_class_folders_says_which_layout_it_reads(tmp_path: Path) -> None:
    status, stdout, stderr = run_cli("evaluate", str(FIXTURE_IMAGES), "--model", "types")
    assert status == 2 and stdout == ""
    message = stderr.strip()
    assert "\n" not in message and message.startswith("mri-tumor evaluate: error:")
    assert "'<Type> <Sequence>' folders (label scheme 'types'" in message
    assert "found the class folders glioma, meningioma, notumor, pituitary" in message
    assert "4-class model 'default'" in message
    # The 4-class model on type folders it has no class for says what it passed over.
    shutil.copytree(FIXTURE_TYPES / "Schwannoma T1", tmp_path / "data" / "Schwannoma T1")
    status, _, stderr = run_cli("evaluate", str(tmp_path / "data"))
    assert status == 2
    message = stderr.strip()
    assert "\n" not in message and "label scheme 'classes'" in message
    assert "Schwannoma T1" in message and "not one of this model's classes" in message
