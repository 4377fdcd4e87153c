"""The page's sidebar: the model selector and *About the model*, read from the selected
model's card (architecture, version, classes, the validation scores and which images they
were measured on). Research tool, not a diagnosis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import streamlit as st

from mri_tumor.app.wording import plural
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model

DEFAULT_MODEL = "default"  # the shipped model the selector starts on without --model
# What the shipped models' training sources are (a card names a source by its folder).
SOURCE_DESCRIPTIONS = {
    "brain-mri-44-types": "teaching-file images: T1, T1C+ and T2 slices from radiology "
                          "teaching material",
    "brain-tumor-mri": "the Kaggle brain tumour MRI set, mostly T1 with contrast",
    "lgg-tcga": "every slice of lower-grade glioma patients' T1, FLAIR and T1C+ scans "
                "(TCGA; the patients of the scan rule's fold)",
}
SCORES = (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("ece", "ECE"),
          ("sequence_accuracy", "Sequence accuracy"))


def model_description(card: ModelCard) -> str:
    """What a model names, in a few words, from its card: ``4 classes``, ``15 tumour types +
    MR sequence``."""
    count = len(card.class_names)
    text = (f"{count} tumour types" if card.label_scheme == "types"
            else plural(count, "class", "classes"))
    return text + (" + MR sequence" if card.sequence_names else "")


@dataclass
class ModelChoice:
    """One entry of the page's model selector."""

    label: str  # "default: 4 classes"
    card: ModelCard | None  # None: its card cannot be read (the page says why on loading)


def model_choices(given: str | None) -> dict[str, ModelChoice]:
    """The selector's entries by the value the predictor is loaded from: the shipped models
    by name, then the ``--model`` folder (``given``) when it is not a shipped model's name.
    Each is labelled with its name and what it names (``model_description``)."""
    keys = list(SHIPPED_MODELS)
    if given and given not in SHIPPED_MODELS:
        keys.append(given)
    choices = {}
    for key in keys:
        try:
            name, directory = resolve_model(key)
            card = ModelCard.load(directory)
        except (OSError, ValueError):
            choices[key] = ModelChoice(key if key not in SHIPPED_MODELS else
                                       f"{key}: not available", None)
            continue
        choices[key] = ModelChoice(f"{name}: {model_description(card)}", card)
    return choices


def select_model(choices: Mapping[str, ModelChoice], given: str | None) -> str:
    """The sidebar's model selector (radio buttons: their labels wrap, a select box's
    would be cut); returns the key the predictor is loaded from."""
    keys = list(choices)
    start = given if given in choices else DEFAULT_MODEL
    return st.sidebar.radio(
        "Model", keys, index=keys.index(start) if start in keys else 0,
        format_func=lambda key: choices[key].label, key="model",
        help="The shipped models by name (and the one given with --model). Each names its "
             "own classes; the sidebar below describes the selected one.")


def source_description(name: str) -> str:
    """A training source by its name in the card, with what it is when it is known."""
    known = SOURCE_DESCRIPTIONS.get(name.split("/")[0])
    return f"{name} ({known})" if known else name


def validation_sources(card: ModelCard) -> list[tuple[str, int]]:
    """The sources of the validation images and how many each gave (from the card's training
    record), in the card's order; empty when the card does not say."""
    counts = []
    for source in card.training.sources:
        name = str(source.get("name") or "")
        by_source = card.metrics.validation_by_source.get(name)
        count = (by_source.n if by_source is not None and by_source.n else
                 sum((source.get("counts") or {}).get("val", {}).values()))
        if name and count:
            counts.append((name, int(count)))
    return counts


def validation_note(card: ModelCard) -> str:
    """Where the validation images come from, and what that says about the scores: one
    source means the scores hold for images like those, not for other sources."""
    sources = validation_sources(card)
    if not sources:
        return ""
    if len(sources) == 1:
        name, count = sources[0]
        return (f"All {count} validation images come from **one source**, "
                f"{source_description(name)}. The scores say how the model does on such "
                "images; on images of other sources (another scanner, another collection) "
                "it may do worse.")
    parts = []
    for name, count in sources:
        by_source = card.metrics.validation_by_source.get(name)
        accuracy = (f", accuracy {by_source.accuracy:.1%}" if by_source is not None
                    and isinstance(by_source.accuracy, int | float) else "")
        parts.append(f"{source_description(name)} with {count} images{accuracy}")
    # No colon after "sources": "Sources:" heads the class explanations' links on the page.
    return (f"The validation images come from {len(sources)} sources, "
            + "; ".join(parts[:-1]) + "; and " + parts[-1] + ".")


def validation_table(card: ModelCard) -> str:
    """The validation scores as a two-column Markdown table (one score a row, so that it
    fits the sidebar's width); empty when the card has none."""
    validation = card.metrics.validation
    shown = [(label, getattr(validation, key)) for key, label in SCORES
             if isinstance(getattr(validation, key, None), int | float)]
    if not shown:
        return ""
    rows = "\n".join(f"| {label} | {value:.3f} |" if label == "ECE" else
                     f"| {label} | {value:.1%} |" for label, value in shown)
    return "| Score | Value |\n|---|---|\n" + rows


def render_sidebar(card: ModelCard) -> None:
    """*About the model*: what the card says, the validation scores and the disclaimer."""
    sidebar = st.sidebar
    sidebar.header("About the model")
    created = card.created
    with contextlib.suppress(ValueError):  # a card without a date, or an odd one, shows as is
        created = datetime.fromisoformat(card.created).strftime("%d %b %Y")
    sidebar.markdown(f"**Architecture:** {card.architecture}  \n"
                     f"**Version:** {card.version or '-'}  \n"
                     f"**Trained:** {created or '-'}  \n"
                     f"**Classes:** {', '.join(map(card.display_name, card.class_names))}"
                     + (f"  \n**MR sequences:** {', '.join(card.sequence_names)}"
                        if card.sequence_names else ""))
    table = validation_table(card)
    if table:
        validation = card.metrics.validation
        count = validation.n if validation is not None else 0
        sidebar.subheader("Validation" + (f" ({plural(count, 'image')})" if count else ""))
        sidebar.markdown(table)
        note = validation_note(card)
        if note:
            sidebar.markdown(note)
        if "| ECE |" in table:
            sidebar.caption("ECE, expected calibration error: how far the confidences are "
                            "from the accuracy actually reached (lower is better).")
    sidebar.warning(DISCLAIMER, icon=":material/warning:")
