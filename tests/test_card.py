"""The model card: typed sections that keep what they do not know, and the one place that
names classes for the rest of the code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.conftest import FIXTURE_IMAGES

import mri_tumor
from mri_tumor import Predictor
from mri_tumor.card import CARD_FILE, ModelCard, ValidationMetrics
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.inference.scans import scan_summaries

PACKAGE_DIR = Path(mri_tumor.__file__).parent
# Folder reading maps dataset folder names to labels, and each class has its explanation;
# everything else takes class names from a model card.
ALLOWED_TO_NAME_CLASSES = {"data/folders.py", "explain.py"}


def test_old_card_loads_typed_and_writes_back_what_it_did_not_know(tmp_path: Path) -> None:
    raw = json.loads((SHIPPED_MODEL_DIR / CARD_FILE).read_text())
    for key in ("display_names", "normal_class"):
        del raw[key]
    raw["training"]["from_another_version"] = {"kept": True}
    raw["metrics"]["validation"]["brier"] = 0.02
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    card = ModelCard.load(tmp_path)
    assert isinstance(card.metrics.validation, ValidationMetrics)
    assert card.metrics.validation.accuracy == raw["metrics"]["validation"]["accuracy"]
    assert card.training.sources[0]["name"] == "brain-tumor-mri/Training"
    assert card.display_name("notumor") == "notumor"  # no display names: shown as named
    written = card.to_dict()
    assert written["training"]["from_another_version"] == {"kept": True}
    assert written["metrics"]["validation"]["brier"] == 0.02
    assert written["metrics"]["validation_by_source"] == raw["metrics"]["validation_by_source"]


def test_a_section_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    raw = json.loads((SHIPPED_MODEL_DIR / CARD_FILE).read_text())
    raw["metrics"]["validation"] = {"accuracy": 0.9, "n": 3, **{"unknown": 1}}
    raw["training"] = ["not", "an", "object"]  # read as an empty record, not a crash
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    card = ModelCard.load(tmp_path)
    assert card.training.split_file == "split.csv" and card.metrics.validation.n == 3


def test_display_names_and_the_normal_class_come_from_the_card(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model)
    card = json.loads((model / CARD_FILE).read_text())
    card["display_names"]["glioma"] = "Glioma (diffuse)"
    (model / CARD_FILE).write_text(json.dumps(card))
    predictor = Predictor.load(model, backend="onnx")
    result = predictor.predict([sorted((FIXTURE_IMAGES / "glioma").iterdir())[0]])[0]
    assert result.label == "glioma" and result.display_label == "Glioma (diffuse)"


def test_scan_summary_uses_the_normal_class_of_the_card() -> None:
    from mri_tumor.inference import OK, REJECTED, Prediction

    class Card:
        scan_rule = None

        def __init__(self, normal_class: str | None) -> None:
            self.normal_class = normal_class

    slices = [Prediction(f"s{i}", OK, label="none", confidence=0.9, series="x", slice_index=i,
                         probabilities={"none": 0.9, "a": 0.1 * (i % 2), "b": 0.05})
              for i in range(4)]
    assert scan_summaries(slices, Card("none"))[0]["label"] == "none"
    assert scan_summaries(slices, Card("b"))[0]["label"] != "b"  # b is the normal class
    refused = [Prediction("top", REJECTED, series="x"), Prediction("other", REJECTED,
                                                                   series="y")]
    summaries = scan_summaries([*slices, *refused], Card("none"))
    summary = next(s for s in summaries if s["series"] == "x")
    assert summary["slices"] == 4 and summary["refused"] == 1


@pytest.mark.parametrize("class_name", ["glioma", "meningioma", "notumor", "pituitary"])
def test_no_module_but_folder_reading_and_explanations_names_a_class(class_name: str) -> None:
    naming = sorted(path.relative_to(PACKAGE_DIR).as_posix()
                    for path in PACKAGE_DIR.rglob("*.py")
                    if f'"{class_name}"' in path.read_text() or f"'{class_name}'" in
                    path.read_text())
    assert set(naming) <= ALLOWED_TO_NAME_CLASSES, naming
