"""Fit what a refusal says the image looks like (``models.resemblance``) for a model, and
measure it by cross-validation.

    python scripts/fit_resemblance.py MODEL_DIR KAGGLE_DIR TYPES_DIR --shared ../shared/data
        [--write] [--json out.json]

Kinds: ``brain-mri`` (1,500 training rows of the model's split, 600 slices of lgg-tcga, 300
of skull-stripped-normal: brain MRIs, some of which the guard refuses), and the negatives of
``benchmarks/guard_kinds.py`` (head CT, chest X-ray, spine MRI, the non-MR DICOM files of
pydicom, synthetic documents and patterns). Each kind is scored by 5-fold cross-validation
(fit on four fifths of every kind, predict the fifth); the sample images of scikit-image and
matplotlib are never fitted on and are reported as a check. ``--write`` fits on everything
and writes ``resemblance.safetensors`` and the card's ``resemblance`` section into MODEL_DIR
(the weights file is not touched, so the model's hash stays the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ct_refusal import split_features  # noqa: E402
from guard_kinds import image_pixels, kinds_of_negatives  # noqa: E402
from non_mri import documents, photos  # noqa: E402

from mri_tumor.card import CARD_FILE, ModelCard  # noqa: E402
from mri_tumor.data.preprocess import PreprocessSpec  # noqa: E402
from mri_tumor.models.resemblance import fit_resemblance  # noqa: E402
from mri_tumor.training import predict_outputs  # noqa: E402

PHRASES = {
    "brain-mri": "a brain MRI, though too unlike the ones it learnt to classify",
    "head-ct": "a CT slice",
    "kaggle-ct": "a CT slice",  # the head CTs of the exclusion list (guard_kinds.py)
    "chest-xray": "an X-ray",
    "spine-mri": "an MRI of another body part (spine)",
    "other-dicom": "a medical image of another modality (CT, CR, ultrasound)",
    "synthetic": "a document, chart, pattern or drawing",
}
MIN_PROBABILITY = 0.5  # a kind is named only when the classifier gives it at least this
FOLDS = 5
SEED = 0


def sample(features: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if len(features) <= count:
        return features
    return features[rng.choice(len(features), count, replace=False)]


def lgg_slices(root: Path, count: int, rng: np.random.Generator) -> list[Path]:
    paths = sorted(root.glob("*/*_*.jpg"))
    return [paths[i] for i in sorted(rng.choice(len(paths), min(count, len(paths)),
                                                replace=False))]


def cross_validate(kinds: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per kind: the share of its images whose held-out prediction is that kind, and what
    the rest were taken for."""
    rng = np.random.default_rng(SEED)
    folds = {k: rng.permutation(len(v)) % FOLDS for k, v in kinds.items()}
    predicted: dict[str, list[str]] = {k: [] for k in kinds}
    for fold in range(FOLDS):
        model = fit_resemblance({k: v[folds[k] != fold] for k, v in kinds.items()})
        for kind, features in kinds.items():
            predicted[kind] += model.nearest(features[folds[kind] == fold])  # type: ignore[arg-type]
    return {kind: {"images": len(names), "right": round(names.count(kind) / len(names), 4),
                   "taken_for": dict(Counter(names).most_common())}
            for kind, names in predicted.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)

    model, card, _, train_features, _, _, _ = split_features(args.model, args.data_dirs)
    spec = PreprocessSpec.from_card(card)

    def features_of(pixels: torch.Tensor) -> np.ndarray:
        return predict_outputs(model, pixels, spec)[1]

    lgg = image_pixels([Image.open(p) for p in lgg_slices(args.shared / "lgg-tcga", 600, rng)],
                       card.image_size)
    stripped_paths = sorted((args.shared / "skull-stripped-normal").rglob("*.jpg"))
    stripped = image_pixels([Image.open(stripped_paths[i]) for i in
                             rng.choice(len(stripped_paths), 300, replace=False)],
                            card.image_size)
    kinds = {"brain-mri": np.concatenate([sample(train_features, 1500, rng),
                                          features_of(lgg), features_of(stripped)])}
    for name, pixels in kinds_of_negatives(args.shared, card.image_size).items():
        kinds[name] = features_of(pixels)
    check = image_pixels([image for _, _, image in photos()]
                         + [image for _, name, image in documents() if name.startswith("skimage/")],
                         card.image_size)

    result = {"counts": {k: len(v) for k, v in kinds.items()},
              "cross_validated": cross_validate(kinds), "min_probability": MIN_PROBABILITY}
    fitted = fit_resemblance(kinds)
    named = fitted.nearest(features_of(check), MIN_PROBABILITY)
    result["check_taken_for"] = dict(Counter(str(n) for n in named).most_common())
    if args.write:
        fitted.save(args.model)
        card = ModelCard.load(args.model)
        card.resemblance = {
            "kinds": fitted.kinds, "phrases": {k: PHRASES[k] for k in fitted.kinds},
            "min_probability": MIN_PROBABILITY, "fitted_on": result["counts"],
            "cross_validated": {k: v["right"] for k, v in result["cross_validated"].items()},
            "fitted": str(date.today()), "by": "scripts/fit_resemblance.py"}
        (args.model / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
