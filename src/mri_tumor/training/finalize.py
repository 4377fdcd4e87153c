"""After the run: temperature, confidence level, guard and refusal fitted on the split's
validation side and written into the card (``finalize``); ``refit`` does the same for a finished
model (the ``calibrate`` command)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from mri_tumor.card import ModelCard, ValidationMetrics
from mri_tumor.data.folders import naming
from mri_tumor.data.preprocess import PreprocessSpec
from mri_tumor.data.rows import load_pixels, load_refusal_pixels, read_split_under, source_roots
from mri_tumor.metrics import accuracy, expected_calibration_error, macro_f1
from mri_tumor.models import half_precision_state, save_weights
from mri_tumor.models.calibration import fit_low_confidence, fit_temperature, softmax
from mri_tumor.models.network import Network
from mri_tumor.models.ood import DEFAULT_REJECT_RATE, OODGuard, fit_guard, fit_refusal
from mri_tumor.training.density import density_record, fit_density
from mri_tumor.training.outputs import predict_outputs, predict_statistics


def finalize(model: Network, card: ModelCard, train_pixels: torch.Tensor,
             train_labels: torch.Tensor, val_pixels: torch.Tensor, val_labels: torch.Tensor,
             out: Path, half: bool = True, val_sources: list[str] | None = None,
             refuse_pixels: torch.Tensor | None = None, per_source: bool = False,
             reject_rate: float | None = None, density: bool = True) -> ModelCard:
    """Fit what is fitted after training, measure, and save weights + card.

    The temperature and the out-of-distribution threshold are fitted on the validation split
    (with ``per_source``, each source in ``val_sources`` weighing the same, and the guard's
    cuts the highest of the sources'; each cut refuses ``reject_rate`` of them, 0.005 unless
    given), the guard's class statistics on the training split
    (without augmentation), its refusal direction on ``refuse_pixels`` (images that are not
    brain MRI) when given, and with ``density`` (for a network that gives block statistics)
    its density on the training and validation MRIs (``training.density``). Metrics are
    recorded overall and per source. Weights are stored in fp16 only if that leaves every
    validation prediction and refusal unchanged.
    """
    spec = PreprocessSpec.from_card(card)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    logits, val_features = predict_outputs(model, val_pixels, spec)
    _, train_features = predict_outputs(model, train_pixels, spec)
    labels, sequences = _split_labels(val_labels)
    predicted = logits.argmax(1)
    sources = np.asarray(val_sources or [""] * len(labels))
    groups = sources if per_source else None
    card.temperature = fit_temperature(logits, labels, groups=groups)
    sequence_logits = _sequence_logits(model, val_features)
    if sequence_logits is not None:
        assert sequences is not None  # a sequence head is trained on sequence labels
        card.sequence_temperature = fit_temperature(sequence_logits, sequences, groups=groups)
    rate = reject_rate or DEFAULT_REJECT_RATE
    guard = fit_guard(train_features, _split_labels(train_labels)[0], val_features,
                      len(card.class_names), reject_rate=rate, heldout_groups=groups)
    card.ood_density, val_statistics = None, None
    if density and model.guard_block is not None:
        guard.density, val_statistics = fit_density(model, spec, train_pixels, val_pixels, rate,
                                                    groups)
        card.ood_density = density_record(
            guard.density, rate, card.training.split_file or "split.csv", len(train_pixels),
            len(val_pixels), float(guard.density.refuses(val_statistics).mean()))

    def statistics_of(pixels: torch.Tensor, network: Network = model) -> np.ndarray | None:
        """The block statistics the guard's density reads (None without a density)."""
        if guard.density is None or guard.density.block is None:
            return None
        return predict_statistics(network, pixels, spec, guard.density.block)

    card.metrics.refusal_examples_refused = None  # from an earlier fit of this folder
    if refuse_pixels is None:
        card.training.refusal_examples = None
        card.training.refuse_dirs = None
    if refuse_pixels is not None and len(refuse_pixels):
        _, refuse_features = predict_outputs(model, refuse_pixels, spec)
        fit_refusal(guard, train_features, refuse_features, val_features, reject_rate=rate,
                    heldout_groups=groups)
        card.training.refusal_examples = len(refuse_pixels)
        card.metrics.refusal_examples_refused = float(
            (guard.score(refuse_features, statistics_of(refuse_pixels))
             > guard.threshold).mean())
    card.ood_threshold = guard.threshold
    card.training.per_source_fit = per_source or None
    card.training.reject_rate = reject_rate if rate != DEFAULT_REJECT_RATE else None
    rejected = guard.score(val_features, val_statistics) > guard.threshold
    card.metrics.validation = validation_metrics(logits, labels, card, rejected)
    if sequence_logits is not None and sequences is not None:
        card.metrics.validation.sequence_accuracy = accuracy(sequences,
                                                             sequence_logits.argmax(1))
        card.metrics.validation.sequence_ece = expected_calibration_error(
            softmax(sequence_logits, card.sequence_temperature), sequences)
    calibrated = softmax(logits, card.temperature)
    unsure = fit_low_confidence(calibrated.max(axis=1), predicted == labels)
    card.low_confidence_threshold = unsure.threshold
    card.metrics.low_confidence = unsure
    if len(set(sources)) > 1:
        card.metrics.validation_by_source = {
            str(source): validation_metrics(logits[sources == source], labels[sources == source],
                                            card, rejected[sources == source])
            for source in sorted(set(sources))}
    extra = guard.to_tensors()
    if half:
        half_model = copy.deepcopy(model)
        half_model.load_state_dict(half_precision_state(model))  # copied back into fp32
        half_logits, half_features = predict_outputs(half_model, val_pixels, spec)
        half_guard = OODGuard(guard.class_means.astype(np.float16).astype(np.float32),
                              guard.whitening.astype(np.float16).astype(np.float32),
                              guard.threshold, guard.refusal_weight, guard.refusal_bias,
                              guard.refusal_cut, guard.density)
        same_labels = bool((half_logits.argmax(1) == predicted).all())
        if sequence_logits is not None:
            half_sequences = _sequence_logits(half_model, half_features)
            assert half_sequences is not None
            same_labels &= bool((half_sequences.argmax(1) == sequence_logits.argmax(1)).all())
        half_statistics = statistics_of(val_pixels, half_model)
        same_rejections = bool(((half_guard.score(half_features, half_statistics)
                                 > guard.threshold) == rejected).all())
        half = same_labels and same_rejections
    if half:  # the refusal direction and the density are small and stay fp32
        extra = {k: v.half() if k in ("ood_class_means", "ood_whitening") else v
                 for k, v in extra.items()}
    card.training.weights_dtype = "float16" if half else "float32"
    save_weights(model.cpu(), out, half=half, extra={f"extra.{k}": v for k, v in extra.items()})
    card.save(out)
    return card


def _split_labels(labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(classes, sequences) from ``load_pixels``' labels; sequences None without them."""
    values = labels.numpy()
    return (values[:, 0], values[:, 1]) if values.ndim == 2 else (values, None)


@torch.inference_mode()
def _sequence_logits(model: Network, features: np.ndarray) -> np.ndarray | None:
    """The sequence head on pooled features (None for a model without one)."""
    if not model.num_sequences:
        return None
    device = next(model.parameters()).device
    _, logits = model.forward_head(torch.from_numpy(features).to(device))
    return None if logits is None else logits.float().cpu().numpy()


def validation_metrics(logits: np.ndarray, labels: np.ndarray, card: ModelCard,
                       rejected: np.ndarray) -> ValidationMetrics:
    """Accuracy, macro-F1, ECE (raw and calibrated) and the guard's rejection share."""
    predicted = logits.argmax(1)
    return ValidationMetrics(
        n=len(labels),
        accuracy=accuracy(labels, predicted),
        macro_f1=macro_f1(labels, predicted, len(card.class_names)),
        ece_uncalibrated=expected_calibration_error(softmax(logits), labels),
        ece=expected_calibration_error(softmax(logits, card.temperature), labels),
        ood_rejected=float(np.mean(rejected)),
    )


def refit(model_dir: Path, data_dirs: list[Path] | Path, image_size: int | None = None,
          refuse_dirs: list[Path] | None = None, per_source: bool = False,
          reject_rate: float | None = None, density: bool = True) -> ModelCard:
    """Re-fit temperature and out-of-distribution guard of a trained model folder on the
    split it was trained with (``split.csv`` beside it), e.g. after changing those methods;
    ``per_source``, ``reject_rate``, ``density``: see ``finalize`` (``density.add_density``
    fits the density on another split).

    With ``image_size`` the model is served at that input size from now on (the card says so,
    and keeps the size it was trained at); its validation metrics are measured at that size.
    """
    from mri_tumor.models import load_model

    model, card, _ = load_model(model_dir)
    display, normal = naming(card.class_names)  # cards from before the fields: as shown then
    card.display_names = card.display_names or display
    card.normal_class = card.normal_class or normal
    if image_size is not None and image_size != card.image_size:
        card.training.image_size = card.training.image_size or card.image_size
        card.image_size = image_size
    rows = read_split_under(card.split_path(model_dir), data_dirs)
    roots = source_roots(data_dirs)
    names = (card.class_names, card.sequence_names)
    train_pixels, train_labels = load_pixels(roots, [r for r in rows if r.split == "train"],
                                             card.image_size, *names)
    val_pixels, val_labels = load_pixels(roots, [r for r in rows if r.split == "val"],
                                         card.image_size, *names)
    half = card.training.weights_dtype == "float16"
    refuse_pixels = None
    if refuse_dirs:
        refuse_pixels, _ = load_refusal_pixels(refuse_dirs, card.image_size)
        card.training.refuse_dirs = [Path(d).name for d in refuse_dirs]
    return finalize(model, card, train_pixels, train_labels, val_pixels, val_labels, model_dir,
                    half=half, val_sources=[r.source for r in rows if r.split == "val"],
                    refuse_pixels=refuse_pixels, per_source=per_source,
                    reject_rate=reject_rate, density=density)
