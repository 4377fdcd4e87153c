"""The model card: the one source of truth for class names, input size and normalisation.

It is saved as ``card.json`` next to the weights (``model.safetensors``) and every stage that
touches pixels or labels (training, evaluation, the predictor and so every front end) reads
its parameters from here instead of hard-coding them.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # optional: an export the ONNX backend uses instead of its cache
# Bump when the exported graph's inputs or outputs change: cached exports are keyed by it.
ONNX_GRAPH_VERSION = 3
SHIPPED_MODEL_DIR = Path(__file__).parent / "weights" / "efficientnet_lite0"

DISCLAIMER = ("Research tool, not a diagnosis. Results must be reviewed by a qualified "
              "clinician and must not be used for clinical decisions.")


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and feed it pixels exactly as in training."""

    architecture: str
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    # How a decoded image becomes model input: any mode -> 8-bit grayscale -> the grey
    # channel repeated `input_channels` times. MRI slices are grey in content, so this
    # removes the RGB/BGR ambiguity of the seed project for good.
    input_channels: int = 3
    color_mode: str = "grayscale"
    # Intensity standardisation before normalising (data.preprocess): "equalize" (per-image
    # histogram equalisation) or "none" (pixels / 255; cards written before it existed).
    intensity: str = "none"
    temperature: float = 1.0
    low_confidence_threshold: float = 0.6
    ood_threshold: float | None = None
    version: str = ""
    created: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        """Write ``card.json`` into ``directory`` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @staticmethod
    def weights_path(directory: Path) -> Path:
        """``model.safetensors`` in a model folder; FileNotFoundError if it is not there."""
        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no weights at {path}")
        return path

    def split_path(self, directory: Path) -> Path:
        """The split CSV this model was trained on, in its model folder ``directory``."""
        return Path(directory) / self.training.get("split_file", "split.csv")

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        """Read ``card.json`` from a model directory; unknown keys are ignored."""
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no model card at {path}: is {directory} a model folder "
                                    f"(it should hold {CARD_FILE} and {WEIGHTS_FILE})?")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a valid model card ({error})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a valid model card (expected a JSON object)")
        required = {f.name for f in fields(cls) if f.default is MISSING
                    and f.default_factory is MISSING}
        if missing := sorted(required - raw.keys()):
            raise ValueError(f"{path}: not a valid model card (missing {', '.join(missing)})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
