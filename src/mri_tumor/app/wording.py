"""Small text helpers the page's modules share: counts with their noun, and user-supplied
text made safe to show inside Markdown."""

from __future__ import annotations

import re

NOT_MRI_TEXT = "This does not look like a brain MRI slice."


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 image``, ``2 images``: a count with its noun (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def plain(text: str) -> str:
    """User-supplied text (a file name) made safe to show inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", text)
