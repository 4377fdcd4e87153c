"""How many images lie near the guard's threshold: the share of validation MRIs and of each
kind of non-MRI image whose score is within a band of it (what the card's borderline band
marks), and how the score of one slice moves with its input size.

    python benchmarks/guard_band.py [--model DIR] --data KAGGLE_DIR TYPES_DIR \
        --shared ../shared/data [--bands 0.05 0.1 0.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from non_mri import documents, photos, synthetic

from mri_tumor import Predictor
from mri_tumor.data.rows import read_split_under, row_path, source_roots

SIZES = (208, 224, 256, 320, 512)


def scores(predictor: Predictor, items: list, names: list[str] | None = None) -> np.ndarray:
    """The guard scores of the inputs (NaN where none: blank or unreadable)."""
    return np.array([np.nan if r.ood_score is None else r.ood_score
                     for r in predictor.predict(items, names=names)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--bands", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    threshold = predictor.ood_threshold
    assert threshold is not None and predictor.model_dir is not None
    rows = [r for r in read_split_under(predictor.card.split_path(predictor.model_dir), args.data)
            if r.split == "val"]
    roots = source_roots(args.data)
    kinds = {"validation MRIs": scores(predictor, [row_path(r, roots) for r in rows])}
    for name, folder in (("head CT", "head-ct/png"), ("chest X-ray", "not-brain-mri/chest-xray"),
                         ("spine MRI", "not-brain-mri/spine-mri")):
        kinds[name] = scores(predictor, sorted((args.shared / folder).glob("*.*")))
    made = [image for category, _, image in [*photos(), *documents(), *synthetic()]
            if category != "blank"]
    kinds["photos, pages, synthetic"] = scores(predictor, made, [f"{i}" for i in range(len(made))])
    print(f"threshold {threshold:.4f}")
    for band in args.bands:
        low, high = threshold * (1 - band), threshold * (1 + band)
        print(f"band {band:.0%}:")
        for name, values in kinds.items():
            values = values[~np.isnan(values)]
            print(f"  {name} ({len(values)}): refused {np.mean(values > threshold):.1%}, "
                  f"just above {np.mean((values > threshold) & (values <= high)):.1%}, "
                  f"just below {np.mean((values > low) & (values <= threshold)):.1%}")
    moves = []
    for row in rows[::10]:
        grey = Image.open(row_path(row, roots)).convert("L")
        copies = [grey.resize((s, s), Image.Resampling.LANCZOS) for s in SIZES]
        values = scores(predictor, copies, [f"{s}" for s in SIZES])
        moves.append((np.nanmax(values) - np.nanmin(values)) / threshold)
    print(f"score range over {SIZES} px, as a share of the threshold, on {len(moves)} "
          f"validation slices: median {np.median(moves):.1%}, 95th percentile "
          f"{np.percentile(moves, 95):.1%}, max {np.max(moves):.1%}")


if __name__ == "__main__":
    main()
