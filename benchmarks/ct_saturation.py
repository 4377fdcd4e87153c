"""A physical cue for CT, fitted on brain MRIs alone: how much of the head is saturated white.

    python benchmarks/ct_saturation.py MODEL_DIR DATA_DIR [DATA_DIR ...] --shared ../shared/data

A head CT shown in a brain window paints the skull white (255), while MRI shows cortical bone
dark. The cue is the share of the head's pixels (grey > 20) at 250 or more in the image as
read, before the preprocessing equalises it. Its cut is the 99.5th percentile of 3,000
training rows of the model's split (no CT is fitted on), and it is measured on the split's
validation rows per source and on both CT collections (`head-ct` PNGs and the Kaggle CTs of
the exclusion list), neither of which it has seen (docs/ood-guard.md, issue #33).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mri_tumor.card import ModelCard
from mri_tumor.data.folders import load_exclusions
from mri_tumor.data.reading import read_image
from mri_tumor.data.rows import read_split_under, row_path, source_roots

HEAD_LEVEL = 20
WHITE_LEVEL = 250
QUANTILE = 0.995


def saturated_share(image: Image.Image) -> float:
    """Share of the head's pixels that are (nearly) white."""
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    head = pixels > HEAD_LEVEL
    return float((pixels >= WHITE_LEVEL).sum() / max(int(head.sum()), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    card = ModelCard.load(args.model)
    rows = read_split_under(card.split_path(args.model), args.data_dirs)
    roots = source_roots(args.data_dirs)
    train = [r for r in rows if r.split == "train"]
    picked = np.random.default_rng(0).choice(len(train), min(3000, len(train)), replace=False)
    cut = float(np.quantile([saturated_share(read_image(row_path(train[i], roots)))
                             for i in picked], QUANTILE))
    refused: dict[str, list[bool]] = {}
    for row in rows:
        if row.split == "val":
            share = saturated_share(read_image(row_path(row, roots)))
            refused.setdefault(f"validation MRIs: {row.source}", []).append(share > cut)
    refused["head-ct PNGs"] = [saturated_share(Image.open(p)) > cut
                               for p in sorted((args.shared / "head-ct" / "png").glob("*.png"))]
    refused["Kaggle CTs of the exclusion list"] = [
        saturated_share(Image.open(args.shared / source / path)) > cut
        for (source, path), reason in sorted(load_exclusions().items())
        if reason.startswith("head CT")]
    print(json.dumps({"cut": round(cut, 4), "refused": {
        name: {"images": len(flags), "share": round(float(np.mean(flags)), 4)}
        for name, flags in refused.items()}}, indent=2))


if __name__ == "__main__":
    main()
