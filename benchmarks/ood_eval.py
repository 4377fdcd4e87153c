"""How well the out-of-distribution guard separates brain MRI slices from everything else.

    python benchmarks/ood_eval.py --data ../shared/data/brain-tumor-mri/Training \
        ../shared/data/brain-mri-44-types [--model DIR] [--json out.json]

- Brain MRIs: the validation rows of the model's own split (never seen in training). The
  shipped threshold was set on all of them, so to measure honestly the threshold is re-set on
  one half and the rejection rate read on the other half, both ways round.
- Non-MRI: photos, documents, screenshots, CT/other DICOM, blank, noise and pattern images
  from `benchmarks/non_mri.py` (only images that PyPI packages ship, plus synthetic ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from non_mri import non_mri_images

from mri_tumor import Predictor
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import Frame, read_image, to_grayscale
from mri_tumor.models.ood import DEFAULT_REJECT_RATE


def mri_scores(predictor: Predictor, data: list[Path], split: Path) -> np.ndarray:
    from mri_tumor.data.rows import read_split_under, row_path, source_roots

    rows = [r for r in read_split_under(split, data) if r.split == "val"]
    roots = source_roots(data)
    scores = []
    for start in range(0, len(rows), 64):
        pixels = np.stack([to_model_pixels(read_image(row_path(r, roots)),
                                           predictor.spec.image_size)
                           for r in rows[start:start + 64]])
        scores.append(predictor.forward(pixels)[2])
    return np.concatenate(scores)


def cross_fitted_rejection(scores: np.ndarray, reject_rate: float, seed: int = 0) -> float:
    """Rejection rate of held-out MRIs with the threshold set on the other half."""
    order = np.random.default_rng(seed).permutation(len(scores))
    halves = np.array_split(scores[order], 2)
    rates = []
    for fit, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        threshold = np.quantile(fit, 1 - reject_rate)
        rates.append(float((test > threshold).mean()))
    return float(np.mean(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="the training image folder(s) the model's split refers to")
    parser.add_argument("--model", type=Path, help="model folder (default: shipped)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    predictor = Predictor.load(args.model, backend="onnx")
    assert predictor.ood_threshold is not None, "this model has no out-of-distribution guard"
    scores = mri_scores(predictor, args.data, predictor.card.split_path(predictor.model_dir))
    shipped = float((scores > predictor.ood_threshold).mean())

    per_category: dict[str, list[bool]] = defaultdict(list)
    missed: list[str] = []
    for category, name, image in non_mri_images():
        result = predictor.predict_frames([Frame(name, to_grayscale(image))])[0]
        per_category[category].append(result.status == "rejected")
        if result.status != "rejected":
            missed.append(f"{category}: {name} ({result.label}, score {result.ood_score})")
    all_flags = [flag for flags in per_category.values() for flag in flags]
    results = {
        "mri_validation_n": len(scores),
        "mri_rejected_shipped_threshold": shipped,
        "mri_rejected_cross_fitted": cross_fitted_rejection(
            scores, predictor.card.training.reject_rate or DEFAULT_REJECT_RATE),
        "non_mri_n": len(all_flags),
        "non_mri_rejected": float(np.mean(all_flags)),
        "per_category": {c: {"n": len(f), "rejected": float(np.mean(f))}
                         for c, f in sorted(per_category.items())},
        "not_rejected": missed,
    }
    print("| images | n | rejected |")
    print("|---|---|---|")
    print(f"| brain MRI, validation split (cross-fitted threshold) | {len(scores)} | "
          f"{results['mri_rejected_cross_fitted']:.1%} |")
    print(f"| brain MRI, validation split (shipped threshold) | {len(scores)} | {shipped:.1%} |")
    for category, stats in results["per_category"].items():
        print(f"| non-MRI: {category} | {stats['n']} | {stats['rejected']:.1%} |")
    print(f"| **non-MRI, all** | {len(all_flags)} | {results['non_mri_rejected']:.1%} |")
    if missed:
        print("\nnot rejected:\n  " + "\n  ".join(missed))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
