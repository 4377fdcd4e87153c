"""What each class means, in plain language, with public sources (``class_texts.json``).

The texts are summaries written for this project; the web app shows the text of the class it
answers beside each result. Reading them needs neither torch nor a model. Research tool, not a
diagnosis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

TEXTS_FILE = "class_texts.json"


@dataclass(frozen=True)
class Source:
    """A public page that the explanation text is based on."""

    title: str
    url: str


@dataclass(frozen=True)
class ClassExplanation:
    """What a class means, in a few sentences, and where to read more."""

    title: str
    summary: str
    on_mri: str
    sources: tuple[Source, ...]


@cache
def explanations() -> dict[str, ClassExplanation]:
    """Every class text, by model class name (read once from the package data)."""
    raw = json.loads(resources.files(__package__).joinpath(TEXTS_FILE).read_text("utf-8"))
    return {name: ClassExplanation(text["title"], text["summary"], text["on_mri"],
                                   tuple(Source(s["title"], s["url"]) for s in text["sources"]))
            for name, text in raw.items()}


def explanation(class_name: str) -> ClassExplanation:
    """The explanation of one class (a class name of a model card)."""
    known = explanations()
    try:
        return known[class_name]
    except KeyError:
        raise KeyError(f"no explanation for class {class_name!r}; known: "
                       f"{', '.join(known)}") from None
