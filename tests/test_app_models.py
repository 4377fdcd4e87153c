"""What the web app says about each model (the sidebar's validation sources), the examples it
offers with each (the `types` model's come from its own domain), and how `mri-tumor app`
starts Streamlit (no "Deploy" button from the first session on)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mri_tumor.app import launch
from mri_tumor.app.examples import (
    DEFAULT_EXAMPLES,
    TYPES_EXAMPLES,
    example_class,
    example_label,
    example_set_for,
    slug,
)
from mri_tumor.app.sidebar import validation_note, validation_sources, validation_table
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.inference.model_folder import SHIPPED_MODELS

APP = Path(__file__).resolve().parents[1] / "src" / "mri_tumor" / "app" / "page.py"
TIMEOUT = 120
CARD = ModelCard.load(SHIPPED_MODELS["default"])
TYPES_DIR = SHIPPED_MODELS["types"]
TYPES_CARD = ModelCard.load(TYPES_DIR)


def _page(monkeypatch: pytest.MonkeyPatch, model: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), "--model", model])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def _sidebar(at: AppTest) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


# -- the sidebar: what the validation scores were measured on -----------------------------------
def test_the_types_sidebar_says_its_validation_is_one_source_of_teaching_files(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert validation_sources(TYPES_CARD) == [("brain-mri-44-types", 411)]
    sidebar = _sidebar(_page(monkeypatch, "types"))
    assert "All 411 validation images come from **one source**" in sidebar
    assert "brain-mri-44-types (teaching-file images" in sidebar
    assert "may do worse" in sidebar


def test_the_default_sidebar_names_its_validation_sources(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sources = validation_sources(CARD)
    assert [name for name, _ in sources] == ["brain-tumor-mri/Training", "brain-mri-44-types",
                                             "lgg-tcga"]
    note = validation_note(CARD)
    assert note.startswith("The validation images come from 3 sources, ")
    assert "sources:" not in note.lower()  # "Sources:" heads the explanations' links
    assert "one source" not in note and "Kaggle" in note and "teaching-file" in note
    assert "lower-grade glioma" in note
    sidebar = _sidebar(_page(monkeypatch, "default"))
    assert note in sidebar


def test_the_validation_table_has_one_score_a_row() -> None:
    table = validation_table(TYPES_CARD).splitlines()
    assert table[:2] == ["| Score | Value |", "|---|---|"]
    validation = TYPES_CARD.metrics.validation
    assert validation is not None
    assert f"| Accuracy | {validation.accuracy:.1%} |" in table
    assert f"| ECE | {validation.ece:.3f} |" in table
    assert f"| Sequence accuracy | {validation.sequence_accuracy:.1%} |" in table
    assert all(row.count("|") == 3 for row in table)  # two columns: fits the sidebar


def test_a_card_without_sources_or_scores_says_nothing_of_them(tmp_path: Path) -> None:
    from tests.conftest import make_model_folder

    card = ModelCard.load(make_model_folder(tmp_path / "m", ["a", "b"]))
    assert validation_sources(card) == [] and validation_note(card) == ""
    assert validation_table(card) == ""


# -- the examples: each model's own domain ------------------------------------------------------
def test_each_model_is_offered_examples_of_its_own_classes() -> None:
    assert example_set_for(CARD) == (DEFAULT_EXAMPLES, True)
    assert example_set_for(TYPES_CARD) == (TYPES_EXAMPLES, True)
    names = list(TYPES_EXAMPLES.files())
    assert len(names) >= 5
    found = [example_class(name, TYPES_CARD) for name in names]
    assert all(label in TYPES_CARD.class_names for label, _ in found)
    assert {sequence for _, sequence in found} == set(TYPES_CARD.sequence_names)
    assert len({label for label, _ in found}) == len(found)  # several tumour types
    assert example_label("papilloma-choroid-plexus_T1C+.jpg", TYPES_CARD) == (
        "Papilloma (choroid plexus) · T1C+")
    assert slug("carcinoma (metastasis)") == "carcinoma-metastasis"


def test_the_types_examples_are_small_jpegs_from_its_validation_split() -> None:
    """Small (at most 256 px, JPEG), and each of a class and sequence that the model's
    validation split holds."""
    held = {(row["label"], row["sequence"]) for row in
            csv.DictReader((TYPES_DIR / "split.csv").open()) if row["split"] == "val"}
    for name, path in TYPES_EXAMPLES.files().items():
        with Image.open(path) as image:
            assert image.format == "JPEG" and max(image.size) <= 256
        assert path.stat().st_size < 40_000
        assert example_class(name, TYPES_CARD) in held


def test_the_types_page_offers_its_own_examples_and_each_gives_its_class(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Needs the trained types model: each example is a clear case of its type and sequence."""
    at = _page(monkeypatch, "types")
    [chips] = at.pills
    names = list(TYPES_EXAMPLES.files())
    assert chips.options == [example_label(name, TYPES_CARD) for name in names]
    assert "teaching-file slices" in chips.label
    chips.set_value(names).run()
    assert not at.exception
    expected = [example_class(name, TYPES_CARD) for name in names]
    predicted = [m.value for m in at.main.metric if m.label == "Predicted class"]
    assert predicted == [TYPES_CARD.display_name(label or "") for label, _ in expected]
    sequences = [m.value for m in at.main.metric if m.label == "MR sequence"]
    assert [s.split(" (")[0] for s in sequences] == [sequence for _, sequence in expected]
    assert any(DISCLAIMER in c.value for c in at.main.caption)


def test_the_default_page_still_offers_its_four_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(monkeypatch, "default")
    assert at.pills[0].options == [CARD.display_name(name) for name in CARD.class_names]


# -- the launch command ---------------------------------------------------------------------------
def test_the_app_command_hides_the_deploy_button_from_the_first_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(launch, "run_until_stopped",
                        lambda command: commands.append(list(command)) or 0)
    assert launch.launch_app(port=8999) == 0
    [command] = commands
    option = command.index("--client.toolbarMode")
    assert command[option + 1] in ("minimal", "viewer")
    assert "--" not in command[:option]  # a Streamlit option, not one for the page
