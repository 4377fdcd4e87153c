"""The model card: the one source of truth for class names, input size and normalisation.

It is saved as ``card.json`` next to the weights (``model.safetensors``) and every stage that
touches pixels or labels (training, evaluation, the predictor and so every front end) reads
its parameters from here instead of hard-coding them. Its ``training`` and ``metrics``
sections are typed records; keys this version does not know (from other versions) are kept
in their ``other`` dict and written back unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
SPLIT_FILE = "split.csv"
HISTORY_FILE = "history.json"
ONNX_FILE = "model.onnx"  # optional: an export the ONNX backend uses instead of its cache
# Bump when the exported graph's inputs or outputs change: cached exports are keyed by it.
ONNX_GRAPH_VERSION = 5

# Measured on the shipped model (docs/ood-guard.md, "Borderline"): 1.3% of its validation
# MRIs and 21% of held-out spine MRIs lie within 10% of the threshold.
BORDERLINE_BAND = 0.1

DISCLAIMER = ("Research tool, not a diagnosis. Results must be reviewed by a qualified "
              "clinician and must not be used for clinical decisions.")

Record = TypeVar("Record")


def _record(cls: type[Record], raw: Any) -> Record:
    """A section's dataclass from its JSON object; unknown keys go to ``other``."""
    raw = raw if isinstance(raw, dict) else {}
    known = {f.name for f in fields(cls)} - {"other"}  # type: ignore[arg-type]
    values = {k: v for k, v in raw.items() if k in known}
    other = {k: v for k, v in raw.items() if k not in known}
    return cls(**values, other=other)  # type: ignore[call-arg]


def _plain(record: Any) -> dict[str, Any]:
    """A section as its JSON object: its fields (None ones left out) plus ``other``."""
    values = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "other"}
    return {**{k: v for k, v in values.items() if v is not None}, **record.other}


@dataclass
class TrainingRecord:
    """How the model was trained: data, split, recipe and run (written by ``training``)."""

    data_fingerprint: str | None = None
    split_file: str = SPLIT_FILE
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)  # name, counts, repeats
    epochs_run: int | None = None
    best_epoch_val_acc: int | None = None  # the epoch whose weights ship
    best_epoch_val_loss: int | None = None
    seconds: float | None = None
    hardware: str | None = None
    devices: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    seed: int | None = None
    augment: dict[str, Any] | None = None
    ema_decay: float | None = None  # the weights are this moving average's (None: not averaged)
    pretrained: bool | None = None
    init_weights: str | None = None
    from_model: str | None = None
    # Weight and temperature of the distillation to ``from_model`` on its own sources
    # (``train --distill``); None: not distilled.
    distill: float | None = None
    distill_temperature: float | None = None
    weights_dtype: str | None = None  # "float16" or "float32"
    image_size: int | None = None  # the size it was trained at, when served at another
    refuse_dirs: list[str] | None = None  # folders of non-MRI examples the guard refuses
    refusal_examples: int | None = None
    # Temperature and guard cuts fitted with each source weighing the same (``calibrate
    # --per-source``); None: on all validation images pooled.
    per_source_fit: bool | None = None
    # Share of the validation MRIs (of each source, with per_source_fit) that each of the
    # guard's two cuts was set to refuse (``calibrate --reject-rate``); None: 0.005.
    reject_rate: float | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValidationMetrics:
    """Scores on the validation split (overall or one source's part of it)."""

    n: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    ece_uncalibrated: float | None = None
    ece: float | None = None
    ood_rejected: float | None = None  # share of these MRIs the guard refuses
    sequence_accuracy: float | None = None  # models with a sequence head
    sequence_ece: float | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass
class LowConfidence:
    """The "unsure" level: validation answers below ``threshold`` confidence were right
    ``accuracy_below`` of the time (``n_below`` answers), less than ``target``."""

    threshold: float = 0.5
    accuracy_below: float | None = None
    n_below: int = 0
    target: float | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelMetrics:
    """What was measured when the model was fitted (written by ``training``)."""

    validation: ValidationMetrics | None = None
    validation_by_source: dict[str, ValidationMetrics] = field(default_factory=dict)
    low_confidence: LowConfidence | None = None
    refusal_examples_refused: float | None = None  # share of the non-MRI examples refused
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any) -> ModelMetrics:
        """The section from its JSON object."""
        metrics = _record(cls, raw)
        if metrics.validation is not None:
            metrics.validation = _record(ValidationMetrics, metrics.validation)
        metrics.validation_by_source = {
            source: _record(ValidationMetrics, values)
            for source, values in (metrics.validation_by_source or {}).items()}
        if metrics.low_confidence is not None:
            metrics.low_confidence = _record(LowConfidence, metrics.low_confidence)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """The section as its JSON object."""
        out = _plain(self)
        for key in ("validation", "low_confidence"):
            if key in out:
                out[key] = _plain(out[key])
        if self.validation_by_source:
            out["validation_by_source"] = {source: _plain(values) for source, values
                                           in self.validation_by_source.items()}
        else:
            out.pop("validation_by_source", None)
        return out


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and feed it pixels exactly as in training."""

    architecture: str
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    # How each class is named to people ("No tumor" for notumor); a class not listed is
    # shown as it is named.
    display_names: dict[str, str] = field(default_factory=dict)
    # The class that means "no tumour", if the model has one: a DICOM series is summarised
    # by its most likely other class.
    normal_class: str | None = None
    # How labelled folders are read for this model (data.folders.LABEL_SCHEMES): "classes"
    # (glioma, meningioma, notumor, pituitary) or "types" (the tumour types).
    label_scheme: str = "classes"
    # A second output: the MR sequence, its classes in output order and its temperature
    # (empty: the model has no sequence head).
    sequence_names: list[str] = field(default_factory=list)
    sequence_temperature: float = 1.0
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
    training: TrainingRecord = field(default_factory=TrainingRecord)
    metrics: ModelMetrics = field(default_factory=ModelMetrics)
    notes: str = DISCLAIMER
    # Where an adapted model comes from (written by ``adapt``): {"parent": {"name",
    # "weights_sha256"}, "site_data": {"fingerprint", "counts"}, "gate": {...}}; None (and
    # left out of card.json) for a model trained from scratch or a card older than it.
    lineage: dict[str, Any] | None = None
    # How slice answers become one answer per scan (``scans.ScanRule``: window, logistic
    # map, threshold, what it was fitted on); None (left out of card.json): the unfitted
    # default rule.
    scan_rule: dict[str, Any] | None = None
    # Guard scores within this fraction of ``ood_threshold`` (either side) are borderline:
    # the verdict stands, and its message says that it is close (a resized or re-saved copy
    # may fall on the other side). None (left out of card.json): BORDERLINE_BAND.
    ood_borderline: float | None = None
    # The guard's density on block statistics (``ood.FeatureDensity``): {"block", "reject_rate",
    # "fitted_on": {"split", "train_rows", "val_rows"}, "validation_refused"}; its numbers
    # are in the weights file. None (left out of card.json): the guard has no density.
    ood_density: dict[str, Any] | None = None
    # What a refused image looks like (``models.resemblance``): {"kinds": [...], "phrases":
    # {kind: words}, "min_probability": p, "cross_validated": {...}}, with its numbers in
    # resemblance.safetensors; None (left out of card.json): refusals do not say.
    resemblance: dict[str, Any] | None = None

    @property
    def borderline_band(self) -> float:
        """The guard's borderline band, as a fraction of its threshold."""
        return BORDERLINE_BAND if self.ood_borderline is None else self.ood_borderline

    def display_name(self, class_name: str) -> str:
        """How ``class_name`` is shown to people."""
        return self.display_names.get(class_name, class_name)

    def to_dict(self) -> dict[str, Any]:
        """The card as its JSON object."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["training"] = _plain(self.training)
        out["metrics"] = self.metrics.to_dict()
        for optional in ("lineage", "scan_rule", "ood_borderline", "ood_density", "resemblance"):
            if out[optional] is None:
                del out[optional]
        return json.loads(json.dumps(out, default=_jsonable))  # deep copy, JSON types only

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

    @staticmethod
    def weights_sha256(directory: Path) -> str:
        """SHA-256 of a model folder's weights file: what identifies the exact model in
        lineage records and in results written to a PACS."""
        return hashlib.sha256(ModelCard.weights_path(directory).read_bytes()).hexdigest()

    def split_path(self, directory: Path) -> Path:
        """The split CSV this model was trained on, in its model folder ``directory``."""
        return Path(directory) / self.training.split_file

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
        values = {k: v for k, v in raw.items() if k in known}
        if not isinstance(values.get("lineage", {}), dict | None):
            raise ValueError(f"{path}: not a valid model card (lineage must be an object)")
        try:
            values["training"] = _record(TrainingRecord, raw.get("training"))
            values["metrics"] = ModelMetrics.from_dict(raw.get("metrics"))
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"{path}: not a valid model card ({error})") from None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


SEGMENTATION_ARCHITECTURE = "efficient_unet"


@dataclass
class SegmentationCard:
    """The segmentation model's card (``card.json`` beside its weights): what it outlines,
    how pixels are prepared, the post-processing, the data it saw and what was measured."""

    image_size: int
    mean: list[float]
    std: list[float]
    architecture: str = SEGMENTATION_ARCHITECTURE
    task: str = "segmentation"
    # What a mask pixel means: the abnormality the reference masks outline.
    target: str = "FLAIR abnormality (tumour and surrounding signal change)"
    sequence: str = "FLAIR"
    # Further co-registered sequences it reads, one input channel each after ``sequence``;
    # empty: ``sequence`` alone, its grey value in every channel.
    companions: list[str] = field(default_factory=list)
    # 2.5-D: the slices before and after in the second and third channel, taken
    # ``data.segmentation.neighbour_step`` slices away; ``stack_slices`` is the median stack
    # length of training. A slice image alone is read with itself as its neighbours.
    neighbours: bool = False
    stack_slices: int = 0
    # The classifier's classes whose lesions the training masks outline: an outline of
    # another class is said to be less reliable.
    classes_seen: list[str] = field(default_factory=list)  # the classifier's, of its data
    input_channels: int = 3
    intensity: str = "equalize"
    threshold: float = 0.5
    min_component_share: float = 0.1
    fill_holes: bool = True
    loss: str = "soft Dice (over the batch) + binary cross-entropy"
    version: str = ""
    created: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        """The card as its JSON object."""
        return json.loads(json.dumps(asdict(self), default=_jsonable))

    def save(self, directory: Path) -> Path:
        """Write ``card.json`` into ``directory`` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> SegmentationCard:
        """Read a segmentation model's ``card.json``; ValueError if it is not one."""
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no model card at {path}")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a valid model card ({error})") from None
        if not isinstance(raw, dict) or raw.get("task") != "segmentation":
            raise ValueError(f"{path}: not a segmentation model's card (a classifier's? "
                             "segmentation needs the 'segment' model)")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as error:
            raise ValueError(f"{path}: not a valid segmentation card ({error})") from None
