"""How well the guard refuses head CT (and other non-MRI images) by content, and how many real
MRIs it refuses with it.

    python benchmarks/ct_refusal.py MODEL_DIR DATA_DIR [DATA_DIR ...] \
        --ct ../shared/data/head-ct [--non-mri runs/non-mri] [--folds 5] [--json out.json]

The refusal direction (``ood.fit_refusal``) is fitted on CT images, so scoring it on the same
images would flatter it. Here the CT PNGs are split into ``--folds`` parts: each part is
scored by a guard whose refusal direction was fitted on the other parts (plus the CT DICOM
series, which is one patient and never scored here: DICOM CT is refused by its header). With
``--non-mri DIR`` (written by ``python benchmarks/non_mri.py --export DIR``) those images join
the refusal examples and are cross-validated the same way, grouped by their source image so
that a crop or rotated copy is never scored by a guard fitted on its original. The
brain MRIs are the validation rows of the model's own split, per source; the distance part of
the guard is fitted exactly as the card says it was (class statistics on the training rows,
the threshold and cut on the validation rows, per source when `per_source_fit` is set, each
cut at the card's `reject_rate`).

Training sets the threshold and cut on the same validation MRIs whose refusals it reports, so
that share is met by construction. ``mri_refused_out_of_fold`` is the honest figure: the
validation MRIs are split in two halves (within each source), and each half is scored by a
guard whose threshold and cut were set on the other half.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from mri_tumor.data.preprocess import PreprocessSpec
from mri_tumor.data.rows import load_pixels, load_refusal_pixels, read_split_under, source_roots
from mri_tumor.models import load_model
from mri_tumor.models.ood import DEFAULT_REJECT_RATE, fit_guard, fit_refusal
from mri_tumor.training import predict_outputs


def source_halves(sources: np.ndarray) -> np.ndarray:
    """A fixed random half of the rows of each source (True), for out-of-fold cuts."""
    rng = np.random.default_rng(0)
    half = np.zeros(len(sources), dtype=bool)
    for source in np.unique(sources):
        members = rng.permutation(np.flatnonzero(sources == source))
        half[members[: len(members) // 2]] = True
    return half


def out_of_fold_refusals(train_features: np.ndarray, train_labels: np.ndarray,
                         val_features: np.ndarray, sources: np.ndarray,
                         refuse_features: np.ndarray, num_classes: int,
                         per_source: bool, reject_rate: float) -> dict[str, float]:
    """Share of validation MRIs refused, per source, when each half of them is scored by a guard
    (distance threshold and refusal cut) fitted on the other half (per source or pooled)."""
    half = source_halves(sources)
    refused = np.zeros(len(sources), dtype=bool)
    for scored in (half, ~half):
        groups = sources[~scored] if per_source else None
        guard = fit_guard(train_features, train_labels, val_features[~scored], num_classes,
                          reject_rate=reject_rate, heldout_groups=groups)
        fit_refusal(guard, train_features, refuse_features, val_features[~scored],
                    reject_rate=reject_rate, heldout_groups=groups)
        refused[scored] = guard.score(val_features[scored]) > guard.threshold
    return {str(s) or "(one folder)": float(refused[sources == s].mean())
            for s in sorted(set(sources))}


def split_features(model_dir: Path, data_dirs: list[Path]):
    """The model, its card and extra tensors, and the pooled features of the training rows of
    its split (with their labels) and of its validation rows (with the rows)."""
    model, card, extras = load_model(model_dir)
    spec = PreprocessSpec.from_card(card)
    rows = read_split_under(card.split_path(model_dir), data_dirs)
    roots = source_roots(data_dirs)
    train_rows = [r for r in rows if r.split == "train"]
    val_rows = [r for r in rows if r.split == "val"]
    train_pixels, train_labels = load_pixels(roots, train_rows, card.image_size, card.class_names)
    val_pixels, _ = load_pixels(roots, val_rows, card.image_size)
    _, train_features = predict_outputs(model, train_pixels, spec)
    _, val_features = predict_outputs(model, val_pixels, spec)
    return model, card, extras, train_features, train_labels.numpy(), val_features, val_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--ct", type=Path, required=True, help="folder with png/ and dicom-series/")
    parser.add_argument("--non-mri", type=Path, help="exported non-MRI images (non_mri.py)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model, card, _, train_features, train_labels, val_features, val_rows = split_features(
        args.model, args.data_dirs)
    spec = PreprocessSpec.from_card(card)
    png_pixels, _ = load_refusal_pixels([args.ct / "png"], card.image_size)
    dicom_pixels, _ = load_refusal_pixels([args.ct / "dicom-series"], card.image_size)
    _, png_features = predict_outputs(model, png_pixels, spec)
    _, dicom_features = predict_outputs(model, dicom_pixels, spec)
    other_features = np.zeros((0, png_features.shape[1]), np.float32)
    other_names: list[str] = []
    if args.non_mri:
        other_pixels, other_paths = load_refusal_pixels([args.non_mri], card.image_size)
        _, other_features = predict_outputs(model, other_pixels, spec)
        other_names = [Path(p).stem for p in other_paths]
    # "<category>__<name>[+variant]": the category, and the source image for grouping.
    other_category = np.array([n.split("__")[0] for n in other_names])
    other_group = np.array([n.split("+")[0] for n in other_names])
    groups = sorted(set(other_group))
    group_folds = np.array_split(np.random.default_rng(1).permutation(len(groups)), args.folds)

    sources = np.array([r.source for r in val_rows])
    fit_groups = sources if card.training.per_source_fit else None
    reject_rate = card.training.reject_rate or DEFAULT_REJECT_RATE
    guard = fit_guard(train_features, train_labels, val_features, len(card.class_names),
                      reject_rate=reject_rate, heldout_groups=fit_groups)
    result: dict = {"model": str(args.model), "per_source_fit": fit_groups is not None,
                    "reject_rate": reject_rate,
                    "ct_png": len(png_pixels),
                    "ct_dicom_slices": len(dicom_pixels), "folds": args.folds,
                    "distance_only": {
                        "ct_png_refused": float((guard.score(png_features)
                                                 > guard.threshold).mean()),
                        "mri_val_refused": float((guard.score(val_features)
                                                  > guard.threshold).mean())}}
    order = np.random.default_rng(0).permutation(len(png_features))
    refused_ct, refused_mri = [], []
    refused_other = np.zeros(len(other_features), dtype=bool)
    for fold, held_out in enumerate(np.array_split(order, args.folds)):
        fit_on = np.setdiff1d(order, held_out)
        other_held = np.isin(other_group, [groups[i] for i in group_folds[fold]])
        fold_guard = fit_refusal(copy.deepcopy(guard), train_features,
                                 np.concatenate([png_features[fit_on], dicom_features,
                                                 other_features[~other_held]]),
                                 val_features, reject_rate=reject_rate,
                                 heldout_groups=fit_groups)
        refused_ct.append(fold_guard.score(png_features[held_out]) > fold_guard.threshold)
        refused_mri.append(fold_guard.score(val_features) > fold_guard.threshold)
        if other_held.any():
            refused_other[other_held] = (fold_guard.score(other_features[other_held])
                                         > fold_guard.threshold)
    refused_mri_all = np.mean(refused_mri, axis=0)
    result["with_refusal_direction"] = {
        "ct_png_refused_held_out": float(np.concatenate(refused_ct).mean()),
        "mri_val_refused": float(refused_mri_all.mean()),
        "mri_val_refused_by_source": {str(s) or "(one folder)": float(
            refused_mri_all[sources == s].mean()) for s in sorted(set(sources))},
    }
    result["mri_refused_out_of_fold"] = out_of_fold_refusals(
        train_features, train_labels, val_features, sources,
        np.concatenate([png_features, dicom_features, other_features]), len(card.class_names),
        per_source=fit_groups is not None, reject_rate=reject_rate)
    if len(other_features):
        result["distance_only"]["non_mri_refused"] = float(
            (guard.score(other_features) > guard.threshold).mean())
        result["with_refusal_direction"]["non_mri_refused_held_out"] = float(
            refused_other.mean())
        result["with_refusal_direction"]["non_mri_refused_held_out_by_category"] = {
            str(c): float(refused_other[other_category == c].mean())
            for c in sorted(set(other_category))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
