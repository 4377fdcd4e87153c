"""What the Grad-CAM heat map is worth: the pointing game against manual tumour masks.

    python benchmarks/gradcam_pointing.py [--model default] --lgg ../shared/data/lgg-tcga \
        [--split SPLIT --subset test] [--every 1] [--tolerance 15] [--json out.json]

On every slice of ``lgg-tcga`` whose mask shows tumour, the Grad-CAM map of the glioma class
(the true class) is computed on each sequence's image. A hit is a map whose peak lies inside
the mask (the FLAIR abnormality; the sequences of one slice are co-registered) or, as in the
original pointing game (Zhang et al. 2016), within ``--tolerance`` pixels of it (15 of 256).
Per sequence: both hit rates, and the rates a peak placed at random inside the head would
reach (the share of the head's pixels that count as a hit, averaged): what the map must beat.
The mask outlines the FLAIR abnormality, which on T1 and T1C+ can be larger than what those
images show. The shipped `default` model trained on 43 of these patients: ``--split
src/mri_tumor/weights/efficientnet_lite0/split.csv --subset test`` keeps the patients on that
side of its split, which it never trained on.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

from mri_tumor import Predictor
from mri_tumor.data.patients import SLICE_FILE
from mri_tumor.explain.gradcam import gradcam

HEAD_LEVEL = 20  # grey level above which a pixel counts as head, for the chance rate


def tumour_slices(root: Path, every: int, patients: set[str] | None = None
                  ) -> list[tuple[Path, dict[str, Path]]]:
    """(mask, {sequence: image}) of the slices whose mask shows tumour (of ``patients`` only,
    when given)."""
    found = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        if patients is not None and patient.name not in patients:
            continue
        by_slice: dict[str, dict[str, Path]] = defaultdict(dict)
        for path in patient.iterdir():
            match = SLICE_FILE.match(path.name)
            if match:
                by_slice[match["slice"]][match["sequence"].upper()] = path
        for files in by_slice.values():
            mask = files.pop("MASK", None)
            if mask is not None and files and np.asarray(Image.open(mask)).max() > 0:
                found.append((mask, files))
    return found[::every]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--lgg", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1, help="use every N-th tumour slice")
    parser.add_argument("--tolerance", type=float, default=15.0, metavar="PIXELS")
    parser.add_argument("--split", type=Path, help="a split CSV: only its lgg-tcga patients on "
                        "the --subset side")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    patients = None
    if args.split is not None:
        from mri_tumor.data.splitting import read_split_csv
        from mri_tumor.evaluation.scans import split_groups

        patients = {group for source, group in split_groups(read_split_csv(args.split),
                                                            args.subset)
                    if source == "lgg-tcga"}
        if not patients:
            raise SystemExit(f"{args.split}: no lgg-tcga patients on the {args.subset!r} side")
    predictor = Predictor.load(args.model, backend="torch", threads=2)
    glioma = predictor.class_names.index("glioma")
    hits: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    chance: dict[str, list[tuple[float, float]]] = defaultdict(list)
    slices = tumour_slices(args.lgg, args.every, patients)
    for mask_path, images in slices:
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        near = distance_transform_edt(~mask) <= args.tolerance
        for sequence, path in images.items():
            image = Image.open(path).convert("L")
            cam = gradcam(predictor, image, glioma)
            if cam.shape != mask.shape or not cam.any():
                continue
            peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
            hits[sequence].append((bool(mask[peak]), bool(near[peak])))
            head = np.asarray(image) > HEAD_LEVEL
            area = max(int(head.sum()), 1)
            chance[sequence].append((float((mask & head).sum() / area),
                                     float((near & head).sum() / area)))
    result = {"model": predictor.name, "patients": len(patients) if patients else "all",
              "tumour_slices": len(slices), "by_sequence": {
        sequence: {"images": len(hits[sequence]),
                   "peak_in_mask": float(np.mean([h[0] for h in hits[sequence]])),
                   "chance_in_mask": float(np.mean([c[0] for c in chance[sequence]])),
                   "peak_within_tolerance": float(np.mean([h[1] for h in hits[sequence]])),
                   "chance_within_tolerance": float(np.mean([c[1] for c in chance[sequence]]))}
        for sequence in sorted(hits)}, "tolerance_pixels": args.tolerance}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
