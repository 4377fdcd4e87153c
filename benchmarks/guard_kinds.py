"""Leave one kind out: does the guard refuse a kind of non-MRI image it was not fitted on?

    python benchmarks/guard_kinds.py MODEL_DIR DATA_DIR [DATA_DIR ...] \
        --shared ../shared/data [--per-source] [--json out.json]

Kinds of negatives that a refusal direction (``ood.fit_refusal``) may be fitted on:

- ``head-ct``: ``head-ct/png`` and the slices of ``head-ct/dicom-series`` (decoded despite their
  header, which alone refuses them in the product);
- ``kaggle-ct``: a second CT collection, the head CTs that the reviewed exclusion list
  (``mri_tumor/data/exclusions.csv``) takes out of the Kaggle ``notumor`` folder
  (``brain-tumor-mri/Training``); so each CT collection is also scored by a guard fitted on the
  other one, as a new hospital's CT would be;
- ``chest-xray``: ``not-brain-mri/chest-xray``;
- ``spine-mri``: ``not-brain-mri/spine-mri`` (MRI, but not of the brain);
- ``other-dicom``: the non-MR DICOM files that ship inside pydicom, decoded;
- ``synthetic``: noise, gradients, patterns, rendered pages and screenshots
  (``benchmarks/non_mri.py``, without its scikit-image and matplotlib files).

For each kind, the refusal direction is fitted on all the other kinds and the kind is scored:
that is how the guard meets a kind of image nobody showed it. The distance part of the guard
is fitted as the card says (class statistics on the training rows of the model's split, the
threshold on its validation rows). The sample images of scikit-image and matplotlib (photos,
scanned pages) are never fitted on: they are the check, scored by every guard here. Brain
MRIs refused: the validation rows, with the threshold and cut set on the other half of them
(``ct_refusal.out_of_fold_refusals``). The cuts are pooled over the validation rows or set per
source as the card says; ``--per-source`` sets them per source whatever the card says.
When the card's guard has a density on block statistics (``card.ood_density``, never fitted on
a negative), ``shipped_guard`` is the guard as served, density included, and
``left_out_with_density`` is the refusal fitted without the kind together with that density.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from ct_refusal import out_of_fold_refusals, split_features
from non_mri import documents, may_be_fitted_on, other_modalities, photos, synthetic

from mri_tumor.data.folders import load_exclusions
from mri_tumor.data.preprocess import PreprocessSpec, to_model_pixels
from mri_tumor.data.reading import to_grayscale
from mri_tumor.data.rows import load_refusal_pixels
from mri_tumor.models.ood import DEFAULT_REJECT_RATE, OODGuard, fit_guard, fit_refusal
from mri_tumor.training import predict_outputs
from mri_tumor.training.outputs import predict_statistics


def image_pixels(images: list, size: int) -> torch.Tensor:
    """uint8 (N, size, size) model pixels of PIL images, as the predictor makes them."""
    return torch.from_numpy(np.stack([to_model_pixels(to_grayscale(i), size) for i in images]))


def kinds_of_negatives(shared: Path, size: int) -> dict[str, torch.Tensor]:
    """The pixels of each kind of negative that may be fitted on."""
    ct_png, _ = load_refusal_pixels([shared / "head-ct" / "png"], size)
    kaggle = shared / "brain-tumor-mri" / "Training"
    kaggle_ct = [Image.open(kaggle / path).convert("L")
                 for (source, path), reason in load_exclusions().items()
                 if source == "brain-tumor-mri/Training" and reason.startswith("head CT")]
    ct_dicom, _ = load_refusal_pixels([shared / "head-ct" / "dicom-series"], size)
    chest, _ = load_refusal_pixels([shared / "not-brain-mri" / "chest-xray"], size)
    spine, _ = load_refusal_pixels([shared / "not-brain-mri" / "spine-mri"], size)
    dicom = [image for _, name, image in other_modalities() if name.startswith("pydicom/")]
    made = [image for category, name, image in [*documents(), *synthetic()]
            if may_be_fitted_on(category, name)]
    return {"head-ct": torch.cat([ct_png, ct_dicom]), "kaggle-ct": image_pixels(kaggle_ct, size),
            "chest-xray": chest,
            "spine-mri": spine, "other-dicom": image_pixels(dicom, size),
            "synthetic": image_pixels(made, size)}


def refused(guard: OODGuard, features: np.ndarray,
            statistics: np.ndarray | None = None) -> float:
    """Share of ``features`` the guard refuses (with its density, when it has one, on the
    block ``statistics`` of the same images)."""
    return float((guard.score(features, statistics) > guard.threshold).mean())


def with_density(guard: OODGuard, density_of: OODGuard | None) -> OODGuard:
    """``guard`` with the density of ``density_of`` (the card's), if that has one."""
    if density_of is None or density_of.density is None:
        return guard
    guard = copy.deepcopy(guard)
    guard.density, guard._module = density_of.density, None
    return guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--shared", type=Path, required=True,
                        help="folder with head-ct/ and not-brain-mri/")
    parser.add_argument("--per-source", action="store_true",
                        help="set the cuts per source (calibrate --per-source), whatever the "
                             "card says")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model, card, extras, train_features, labels, val_features, val_rows = split_features(
        args.model, args.data_dirs)
    spec = PreprocessSpec.from_card(card)
    negatives = kinds_of_negatives(args.shared, card.image_size)
    kinds = {name: predict_outputs(model, pixels, spec)[1] for name, pixels in negatives.items()}
    check = image_pixels([image for _, _, image in photos()]
                         + [image for _, name, image in documents() if name.startswith("skimage/")],
                         card.image_size)
    _, check_features = predict_outputs(model, check, spec)
    shipped = OODGuard.from_tensors(extras, card.ood_threshold,
                                    (card.ood_density or {}).get("block"))
    assert shipped is not None
    statistics: dict[str, np.ndarray | None] = {name: None for name in negatives}
    check_statistics = None
    if shipped.density is not None and shipped.density.block is not None:
        block = shipped.density.block
        statistics = {name: predict_statistics(model, pixels, spec, block)
                      for name, pixels in negatives.items()}
        check_statistics = predict_statistics(model, check, spec, block)

    sources = np.array([r.source for r in val_rows])
    groups = sources if card.training.per_source_fit or args.per_source else None
    rate = card.training.reject_rate or DEFAULT_REJECT_RATE
    distance = fit_guard(train_features, labels, val_features, len(card.class_names),
                         reject_rate=rate, heldout_groups=groups)
    result: dict = {"model": str(args.model), "per_source": groups is not None,
                    "card_guard_has_density": shipped.density is not None,
                    "counts": {k: len(v) for k, v in kinds.items()},
                    "check_images": len(check_features), "reject_rate": rate, "kinds": {}}
    for name, features in kinds.items():
        others = np.concatenate([f for other, f in kinds.items() if other != name])
        left_out = fit_refusal(copy.deepcopy(distance), train_features, others, val_features,
                               reject_rate=rate, heldout_groups=groups)
        result["kinds"][name] = {
            "shipped_guard": refused(shipped, features, statistics[name]),
            "distance_only": refused(distance, features),
            "left_out_of_the_fit": refused(left_out, features),
            "check_refused_without_it": refused(left_out, check_features),
        }
        if shipped.density is not None:  # the refusal fitted without it, and the density
            result["kinds"][name]["left_out_with_density"] = refused(
                with_density(left_out, shipped), features, statistics[name])
    every = fit_refusal(copy.deepcopy(distance), train_features,
                        np.concatenate(list(kinds.values())), val_features, reject_rate=rate,
                        heldout_groups=groups)
    everything = np.concatenate(list(kinds.values()))
    result["check_refused"] = {"shipped_guard": refused(shipped, check_features,
                                                        check_statistics),
                               "distance_only": refused(distance, check_features),
                               "fitted_on_every_kind": refused(every, check_features)}
    both_ct = np.concatenate([kinds["head-ct"], kinds["kaggle-ct"]])
    result["ct_collections"] = {
        "kaggle-ct, fitted on head-ct": refused(fit_refusal(
            copy.deepcopy(distance), train_features, kinds["head-ct"], val_features,
            reject_rate=rate, heldout_groups=groups), kinds["kaggle-ct"]),
        "head-ct, fitted on kaggle-ct": refused(fit_refusal(
            copy.deepcopy(distance), train_features, kinds["kaggle-ct"], val_features,
            reject_rate=rate, heldout_groups=groups), kinds["head-ct"])}
    both = fit_refusal(copy.deepcopy(distance), train_features, both_ct, val_features,
                       reject_rate=rate, heldout_groups=groups)
    result["check_refused"]["fitted_on_both_ct"] = refused(both, check_features)
    result["refused_by_the_guard_fitted_on_both_ct"] = {
        name: refused(both, features) for name, features in kinds.items()}
    result["mri_refused_out_of_fold"] = {
        "shipped_kinds (head-ct)": out_of_fold_refusals(
            train_features, labels, val_features, sources, kinds["head-ct"],
            len(card.class_names), per_source=groups is not None, reject_rate=rate),
        "both_ct (head-ct, kaggle-ct)": out_of_fold_refusals(
            train_features, labels, val_features, sources, both_ct,
            len(card.class_names), per_source=groups is not None, reject_rate=rate),
        "every_kind": out_of_fold_refusals(
            train_features, labels, val_features, sources, everything,
            len(card.class_names), per_source=groups is not None, reject_rate=rate)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
