"""The guard's density on block statistics (``ood.FeatureDensity``): fitted after training with
the rest of the guard (``finalize``), or added to a finished model's guard without touching
anything else (``add_density``, the ``calibrate --density-only`` command).

It is fitted on brain MRIs alone: a seeded sample of the split's training rows gives the
Gaussian, its validation rows the cut. A model that was trained on fewer sources than it will
see (the shipped weights know no whole scans) is given its density from another split, one
whose rows of its own sources are on the same sides as in its own split (checked).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_tumor.card import WEIGHTS_FILE, ModelCard
from mri_tumor.data.folders import source_name
from mri_tumor.data.preprocess import PreprocessSpec
from mri_tumor.data.rows import load_pixels, read_split_under, source_roots
from mri_tumor.data.splitting import SplitRow
from mri_tumor.models.network import Network
from mri_tumor.models.ood import (
    DEFAULT_REJECT_RATE,
    FeatureDensity,
    OODGuard,
    fit_feature_density,
)
from mri_tumor.training.outputs import predict_outputs, predict_statistics

log = logging.getLogger(__name__)

# Training rows the Gaussian is fitted on (a seeded sample; 384 dimensions for Lite0).
DENSITY_TRAIN_ROWS = 4000


def sample_indices(count: int, limit: int = DENSITY_TRAIN_ROWS, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``range(count)``, seeded, in order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def fit_density(model: Network, spec: PreprocessSpec, train_pixels: torch.Tensor,
                val_pixels: torch.Tensor, reject_rate: float,
                val_groups: np.ndarray | None = None) -> tuple[FeatureDensity, np.ndarray]:
    """The density on the network's ``guard_block``: Gaussian on (a sample of) the training
    MRIs, cut where it refuses ``reject_rate`` of the validation MRIs (of each source, with
    ``val_groups``); and those validation MRIs' block statistics."""
    block = model.guard_block
    if block is None:
        raise ValueError(f"{type(model).__name__} gives no block statistics for a density")
    train = train_pixels[torch.from_numpy(sample_indices(len(train_pixels)))]
    val_statistics = predict_statistics(model, val_pixels, spec, block)
    density = fit_feature_density(predict_statistics(model, train, spec, block), val_statistics,
                                  reject_rate, block=block, heldout_groups=val_groups)
    return density, val_statistics


def density_record(density: FeatureDensity, reject_rate: float, split: str, train_rows: int,
                   val_rows: int, validation_refused: float) -> dict[str, Any]:
    """What the card says about the density (``ModelCard.ood_density``)."""
    return {"block": density.block, "reject_rate": reject_rate,
            "fitted_on": {"split": split, "train_rows": min(train_rows, DENSITY_TRAIN_ROWS),
                          "val_rows": val_rows},
            "validation_refused": validation_refused}


def check_same_sides(own: list[SplitRow], other: list[SplitRow]) -> None:
    """ValueError when a row of the model's own split is on another side in ``other``: a
    density fitted there would have seen the model's validation images."""
    sides = {(r.source, r.path): r.split for r in other}
    moved = [r for r in own if sides.get((r.source, r.path), r.split) != r.split]
    if moved:
        raise ValueError(f"{len(moved)} rows of the model's split are on another side in the "
                         f"density's split (first: {moved[0].source}/{moved[0].path}); use a "
                         "split that keeps the model's sides")


def own_split_rows(model_dir: Path, card: ModelCard, data_dirs: list[Path]) -> list[SplitRow]:
    """The rows of the model's own split. A model trained on one folder has a split without
    source names; given with other folders, its rows are named after the source its card
    records, so that they can be matched with a split of several sources."""
    split = card.split_path(model_dir)
    sources = [str(s.get("name", "")) for s in card.training.sources]
    if len(data_dirs) > 1 and len(sources) == 1:
        own_dirs = [d for d in data_dirs if source_name(d) == sources[0]]
        if own_dirs:
            rows = read_split_under(split, own_dirs[:1])
            if all(r.source == "" for r in rows):
                return [replace(r, source=sources[0]) for r in rows]
    return read_split_under(split, data_dirs)


def add_density(model_dir: Path, data_dirs: list[Path], split: Path | None = None,
                reject_rate: float | None = None, per_source: bool | None = None) -> ModelCard:
    """Fit a density for a finished model's guard on ``split`` (default the model's own) and
    store it with the weights; temperature, class statistics, refusal direction and threshold
    stay as they are. The card's validation refusal shares are measured again on the model's
    own validation rows, with the whole guard. ``reject_rate`` and ``per_source`` default to
    what the guard's other cuts were fitted with."""
    from safetensors.torch import load_file, save_file

    from mri_tumor.models import load_model

    model, card, extras = load_model(model_dir)
    guard = OODGuard.from_tensors(extras, card.ood_threshold)
    if guard is None:
        raise ValueError(f"{model_dir}: this model has no out-of-distribution guard to extend")
    own_rows = own_split_rows(model_dir, card, data_dirs)
    rows = read_split_under(split, data_dirs) if split is not None else own_rows
    check_same_sides(own_rows, rows)
    rate = reject_rate or card.training.reject_rate or DEFAULT_REJECT_RATE
    per_source = bool(card.training.per_source_fit) if per_source is None else per_source
    roots = source_roots(data_dirs)
    names = sorted({r.label for r in rows})
    spec = PreprocessSpec.from_card(card)
    train_rows = [r for r in rows if r.split == "train"]
    train_rows = [train_rows[i] for i in sample_indices(len(train_rows))]
    val_rows = [r for r in rows if r.split == "val"]
    train_pixels = load_pixels(roots, train_rows, card.image_size, names)[0]
    val_pixels = load_pixels(roots, val_rows, card.image_size, names)[0]
    groups = np.array([r.source for r in val_rows]) if per_source else None
    guard.density, val_statistics = fit_density(model, spec, train_pixels, val_pixels, rate,
                                                groups)
    guard._module = None
    log.info("density on block %s: cut %.3f", guard.density.block, guard.density.cut)

    own_val = [r for r in own_rows if r.split == "val"]
    own_pixels = load_pixels(roots, own_val, card.image_size,
                             sorted({r.label for r in own_rows}))[0]
    _, features = predict_outputs(model, own_pixels, spec)
    assert guard.density.block is not None
    statistics = predict_statistics(model, own_pixels, spec, guard.density.block)
    refused = guard.score(features, statistics) > guard.threshold
    card.ood_density = density_record(
        guard.density, rate, (split or card.split_path(model_dir)).name, len(train_rows),
        len(val_rows), float(guard.density.refuses(val_statistics).mean()))
    if card.metrics.validation is not None:
        card.metrics.validation.ood_rejected = float(refused.mean())
    sources = np.array([r.source for r in own_val])
    for source, metrics in (card.metrics.validation_by_source or {}).items():
        metrics.ood_rejected = float(refused[sources == source].mean())

    weights = model_dir / WEIGHTS_FILE
    tensors = load_file(str(weights))
    tensors.update({f"extra.{k}": v.contiguous() for k, v in guard.density.to_tensors().items()})
    save_file(tensors, str(weights))
    card.save(model_dir)
    return card
