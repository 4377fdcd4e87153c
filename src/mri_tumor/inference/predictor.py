"""The predictor: a loaded model (card + backend) and the one batching loop that turns decoded
frames into predictions. Every front end and evaluation go through it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.preprocess import PreprocessSpec, normalize_array, to_model_pixels
from mri_tumor.data.reading import (
    Frame,
    ImageSource,
)
from mri_tumor.inference.backends import BACKENDS, DEFAULT_BACKEND, OnnxBackend, TorchBackend
from mri_tumor.inference.decode import assemble_scans, decode, default_name
from mri_tumor.inference.model_folder import resolve_model
from mri_tumor.inference.results import (
    BLANK_MESSAGE,
    BORDERLINE_ACCEPTED,
    BORDERLINE_REFUSED,
    NOT_MRI_MESSAGE,
    OK,
    REJECTED,
    Prediction,
    format_probability,
)
from mri_tumor.models.calibration import softmax
from mri_tumor.models.ood import OODGuard
from mri_tumor.models.resemblance import Resemblance

# Frames per network call: on 2 cores batches of 8 ran faster than 32 or 64 (better cache
# use) and keep activation memory small; ``predict``'s batch_size only groups the decoding.
NETWORK_BATCH = 8


# Frames whose pixels, at the model's input size, vary less than this (standard deviation in
# 8-bit grey levels) are blank: a network can still give them a confident class, and the
# feature-space guard alone let a uniform grey image through. Brain slices vary by tens.
BLANK_MAX_STD = 2.0


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
        self.resemblance = (Resemblance.load(model_dir, (card.resemblance or {}).get("kinds", []))
                            if model_dir else None)

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
        return self.predict_items(self.decode_all(inputs, names), batch_size)

    def decode_all(self, inputs: Sequence[ImageSource],
                   names: Sequence[str] | None = None) -> list[Prediction | Frame]:
        """The inputs decoded the one way (``decode``), in order, with the files of each DICOM
        series stacked into one scan: frames, and results for inputs that gave none."""
        items: list[Prediction | Frame] = []
        for index, source in enumerate(inputs):
            name = names[index] if names else default_name(source, index)
            decoded = decode(source, name, self.name)
            items.extend([decoded] if isinstance(decoded, Prediction) else decoded)
        return assemble_scans(items)

    def predict_items(self, items: Sequence[Prediction | Frame], batch_size: int = 32,
                      predict_frames: Callable[[list[Frame]], list[Prediction]] | None = None,
                      ) -> list[Prediction]:
        """The one batching loop: one result per decoded item, in order. Results (inputs that
        gave no frame) pass through; frames are predicted ``batch_size`` at a time, by
        ``predict_frames`` when given (the API's queue retries a failed batch frame by frame)."""
        run = predict_frames or self.predict_frames
        frames = [item for item in items if not isinstance(item, Prediction)]
        predicted = iter([prediction for start in range(0, len(frames), batch_size)
                          for prediction in run(frames[start:start + batch_size])])
        return [item if isinstance(item, Prediction) else next(predicted) for item in items]

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
        results = [self._result(frame, probabilities[i], float(outputs["ood_score"][i]),
                                bool(blank[i]), None if sequences is None else sequences[i])
                   for i, frame in enumerate(frames)]
        return self._say_what_it_resembles(results, outputs["features"], blank)

    def _say_what_it_resembles(self, results: list[Prediction], features: np.ndarray,
                               blank: np.ndarray) -> list[Prediction]:
        """Content refusals with the kind of image they look like most (the card's
        ``resemblance``), where the model has one and it is sure enough."""
        settings = self.card.resemblance or {}
        refused = [i for i, r in enumerate(results) if r.status == REJECTED and not blank[i]]
        if self.resemblance is None or not refused:
            return results
        kinds = self.resemblance.nearest(features[refused],
                                         float(settings.get("min_probability", 0.0)))
        for i, kind in zip(refused, kinds, strict=True):
            if kind is not None:
                phrase = settings.get("phrases", {}).get(kind, kind)
                results[i].resembles = kind
                # Right after the refusal itself, before a borderline note.
                results[i].message = results[i].message.replace(
                    NOT_MRI_MESSAGE, f"{NOT_MRI_MESSAGE} Of the kinds of image the guard "
                    f"knows, it looks most like {phrase}.", 1)
        return results

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
        common: dict[str, Any] = {
            "path": frame.name, "series": frame.series, "instance": frame.instance,
            "ood_score": None if np.isnan(score) else round(score, 4), "model": self.name,
            "slice_index": frame.slice_index, "scan": frame.scan, "note": frame.note,
            "named_sequence": frame.named_sequence}
        if blank:
            return Prediction(status=REJECTED, message=BLANK_MESSAGE, **common)
        borderline = self._borderline(score)
        if self.ood_threshold is not None and score > self.ood_threshold:
            message = f"{NOT_MRI_MESSAGE} {BORDERLINE_REFUSED}" if borderline else NOT_MRI_MESSAGE
            return Prediction(status=REJECTED, message=message, **common)
        index = int(np.argmax(probs))
        confidence = float(probs[index])
        notes = [BORDERLINE_ACCEPTED] if borderline else []
        if confidence < self.card.low_confidence_threshold:
            notes.insert(0, unsure_message(confidence, self.card))
        message = " ".join(notes)
        return Prediction(
            status=OK, label=self.class_names[index], confidence=round(confidence, 4),
            display_label=self.card.display_name(self.class_names[index]),
            probabilities={n: round(float(p), 4) for n, p in zip(self.class_names, probs,
                                                                  strict=True)},
            message=message, **common, **self._sequence(sequence_probs))

    def _borderline(self, score: float) -> bool:
        """Whether a guard score lies within the card's borderline band of the threshold."""
        if self.ood_threshold is None or np.isnan(score):
            return False
        return abs(score - self.ood_threshold) <= self.card.borderline_band * self.ood_threshold

    def _sequence(self, probs: np.ndarray | None) -> dict[str, Any]:
        """The ``sequence`` fields of a result (none for a model without a sequence head)."""
        if probs is None:
            return {}
        names = self.card.sequence_names
        return {"sequence": names[int(np.argmax(probs))],
                "sequence_probabilities": {n: round(float(p), 4)
                                           for n, p in zip(names, probs, strict=True)}}


def unsure_message(confidence: float, card: ModelCard) -> str:
    """The note on an answer below the card's low-confidence threshold: the confidence as the
    result's card shows it (``format_probability`` of the stored
    4-decimal confidence), the level it is below and, when the card records it, what that
    level means on the model's calibrated validation data. Where the shown confidence rounds
    up to the level (93.96% shows as 94.0% next to a 94% level) the unrounded figure is added,
    so that the note never reads as "94% is below 94%"."""
    threshold = card.low_confidence_threshold
    level_value = round(threshold * 100, 6)
    level = f"{level_value:g}%"  # with the decimals it has: 94%, 93.75%
    said = format_probability(round(confidence, 4))  # as the result stores and shows it
    figure = f"{said} confidence"
    if float(said.strip("<> %")) >= level_value:  # the shown figure rounds up to the level
        exact = next((f"{confidence * 100:.{places}f}%" for places in range(2, 16)
                      if round(confidence * 100, places) < level_value),
                     f"{confidence * 100:.15f}%")
        figure += f", {exact} before rounding"
    measured = card.metrics.low_confidence
    meaning = ""
    if measured is not None and measured.accuracy_below is not None:
        meaning = (f": on the model's validation images, answers below {level} confidence "
                   f"were right {measured.accuracy_below:.0%} of the time "
                   f"({measured.n_below} images)")
    return (f"Unsure ({figure}, below this model's {level} level){meaning}. Review this "
            "image with particular care.")
