"""Inference stage: one predictor that the CLI, the web app and the HTTP API all use.

    from mri_tumor import Predictor
    predictor = Predictor.load()            # the shipped model, loaded once
    results = predictor.predict(["a.jpg", "b.dcm"])

Each input gives one result per 2-D slice (a multi-frame DICOM file gives several), with a
calibrated confidence, all class probabilities and an out-of-distribution score. Inputs that
do not look like brain MRI slices are ``rejected``; unreadable ones are ``error``. Research
tool, not a diagnosis.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_tumor.calibration import softmax
from mri_tumor.card import DISCLAIMER, SHIPPED_MODEL_DIR, ModelCard
from mri_tumor.data.folders import DISPLAY_NAMES
from mri_tumor.data.preprocess import PreprocessSpec, normalize, to_model_pixels
from mri_tumor.data.reading import Frame, ImageReadError, ImageSource, read_frames
from mri_tumor.ood import OODGuard

OK, REJECTED, ERROR = "ok", "rejected", "error"
RESULT_KEYS = ("path", "status", "label", "confidence", "probabilities", "ood_score", "message")
NOT_MRI_MESSAGE = "This does not look like a brain MRI slice; no tumour class is given."


@dataclass
class Prediction:
    """The result for one image (or one frame of a multi-frame DICOM file)."""

    path: str
    status: str  # "ok", "rejected" (not a brain MRI slice) or "error" (unreadable)
    label: str | None = None
    confidence: float | None = None  # calibrated probability of ``label``
    probabilities: dict[str, float] | None = None
    ood_score: float | None = None  # higher = less like the training MRIs
    message: str = ""
    series: str | None = field(default=None, repr=False)  # opaque DICOM series key
    instance: int | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The public result: exactly ``RESULT_KEYS`` (what the CLI and API emit)."""
        return {key: getattr(self, key) for key in RESULT_KEYS}

    @property
    def display_label(self) -> str | None:
        return DISPLAY_NAMES.get(self.label, self.label) if self.label else None


class Predictor:
    """A loaded model plus everything needed to turn files into predictions."""

    def __init__(self, card: ModelCard, backend: str, model: torch.nn.Module | None = None,
                 onnx_session: Any = None, guard: OODGuard | None = None,
                 model_dir: Path | None = None) -> None:
        self.card = card
        self.backend = backend
        self.model = model
        self.onnx_session = onnx_session
        self.guard = guard
        self.model_dir = model_dir
        self.spec = PreprocessSpec.from_card(card)
        self.class_names = list(card.class_names)
        self.disclaimer = DISCLAIMER

    @classmethod
    def load(cls, model_dir: str | Path | None = None, backend: str = "torch",
             threads: int | None = None) -> Predictor:
        """Load a model folder (default: the shipped model) for the torch or onnx backend."""
        from mri_tumor.models import fuse_batch_norm, load_model

        directory = Path(model_dir) if model_dir else SHIPPED_MODEL_DIR
        if backend not in ("torch", "onnx"):
            raise ValueError(f"unknown backend {backend!r}; use torch or onnx")
        threads = threads or min(4, len(os.sched_getaffinity(0)))
        model, card, extras = load_model(directory)
        guard = OODGuard.from_tensors(extras, card.ood_threshold)
        if backend == "onnx":
            from mri_tumor.export import onnx_session

            session = onnx_session(directory, model, card, threads=threads)
            return cls(card, "onnx", None, session, guard, directory)
        torch.set_num_threads(threads)
        model = fuse_batch_norm(model).to(memory_format=torch.channels_last)
        return cls(card, "torch", model, None, guard, directory)

    # -- the pipeline: inputs -> frames -> pixels -> (logits, features) -> results -----------
    def predict(self, inputs: Sequence[ImageSource], names: Sequence[str] | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Predict every input; a bad input gives an ``error`` result, never an exception.

        ``names`` labels inputs that have no path (bytes, arrays, PIL images).
        """
        results: list[Prediction | None] = []
        pending: list[tuple[int, Frame]] = []
        for index, source in enumerate(inputs):
            name = names[index] if names else _default_name(source, index)
            try:
                frames = read_frames(source, name)
            except ImageReadError as error:
                results.append(Prediction(name, ERROR, message=str(error)))
                continue
            except (OSError, MemoryError) as error:
                results.append(Prediction(name, ERROR, message=f"{name}: cannot read ({error})"))
                continue
            for frame in frames:
                pending.append((len(results), frame))
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
        logits, features = self.forward(pixels)
        probabilities = softmax(logits, self.card.temperature)
        scores = self.guard.score(features) if self.guard else np.full(len(frames), np.nan)
        return [self._result(frame, probs, float(score))
                for frame, probs, score in zip(frames, probabilities, scores, strict=True)]

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, H, W) pixels -> (logits, pooled features) as numpy arrays."""
        batch = normalize(torch.from_numpy(np.ascontiguousarray(pixels)), self.spec)
        if self.backend == "onnx":
            logits, features = self.onnx_session.run(None, {"pixels": batch.numpy()})
            return logits, features
        assert self.model is not None
        with torch.inference_mode():
            maps = self.model.feature_maps(batch.contiguous(memory_format=torch.channels_last))
            features = self.model.pool_features(maps)
            logits = self.model.classify(features)
        return logits.numpy(), features.numpy()

    def _result(self, frame: Frame, probs: np.ndarray, score: float) -> Prediction:
        common = {"path": frame.name, "series": frame.series, "instance": frame.instance,
                  "ood_score": None if np.isnan(score) else round(score, 4)}
        if self.guard is not None and score > self.guard.threshold:
            return Prediction(status=REJECTED, message=NOT_MRI_MESSAGE, **common)
        index = int(np.argmax(probs))
        confidence = float(probs[index])
        message = ""
        if confidence < self.card.low_confidence_threshold:
            message = (f"Low confidence ({confidence:.0%}): the model is unsure; "
                       "review this image with particular care.")
        return Prediction(
            status=OK, label=self.class_names[index], confidence=round(confidence, 4),
            probabilities={n: round(float(p), 4) for n, p in zip(self.class_names, probs,
                                                                  strict=True)},
            message=message, **common)


def _default_name(source: object, index: int) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"input-{index}"


def series_summaries(results: Iterable[Prediction], tumour_threshold: float = 0.5
                     ) -> list[dict[str, Any]]:
    """One summary per DICOM series with two or more slices: the most likely tumour class
    over its slices and the slice it comes from, or "notumor" when no slice shows a tumour
    class with at least ``tumour_threshold`` probability."""
    by_series: dict[str, list[Prediction]] = {}
    for result in results:
        if result.series and result.status == OK:
            by_series.setdefault(result.series, []).append(result)
    summaries = []
    for series, slices in by_series.items():
        if len(slices) < 2:
            continue
        best_slice, best_class, best_p = None, None, -1.0
        for result in slices:
            for name, p in (result.probabilities or {}).items():
                if name != "notumor" and p > best_p:
                    best_slice, best_class, best_p = result, name, p
        assert best_slice is not None
        label = best_class if best_p >= tumour_threshold else "notumor"
        summaries.append({"series": series, "slices": len(slices), "label": label,
                          "probability": round(best_p, 4), "slice": best_slice.path})
    return summaries
