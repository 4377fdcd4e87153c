"""Inference stage: one predictor that the CLI, the web app and the HTTP API all use.

    from mri_tumor import Predictor
    predictor = Predictor.load()            # the shipped model, loaded once
    results = predictor.predict(["a.jpg", "b.dcm"])

Each input gives one result per 2-D slice (a multi-frame DICOM file gives several), with a
calibrated confidence, all class probabilities and an out-of-distribution score. Inputs that
do not look like brain MRI slices, or DICOM files whose header says another modality (CT...),
are ``rejected``; unreadable ones are ``error``. Research tool, not a diagnosis.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor.calibration import softmax
from mri_tumor.card import (
    DISCLAIMER,
    ONNX_FILE,
    ONNX_GRAPH_VERSION,
    ModelCard,
    resolve_model,
)
from mri_tumor.data.preprocess import PreprocessSpec, normalize_array, to_model_pixels
from mri_tumor.data.reading import (
    Frame,
    ImageReadError,
    ImageSource,
    NotMRIError,
    read_frames,
    stack_series,
)
from mri_tumor.ood import OODGuard

# Frames per network call: on 2 cores batches of 8 ran faster than 32 or 64 (better cache
# use) and keep activation memory small; ``predict``'s batch_size only groups the decoding.
NETWORK_BATCH = 8

logger = logging.getLogger(__name__)


class Status(StrEnum):
    """What became of an input: classified, refused as not a brain MRI, or unreadable."""

    OK = "ok"
    REJECTED = "rejected"  # not a brain MRI slice (by its pixels or its DICOM header)
    ERROR = "error"  # unreadable


OK, REJECTED, ERROR = Status.OK, Status.REJECTED, Status.ERROR
RESULT_KEYS = ("path", "status", "label", "confidence", "probabilities", "ood_score", "message",
               "model")
# Results of a model with a sequence head also carry these.
SEQUENCE_KEYS = ("sequence", "sequence_probabilities")
NOT_MRI_MESSAGE = "This does not look like a brain MRI slice; no tumour class is given."
BLANK_MESSAGE = ("This image is blank (almost one grey level), so it does not look like a brain "
                 "MRI slice; no tumour class is given.")
# Frames whose pixels, at the model's input size, vary less than this (standard deviation in
# 8-bit grey levels) are blank: a network can still give them a confident class, and the
# feature-space guard alone let a uniform grey image through. Brain slices vary by tens.
BLANK_MAX_STD = 2.0


@dataclass
class Prediction:
    """The result for one image (or one frame of a multi-frame DICOM file)."""

    path: str
    status: Status
    label: str | None = None
    confidence: float | None = None  # calibrated probability of ``label``
    probabilities: dict[str, float] | None = None
    ood_score: float | None = None  # higher = less like the training MRIs
    message: str = ""
    series: str | None = field(default=None, repr=False)  # opaque DICOM series key
    instance: int | None = field(default=None, repr=False)
    display_label: str | None = field(default=None, repr=False)  # ``label`` as the card shows it
    model: str | None = None  # the name of the model that gave it
    sequence: str | None = None  # MR sequence (models with a sequence head)
    sequence_probabilities: dict[str, float] | None = None
    slice_index: int | None = None  # position in its scan's axial stack (volumes, series)
    scan: str | None = field(default=None, repr=False)  # the scan, as the user named it
    note: str = field(default="", repr=False)  # about the scan, for its summary
    by_header: bool = field(default=False, repr=False)  # refused by its DICOM header

    def to_dict(self) -> dict[str, Any]:
        """The public result: ``RESULT_KEYS``, plus ``SEQUENCE_KEYS`` when it names a
        sequence (what the CLI and API emit)."""
        keys = RESULT_KEYS + (SEQUENCE_KEYS if self.sequence is not None else ())
        if self.slice_index is not None:
            keys += ("slice_index",)
        return {key: getattr(self, key) for key in keys}


class TorchBackend:
    """The network and guard as one torch module (``export.InferenceGraph``)."""

    name = "torch"

    def __init__(self, graph: Any, guard: OODGuard | None) -> None:
        self.graph = graph
        self.guard = guard
        self.ood_threshold = guard.threshold if guard is not None else None

    @classmethod
    def load(cls, directory: Path, threads: int) -> tuple[TorchBackend, ModelCard]:
        """The model folder's weights, batch norm fused, channels-last; and its card."""
        import torch

        from mri_tumor.export import InferenceGraph
        from mri_tumor.models import fuse_batch_norm, load_model

        torch.set_num_threads(threads)
        model, card, extras = load_model(directory)
        guard = OODGuard.from_tensors(extras, card.ood_threshold)
        model = fuse_batch_norm(model).to(memory_format=torch.channels_last)
        return cls(InferenceGraph(model, guard).eval(), guard), card

    @property
    def model(self) -> Any:
        """The torch network, e.g. for Grad-CAM."""
        return self.graph.model

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised float32 (B, C, H, W) -> the graph's outputs by name (``logits``,
        ``features``, and ``ood_score`` and ``sequence_logits`` when the model has them)."""
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            outputs = self.graph(tensor)
        return {name: t.numpy() for name, t in zip(self.graph.output_names, outputs,
                                                      strict=True)}


class OnnxBackend:
    """One self-contained ONNX graph (network and guard score) in ONNX Runtime: no torch in
    the process, which keeps its memory small and its start fast."""

    name = "onnx"
    model = None  # no torch network to explain: Grad-CAM loads one when asked

    def __init__(self, session: Any, ood_threshold: float | None) -> None:
        self.session = session
        self.ood_threshold = ood_threshold
        self.output_names = [output.name for output in session.get_outputs()] if session else []

    @classmethod
    def load(cls, directory: Path, threads: int) -> tuple[OnnxBackend, ModelCard]:
        """The folder's ``model.onnx`` (or a cached export, made on first use); its card."""
        card = ModelCard.load(directory)
        path = ensure_onnx_file(directory, card)
        try:
            session = _onnx_session(path, threads)
        except Exception as error:  # onnxruntime raises its own types, e.g. InvalidProtobuf
            reason = str(error).splitlines()[0][:200]
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({reason}); delete it, "
                             "or write it again with mri-tumor export --force") from None
        height_width = session.get_inputs()[0].shape[2:]  # names when dynamic
        fixed_size = all(isinstance(d, int) for d in height_width)
        if fixed_size and height_width != [card.image_size, card.image_size]:
            raise ValueError(f"{path} takes {height_width} pixels but the card says "
                             f"{card.image_size}; re-export it with mri-tumor export")
        has_score = "ood_score" in [o.name for o in session.get_outputs()]
        if card.ood_threshold is not None and not has_score:
            raise ValueError(f"{path} has no ood_score output but the model has an "
                             "out-of-distribution guard; re-export it with mri-tumor export")
        return cls(session, card.ood_threshold if has_score else None), card

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised float32 (B, C, H, W) -> the graph's outputs by name (as the torch
        backend's)."""
        return dict(zip(self.output_names, self.session.run(None, {"pixels": batch}),
                        strict=True))


BACKENDS: dict[str, type[TorchBackend] | type[OnnxBackend]] = {
    "torch": TorchBackend, "onnx": OnnxBackend}
# The default of every front end and of evaluation: same numbers as torch (tested), and
# several times faster to start and to run on CPU.
DEFAULT_BACKEND = "onnx"


def decode(source: ImageSource, name: str, model: str | None = None) -> list[Frame] | Prediction:
    """The one way an input becomes model frames: its 2-D grey frames, or the result that
    says why there are none (``rejected`` for a DICOM file whose header says CT, US...;
    ``error`` for anything unreadable), naming ``model``. Never raises for a bad input."""
    def failed(status: Status, message: str) -> Prediction:
        return Prediction(name, status, message=message, model=model)

    try:
        frames = read_frames(source, name)
    except NotMRIError as error:
        refused = failed(REJECTED, str(error))
        refused.by_header = True
        if error.series:  # the files of one series get one refusal for the series
            refused.series = error.series
            refused.scan = str(Path(name).parent) if isinstance(source, str | Path) else name
        return refused
    except ImageReadError as error:
        return failed(ERROR, str(error))
    except MemoryError:
        return failed(ERROR, f"{name}: too large to read in the memory available")
    except OSError as error:
        return failed(ERROR, f"{name}: cannot read this file "
                             f"({error.strerror or type(error).__name__})")
    except Exception as error:  # any decoder failure is a bad file, never a crash
        logger.warning("decoding an input failed: %s", type(error).__name__)
        return failed(ERROR, f"{name}: cannot read this file")
    if not frames:
        return failed(ERROR, f"{name}: holds no image")
    return frames


def assemble_scans(items: Sequence[Prediction | Frame]) -> list[Prediction | Frame]:
    """Decoded inputs in order, with the slices of each DICOM series stacked into one axial
    scan (``data.reading.stack_series``); failed inputs stay where they were."""
    return stack_series(items)


class Predictor:
    """A loaded model (its card and a backend) plus everything needed to turn inputs into
    predictions. Every front end and evaluation go through it."""

    def __init__(self, card: ModelCard, backend: TorchBackend | OnnxBackend,
                 model_dir: Path | None = None, name: str | None = None) -> None:
        self.card = card
        # The model's name in results: a shipped model's name, or its folder's name.
        self.name = name or (Path(model_dir).resolve().name if model_dir else "model")
        self.backend = backend
        # Scores above this are rejected as not a brain MRI (None: the model has no guard).
        self.ood_threshold = backend.ood_threshold
        self.model_dir = model_dir
        self.spec = PreprocessSpec.from_card(card)
        self.class_names = list(card.class_names)
        self.disclaimer = DISCLAIMER

    @property
    def model(self) -> Any:
        """The torch network (torch backend only), e.g. for Grad-CAM."""
        return self.backend.model

    @property
    def guard(self) -> OODGuard | None:
        """The torch guard (torch backend only; the ONNX graph computes the score itself)."""
        return getattr(self.backend, "guard", None)

    @classmethod
    def load(cls, model: str | Path | None = None, backend: str = DEFAULT_BACKEND,
             threads: int | None = None) -> Predictor:
        """Load a shipped model by name (``default``, ``types``) or a model folder (default:
        the default shipped model) for the torch or onnx backend."""
        name, directory = resolve_model(model)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
        threads = threads or min(4, len(os.sched_getaffinity(0)))
        loaded, card = BACKENDS[backend].load(directory, threads)
        return cls(card, loaded, directory, name)

    # -- the pipeline: inputs -> frames -> pixels -> (logits, features) -> results -----------
    def predict(self, inputs: Sequence[ImageSource], names: Sequence[str] | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Predict every input; a bad input gives an ``error`` result (a non-MR DICOM file a
        ``rejected`` one), never an exception.

        ``names`` labels inputs that have no path (bytes, arrays, PIL images).
        """
        items: list[Prediction | Frame] = []
        for index, source in enumerate(inputs):
            name = names[index] if names else _default_name(source, index)
            decoded = decode(source, name, self.name)
            items.extend([decoded] if isinstance(decoded, Prediction) else decoded)
        results: list[Prediction | None] = []
        pending: list[tuple[int, Frame]] = []
        for item in assemble_scans(items):
            if isinstance(item, Prediction):
                results.append(item)
            else:
                pending.append((len(results), item))
                results.append(None)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            predictions = self.predict_frames([frame for _, frame in chunk])
            for (slot, _), prediction in zip(chunk, predictions, strict=True):
                results[slot] = prediction
        return [r for r in results if r is not None]

    def predict_frames(self, frames: Sequence[Frame]) -> list[Prediction]:
        """Predict already-decoded grayscale frames as one batch."""
        if not frames:
            return []
        pixels = np.stack([to_model_pixels(f.image, self.spec.image_size) for f in frames])
        outputs = self.network_outputs(pixels)
        probabilities = softmax(outputs["logits"], self.card.temperature)
        sequences = outputs.get("sequence_logits")
        if sequences is not None:
            sequences = softmax(sequences, self.card.sequence_temperature)
        blank = pixels.reshape(len(pixels), -1).std(axis=1) < BLANK_MAX_STD
        return [self._result(frame, probabilities[i], float(outputs["ood_score"][i]),
                             bool(blank[i]), None if sequences is None else sequences[i])
                for i, frame in enumerate(frames)]

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (B, H, W) pixels -> logits, pooled features and out-of-distribution scores
        (NaN without a guard), as numpy arrays."""
        outputs = self.network_outputs(pixels)
        return outputs["logits"], outputs["features"], outputs["ood_score"]

    def network_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, H, W) pixels -> every output of the network by name: ``logits``,
        ``features``, ``ood_score`` (NaN without a guard) and, for a model with a sequence
        head, ``sequence_logits``."""
        parts = [self.backend.run(normalize_array(pixels[start:start + NETWORK_BATCH],
                                                  self.spec))
                 for start in range(0, len(pixels), NETWORK_BATCH)]
        outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        if "ood_score" not in outputs:  # a model without a guard
            outputs["ood_score"] = np.full(len(pixels), np.nan)
        outputs["ood_score"] = outputs["ood_score"].astype(np.float64)
        return outputs

    def _result(self, frame: Frame, probs: np.ndarray, score: float,
                blank: bool = False, sequence_probs: np.ndarray | None = None) -> Prediction:
        common = {"path": frame.name, "series": frame.series, "instance": frame.instance,
                  "ood_score": None if np.isnan(score) else round(score, 4),
                  "model": self.name, "slice_index": frame.slice_index, "scan": frame.scan,
                  "note": frame.note}
        if blank:
            return Prediction(status=REJECTED, message=BLANK_MESSAGE, **common)
        if self.ood_threshold is not None and score > self.ood_threshold:
            return Prediction(status=REJECTED, message=NOT_MRI_MESSAGE, **common)
        index = int(np.argmax(probs))
        confidence = float(probs[index])
        message = ""
        if confidence < self.card.low_confidence_threshold:
            message = unsure_message(confidence, self.card)
        return Prediction(
            status=OK, label=self.class_names[index], confidence=round(confidence, 4),
            display_label=self.card.display_name(self.class_names[index]),
            probabilities={n: round(float(p), 4) for n, p in zip(self.class_names, probs,
                                                                  strict=True)},
            message=message, **common, **self._sequence(sequence_probs))

    def _sequence(self, probs: np.ndarray | None) -> dict[str, Any]:
        """The ``sequence`` fields of a result (none for a model without a sequence head)."""
        if probs is None:
            return {}
        names = self.card.sequence_names
        return {"sequence": names[int(np.argmax(probs))],
                "sequence_probabilities": {n: round(float(p), 4)
                                           for n, p in zip(names, probs, strict=True)}}


def unsure_message(confidence: float, card: ModelCard) -> str:
    """The note on an answer below the card's low-confidence threshold, saying what the
    threshold means on the model's calibrated validation data when the card records it."""
    threshold = card.low_confidence_threshold
    measured = card.metrics.low_confidence
    if measured is not None and measured.accuracy_below is not None:
        meaning = (f"on the model's validation images, answers below {threshold:.0%} "
                   f"confidence were right {measured.accuracy_below:.0%} of the time "
                   f"({measured.n_below} images)")
    else:
        meaning = f"below this model's {threshold:.0%} threshold"
    return (f"Unsure ({confidence:.0%} confidence): {meaning}. Review this image with "
            "particular care.")


def _cache_dir() -> Path:
    base = os.environ.get("MRI_TUMOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mri-tumor")
    return Path(base)


def ensure_onnx_file(model_dir: Path, card: ModelCard) -> Path:
    """``model.onnx`` in the model folder if present, else a cached export made on first use
    (keyed by the input size, the weights' hash and the graph version; ``$MRI_TUMOR_CACHE``
    or ``~/.cache/mri-tumor``)."""
    path = model_dir / ONNX_FILE
    if path.is_file():
        return path
    digest = hashlib.sha256(ModelCard.weights_path(model_dir).read_bytes()).hexdigest()[:16]
    # The graph carries the guard's threshold (the refusal direction's scale): key it too.
    threshold = hashlib.sha256(repr(card.ood_threshold).encode()).hexdigest()[:8]
    path = _cache_dir() / (f"{card.architecture}-{card.image_size}px-{digest}-{threshold}"
                           f"-v{ONNX_GRAPH_VERSION}.onnx")
    if path.is_file():
        return path
    from mri_tumor.export import export_onnx
    from mri_tumor.models import load_model

    model, _, extras = load_model(model_dir)
    guard = OODGuard.from_tensors(extras, card.ood_threshold)
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        export_onnx(model, card, tmp, guard)
        tmp.replace(path)
    except OSError:  # no writable cache (read-only home, say): a private temporary copy
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mri-tumor-")) / path.name
        export_onnx(model, card, path, guard)
    return path


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle worker threads must not spin: they would steal the CPU from decoding and from the
    # next request's preprocessing (measured: 30 ms instead of 11 ms per image on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _default_name(source: object, index: int) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"input-{index}"
