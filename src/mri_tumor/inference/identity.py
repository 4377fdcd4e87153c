"""What names a model in every result that leaves the process (the PACS report, the API's
model list): its name, its card's version and the SHA-256 of its weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mri_tumor import __version__
from mri_tumor.card import ModelCard

if TYPE_CHECKING:
    from mri_tumor.inference.predictor import Predictor

WEIGHTS_PREFIX_CHARS = 12  # of the hash, in the version string: enough to tell models apart


@dataclass(frozen=True)
class ModelIdentity:
    """A model's name, card version and weights hash."""

    name: str
    card_version: str
    weights_sha256: str

    @classmethod
    def of(cls, predictor: Predictor) -> ModelIdentity:
        """The identity of a loaded predictor (hashes its weights file once)."""
        digest = ModelCard.weights_sha256(predictor.model_dir) if predictor.model_dir else ""
        return cls(predictor.name, predictor.card.version, digest)

    @property
    def algorithm_version(self) -> str:
        """The version a result names: package, card and the start of the weights' hash, so
        that two models of one package and card version differ
        (``0.1.0 card 0.1.0 weights 3f2a9c1d0b7e``)."""
        weights = (f" weights {self.weights_sha256[:WEIGHTS_PREFIX_CHARS]}"
                   if self.weights_sha256 else "")
        return f"{__version__} card {self.card_version}{weights}"
