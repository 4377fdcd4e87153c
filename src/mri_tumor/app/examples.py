"""The page's bundled examples ("Try an example"): a set of slices per shipped model's domain,
each named by the class it shows (and its MR sequence, for a model with a sequence head). The
selected model gets the set of its own domain; a model with other classes gets the default
model's slices, numbered. Research tool, not a diagnosis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from mri_tumor.card import ModelCard

SAMPLES_DIR = Path(__file__).parents[1] / "samples"


@dataclass(frozen=True)
class ExampleSet:
    """Bundled slices named ``<class>.jpg`` or ``<class>_<sequence>.jpg`` (the class as
    its ``slug`` when it has other characters than letters and digits)."""

    folder: Path
    key: str  # the chips' widget key
    prompt: str  # where the slices come from, for a model that has their classes

    def files(self) -> dict[str, Path]:
        """The set's images by file name, sorted."""
        return {path.name: path for path in sorted(self.folder.glob("*.jpg"))}


# The 4-class model's examples: Kaggle validation slices, one per class. The types model's:
# teaching-file slices (its own domain) from its validation split, several tumour types and
# all three sequences. The first set whose every slice names a class (and sequence) of the
# selected model is offered.
TYPES_EXAMPLES = ExampleSet(
    SAMPLES_DIR / "types", "examples-types",
    "No images at hand? Try an example (teaching-file slices of several tumour types, T1, "
    "T1C+ and T2, from this model's validation split, never trained on):")
DEFAULT_EXAMPLES = ExampleSet(
    SAMPLES_DIR, "examples",
    "No images at hand? Try an example (one slice of each class from the validation set):")
EXAMPLE_SETS = (TYPES_EXAMPLES, DEFAULT_EXAMPLES)
OTHER_MODEL_PROMPT = ("No images at hand? Try an example (brain MRI slices from the default "
                      "model's validation set):")


def slug(name: str) -> str:
    """A class name as an example's file names it: lower case, a hyphen for each run of
    other characters (``papilloma (choroid plexus)`` -> ``papilloma-choroid-plexus``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def example_class(name: str, card: ModelCard) -> tuple[str | None, str]:
    """The class of the model (None: not one of its classes) and the MR sequence ("" when
    none) an example's file name gives: ``meningioma_T1C+.jpg`` -> (meningioma, T1C+),
    ``glioma.jpg`` -> (glioma, "")."""
    stem, _, sequence = Path(name).stem.partition("_")
    by_slug = {slug(class_name): class_name for class_name in card.class_names}
    return (stem if stem in card.class_names else by_slug.get(stem)), sequence


def fits(example_set: ExampleSet, card: ModelCard) -> bool:
    """Whether every slice of the set shows a class (and sequence) of the model's card."""
    names = [example_class(name, card) for name in example_set.files()]
    return bool(names) and all(label is not None and (
        not sequence or sequence in card.sequence_names) for label, sequence in names)


def example_set_for(card: ModelCard) -> tuple[ExampleSet, bool]:
    """The examples offered with a model and whether they are labelled by class: the first
    set of its own classes, else the default model's slices, numbered."""
    for example_set in EXAMPLE_SETS:
        if fits(example_set, card):
            return example_set, True
    return DEFAULT_EXAMPLES, False


def example_label(name: str, card: ModelCard) -> str:
    """A chip's text: the class as the model names it, and the sequence when the name gives
    one (``Meningioma · T1C+``)."""
    label, sequence = example_class(name, card)
    return card.display_name(label or Path(name).stem) + (f" · {sequence}" if sequence else "")


def render_examples(card: ModelCard) -> list[tuple[str, bytes]]:
    """The example chips of the selected model; the picked ones as (name, bytes) inputs."""
    example_set, by_class = example_set_for(card)
    samples = example_set.files()
    numbers = {name: index for index, name in enumerate(samples, start=1)}
    chosen = st.pills(example_set.prompt if by_class else OTHER_MODEL_PROMPT,
                      options=list(samples), selection_mode="multi",
                      format_func=lambda name: (example_label(name, card) if by_class
                                                else f"Example {numbers[name]}"),
                      key=example_set.key if by_class else "examples-numbered")
    return [(f"example-{name}", samples[name].read_bytes()) for name in chosen or []
            if name in samples]
