"""A density on the network's intermediate features, fitted on brain MRIs alone: which kinds of
non-MRI image does it refuse without ever being shown one?

    python benchmarks/guard_layers.py MODEL_DIR DATA_DIR [DATA_DIR ...] --shared ../shared/data \
        [--split CSV] [--blocks 4,7,10] [--train-sample 4000] [--json out.json]

For each MBConv block named by ``--blocks``, every image is summarised by the mean and standard
deviation of each channel of that block's output (``EfficientNetLite.block_statistics``), and
a Gaussian on their signed log with a 1%-shrunk covariance (``ood.fit_feature_density``) is
fitted on a sample of the training rows of the split (``--split``, by
default the model's; the whole-scan split ``runs/sources/split.csv`` with all five sources gives
it whole-scan slices). Its cut is the 99.5th percentile of the validation rows' distances.
Reported per block: validation MRIs refused out of fold (each half scored with the cut set on
the other half, per source), and the share refused of each kind of negative of
``guard_kinds.py`` and of the check set (scikit-image and matplotlib samples). Nothing here is
fitted on a negative, so every kind is "left out". Also: the union with the card's guard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ct_refusal import source_halves
from guard_kinds import image_pixels, kinds_of_negatives
from non_mri import documents, photos

from mri_tumor.data.preprocess import PreprocessSpec, normalize
from mri_tumor.data.rows import load_pixels, read_split_under, source_roots
from mri_tumor.models.factory import load_model
from mri_tumor.models.ood import OODGuard, fit_feature_density
from mri_tumor.training import predict_outputs

QUANTILE = 99.5


def block_statistics(model, pixels: torch.Tensor, spec: PreprocessSpec,
                     blocks: list[int]) -> dict[int, np.ndarray]:
    """Per block: (N, 2 x channels) per-channel mean and std of its output."""
    parts: dict[int, list[np.ndarray]] = {b: [] for b in blocks}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pixels), 64):
            batch = normalize(pixels[start:start + 64], spec).float()
            for b, stats in zip(blocks, model.block_statistics(batch, blocks), strict=True):
                parts[b].append(stats.numpy())
    return {b: np.concatenate(parts[b]) for b in blocks}


def out_of_fold(distances: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Validation MRIs refused, each half (within each source) cut on the other half."""
    half = source_halves(sources)
    refused = np.zeros(len(sources), dtype=bool)
    for scored in (half, ~half):
        refused[scored] = distances[scored] > np.percentile(distances[~scored], QUANTILE)
    return {str(s): float(refused[sources == s].mean()) for s in sorted(set(sources))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--split", type=Path)
    parser.add_argument("--blocks", default="4,7,10")
    parser.add_argument("--train-sample", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    blocks = [int(b) for b in args.blocks.split(",")]

    model, card, extras = load_model(args.model)
    model.float()
    spec = PreprocessSpec.from_card(card)
    rows = read_split_under(args.split or card.split_path(args.model), args.data_dirs)
    roots = source_roots(args.data_dirs)
    rng = np.random.default_rng(0)
    train_rows = [r for r in rows if r.split == "train"]
    if len(train_rows) > args.train_sample:
        train_rows = [train_rows[i] for i in sorted(rng.choice(len(train_rows),
                                                                args.train_sample, replace=False))]
    val_rows = [r for r in rows if r.split == "val"]
    sources = np.array([r.source for r in val_rows])
    names = sorted({r.label for r in rows})
    train_pixels = load_pixels(roots, train_rows, card.image_size, names)[0]
    val_pixels = load_pixels(roots, val_rows, card.image_size, names)[0]
    negatives = kinds_of_negatives(args.shared, card.image_size)
    negatives["check set"] = image_pixels(
        [image for _, _, image in photos()]
        + [image for _, name, image in documents() if name.startswith("skimage/")],
        card.image_size)

    guard = OODGuard.from_tensors(extras, card.ood_threshold)
    assert guard is not None

    def card_refuses(pixels: torch.Tensor) -> np.ndarray:
        return guard.score(predict_outputs(model, pixels, spec)[1]) > guard.threshold

    train_stats = block_statistics(model, train_pixels, spec, blocks)
    val_stats = block_statistics(model, val_pixels, spec, blocks)
    negative_stats = {k: block_statistics(model, v, spec, blocks) for k, v in negatives.items()}
    val_card = card_refuses(val_pixels)
    negative_card = {k: card_refuses(v) for k, v in negatives.items()}
    result: dict = {"model": str(args.model), "split": str(args.split or "the model's"),
                    "train_rows": len(train_rows), "val_rows": len(val_rows),
                    "card_guard": {
                        "mri_refused": {s: float(val_card[sources == s].mean())
                                        for s in sorted(set(sources))},
                        "kinds": {k: float(v.mean()) for k, v in negative_card.items()}},
                    "blocks": {}}
    for b in blocks:
        density = fit_feature_density(train_stats[b], val_stats[b], 1 - QUANTILE / 100)
        val_distance = density.distance(val_stats[b])
        cut = density.cut
        union_val = val_card | (val_distance > cut)
        result["blocks"][str(b)] = {
            "channels": train_stats[b].shape[1] // 2,
            "mri_refused_out_of_fold": out_of_fold(val_distance, sources),
            "kinds": {k: float((density.distance(s[b]) > cut).mean())
                      for k, s in negative_stats.items()},
            "with_card_guard": {
                "mri_refused": {s: float(union_val[sources == s].mean())
                                for s in sorted(set(sources))},
                "kinds": {k: float((negative_card[k] | (density.distance(s[b]) > cut)).mean())
                          for k, s in negative_stats.items()}}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
