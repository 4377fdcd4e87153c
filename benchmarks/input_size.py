"""Validation accuracy of a trained model at several input sizes, with an honest estimate.

    python benchmarks/input_size.py DATA_DIR [--model DIR] [--sizes 192 200 208 216 224]

The network pools globally, so it runs at any input size. Reads the model's ``split.csv``,
resizes the validation images to each size with the one preprocessing path, and prints the
accuracy over all validation images and over two halves (duplicate groups with an even or
odd group number).

Picking the size with the best validation accuracy makes that accuracy optimistic. The
"cross-fitted" line is the honest estimate: pick the size on one half, score it on the other,
both ways, and add up the errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from mri_tumor.data.preprocess import PreprocessSpec
from mri_tumor.data.rows import load_pixels, read_split_under, source_roots
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.models import load_model
from mri_tumor.training import predict_outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dirs", type=Path, nargs="+",
                        help="the folder(s) the model was trained on")
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 200, 208, 216, 224])
    args = parser.parse_args(argv)
    for data_dir in args.data_dirs:
        if not data_dir.is_dir():
            print(f"{data_dir}: no such folder", file=sys.stderr)
            return 2
    torch.set_num_threads(2)
    model, card, _ = load_model(args.model)
    rows = [r for r in read_split_under(card.split_path(args.model), args.data_dirs)
            if r.split == "val"]
    roots = source_roots(args.data_dirs)
    halves = np.array([r.group % 2 for r in rows])
    wrong: dict[int, np.ndarray] = {}
    print(f"{len(rows)} validation images; halves of {(halves == 0).sum()} and "
          f"{(halves == 1).sum()}; the card says {card.image_size} px")
    print("| input px | accuracy | wrong | half 0 wrong | half 1 wrong |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        pixels, labels = load_pixels(roots, rows, size)
        spec = dataclasses.replace(PreprocessSpec.from_card(card), image_size=size)
        logits, _ = predict_outputs(model, pixels, spec)
        wrong[size] = logits.argmax(1) != labels.numpy()
        print(f"| {size} | {1 - wrong[size].mean():.2%} | {wrong[size].sum()} | "
              f"{wrong[size][halves == 0].sum()} | {wrong[size][halves == 1].sum()} |",
              flush=True)
    errors = 0
    for pick_on, score_on in ((0, 1), (1, 0)):
        best = min(args.sizes, key=lambda s: (wrong[s][halves == pick_on].sum(), s))
        errors += int(wrong[best][halves == score_on].sum())
        print(f"picked on half {pick_on}: {best} px -> {wrong[best][halves == score_on].sum()} "
              f"wrong on half {score_on}")
    print(f"cross-fitted accuracy of picking the size on validation images: "
          f"{1 - errors / len(rows):.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
