"""`mri-tumor compare` on two `evaluate --scans` reports: the scan answers of two models on
the same scans, counted by hand, with paired intervals, and refusals of reports that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli

from mri_tumor.evaluation.scan_comparison import compare_scan_answers, read_scan_answers


def write_report(folder: Path, answers: list[tuple[str, str, str, str]]) -> Path:
    """A scans.json with (scan, truth, sequence, answer) per scan; answer "?": not assessable."""
    folder.mkdir(parents=True)
    scans = [{"scan": scan, "truth": truth, "sequence": sequence,
              "status": "not_assessable" if label == "?" else "ok",
              "label": None if label == "?" else label}
             for scan, truth, sequence, label in answers]
    (folder / "scans.json").write_text(json.dumps({"metrics": {}, "scans": scans}))
    return folder


TRUTH = [("p1/T1", "glioma", "T1"), ("p2/T1", "glioma", "T1"), ("p1/FLAIR", "glioma", "FLAIR"),
         ("p2/FLAIR", "glioma", "FLAIR"), ("h1", "notumor", "")]


def reports(tmp_path: Path) -> tuple[Path, Path]:
    a = write_report(tmp_path / "a", [(*t, label) for t, label in zip(
        TRUTH, ["notumor", "glioma", "meningioma", "?", "notumor"], strict=True)])
    b = write_report(tmp_path / "b", [(*t, label) for t, label in zip(
        reversed(TRUTH), ["notumor", "glioma", "glioma", "glioma", "meningioma"],
        strict=True)])
    return a, b


def test_scan_answers_are_counted_per_class_and_sequence(tmp_path: Path) -> None:
    a, b = reports(tmp_path)
    groups = {g.name: g for g in compare_scan_answers(read_scan_answers(a),
                                                      read_scan_answers(b), resamples=200)}
    assert list(groups) == ["all", "truth:glioma", "truth:glioma sequence:FLAIR",
                            "truth:glioma sequence:T1", "truth:notumor"]
    everything = groups["all"]
    # A: p2/T1 and h1 right; B (rows in reverse order): h1, p2/FLAIR, p1/FLAIR, p2/T1 right.
    assert (everything.right_a, everything.right_b) == (2, 4)
    assert (everything.right_only_a, everything.right_only_b) == (0, 2)
    assert everything.difference == pytest.approx(0.4)
    low, high = everything.difference_interval
    assert 0 <= low <= 0.4 <= high <= 0.8
    flair = groups["truth:glioma sequence:FLAIR"]  # a not-assessable scan is not right
    assert (flair.n, flair.right_a, flair.right_b) == (2, 0, 2)
    t1 = groups["truth:glioma sequence:T1"]
    assert (t1.right_a, t1.right_b, t1.difference) == (1, 1, 0.0)


def test_the_cli_compares_scan_reports_and_prints_json(tmp_path: Path) -> None:
    a, b = reports(tmp_path)
    status, out, _ = run_cli("compare", str(a), str(b), "--json", "--resamples", "200")
    assert status == 0
    result = json.loads(out)
    assert result["scan_groups"]["truth:glioma"]["right_b"] == 3
    status, out, _ = run_cli("compare", str(a), str(b / "scans.json"), "--resamples", "200")
    assert status == 0 and "| truth:notumor | 1 | 1 (100.0%) | 1 (100.0%) |" in out
    assert "Research tool, not a diagnosis" in out


def test_reports_of_other_scans_or_truths_are_refused_in_one_line(tmp_path: Path) -> None:
    a, _ = reports(tmp_path)
    other = write_report(tmp_path / "other", [(*t, "glioma") for t in TRUTH[:4]])
    status, _, err = run_cli("compare", str(a), str(other))
    assert status == 2 and "different scans" in err and "Traceback" not in err
    relabelled = write_report(tmp_path / "relabelled",
                              [(s, "notumor", q, "glioma") for s, _, q in TRUTH])
    status, _, err = run_cli("compare", str(a), str(relabelled))
    assert status == 2 and "different true labels" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scans.json").write_text("{not json")
    status, _, err = run_cli("compare", str(a), str(broken))
    assert status == 2 and "not a scan report" in err
