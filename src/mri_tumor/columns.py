"""Column names for the classes and MR sequences of the CSV files (``predict --csv``, the
app's download, ``evaluate``'s ``predictions.csv``): each name's *key*, with no spaces or
punctuation, so that the columns work unquoted in pandas, R and SQL.

The key of a name: ``+`` becomes ``plus``, accents are dropped, every other run of
characters that are not ASCII letters or digits becomes one ``_``, and ``_`` at either end
is dropped; letters keep their case. So ``carcinoma (metastasis)`` -> ``carcinoma_metastasis``,
``papilloma (choroid plexus)`` -> ``papilloma_choroid_plexus``, ``T1C+`` -> ``T1Cplus``,
``glioma`` -> ``glioma``. A key is its own key. Should two names of one model give the same
key, the later ones get ``_2``, ``_3`` ... in the card's order; a name with no letter or digit
becomes ``class`` (then ``class_2`` ...). The module needs only the standard library: every
layer that writes or reads such a CSV may import it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

_NOT_A_KEY_CHARACTER = re.compile(r"[^A-Za-z0-9]+")
EMPTY_KEY = "class"
PROBABILITY_PREFIX = "p_"
SEQUENCE_PREFIX = "p_sequence_"


def column_key(name: str) -> str:
    """``name`` as a column key (see the module docstring); "" for a name with no letter or
    digit."""
    text = unicodedata.normalize("NFKD", name.replace("+", "plus"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _NOT_A_KEY_CHARACTER.sub("_", text).strip("_")


def column_keys(names: Iterable[str]) -> list[str]:
    """The keys of ``names`` in their order, made unique (``_2``, ``_3`` ... on a clash)."""
    keys: list[str] = []
    taken: set[str] = set()
    for name in names:
        base = column_key(name) or EMPTY_KEY
        key, number = base, 1
        while key in taken:
            number += 1
            key = f"{base}_{number}"
        taken.add(key)
        keys.append(key)
    return keys


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """``p_<key>`` for each class, in the card's order."""
    return [PROBABILITY_PREFIX + key for key in column_keys(class_names)]


def sequence_columns(sequence_names: Sequence[str]) -> list[str]:
    """``p_sequence_<key>`` for each MR sequence, in the card's order (``p_sequence_T1Cplus``)."""
    return [SEQUENCE_PREFIX + key for key in column_keys(sequence_names)]
