"""Continuous training: the gate's rule, and `mri-tumor adapt` promoting and refusing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import FIXTURE_IMAGES, FIXTURES

from mri_tumor.adaptation import MAX_ECE, decide
from mri_tumor.card import ModelCard
from mri_tumor.cli import main
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR

REFERENCE = FIXTURES / "types"


def scores(site: float, reference: float, ece: float = 0.01) -> dict[str, dict]:
    return {"site": {"n": 30, "accuracy": site, "macro_f1": site, "ece": ece},
            "kaggle": {"n": 400, "accuracy": reference, "macro_f1": reference, "ece": ece}}


@pytest.mark.parametrize(("candidate", "promoted", "why"), [
    (scores(0.90, 0.978), True, "promoted"),
    (scores(0.79, 0.98), False, "site accuracy fell"),
    (scores(0.95, 0.974), False, "kaggle accuracy fell by 0.6 points"),
    (scores(0.95, 0.98, ece=MAX_ECE + 0.01), False, "ECE on site"),
])
def test_the_gate_rule(candidate: dict, promoted: bool, why: str) -> None:
    decision, reason = decide(scores(0.80, 0.98), candidate, max_reference_drop=0.5)
    assert decision is promoted and why in reason


def test_a_site_the_base_was_never_calibrated_for_needs_no_worse_calibration() -> None:
    base = scores(0.40, 0.98)
    base["site"]["ece"] = 0.50
    assert decide(base, scores(0.60, 0.98, ece=0.01) | {"site": {
        "n": 30, "accuracy": 0.6, "macro_f1": 0.6, "ece": 0.30}}, 0.5)[0] is True
    worse = scores(0.60, 0.98) | {"site": {"n": 30, "accuracy": 0.6, "macro_f1": 0.6,
                                          "ece": 0.55}}
    promoted, reason = decide(base, worse, 0.5)
    assert promoted is False and "ECE on site is 0.550 (at most 0.500)" in reason


def test_adapt_promotes_a_candidate_that_passes_and_records_its_lineage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = shutil.copytree(FIXTURE_IMAGES, tmp_path / "site")
    out = tmp_path / "out"
    status = main(["adapt", str(site), "--out", str(out), "--reference-dir", str(REFERENCE),
                   "--epochs", "1", "--lr", "1e-5", "--max-reference-drop", "100"])
    gate = json.loads((out / "gate.json").read_text())
    assert status == 0 and gate["promoted"] is True, gate["reason"]
    assert set(gate["base"]) == set(gate["candidate"]) == {"site", "types"}
    assert {"n", "accuracy", "macro_f1", "ece"} <= set(gate["base"]["site"])
    assert "promoted" in (out / "gate.md").read_text()
    card = ModelCard.load(out)
    parent_hash = hashlib.sha256((SHIPPED_MODEL_DIR / "model.safetensors").read_bytes())
    assert card.lineage["parent"] == {"name": "default",
                                      "weights_sha256": parent_hash.hexdigest()}
    assert card.lineage["site_data"]["counts"] == {c: 5 for c in card.class_names}
    assert card.lineage["gate"]["promoted"] is True
    assert (out / "model.safetensors").is_file() and (out / "split.csv").is_file()
    assert main(["predict", "--json", "--model", str(out),
                 str(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0])]) == 0


def test_adapt_refuses_a_candidate_trained_on_shuffled_labels(tmp_path: Path) -> None:
    site = tmp_path / "site"
    classes = sorted(p.name for p in FIXTURE_IMAGES.iterdir())
    for true_class, wrong_class in zip(classes, classes[1:] + classes[:1], strict=True):
        shutil.copytree(FIXTURE_IMAGES / true_class, site / wrong_class)
    out = tmp_path / "out"
    status = main(["adapt", str(site), "--out", str(out), "--reference-dir", str(REFERENCE),
                   "--epochs", "3", "--lr", "3e-3"])
    gate = json.loads((out / "gate.json").read_text())
    assert status == 3 and gate["promoted"] is False and gate["reason"].startswith("refused")
    assert sorted(p.name for p in out.iterdir()) == ["gate.json", "gate.md"]


def test_too_few_site_images_is_one_line_and_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    for class_dir in FIXTURE_IMAGES.iterdir():
        (site / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:2]:
            shutil.copy(image, site / class_dir.name / image.name)
    assert main(["adapt", str(site), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "too few site images" in error
    assert not (tmp_path / "out").exists()
