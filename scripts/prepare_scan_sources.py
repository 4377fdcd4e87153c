"""Arrange the whole-scan training sources and extend the shipped split with them.

    python scripts/prepare_scan_sources.py [--data ../shared/data] [--out runs/sources]

Writes, under ``--out``:

- ``healthy-volumes/notumor/<volume>/<slice>.png``: the axial slices of every NIfTI volume of
  ``healthy-volumes``, exactly as the product reads them (``data.volume``); a volume is one
  group, so its slices stay on one side of the split;
- ``skull-stripped-normal/notumor/oasis``: a copy of ``skull-stripped-normal`` (no subject
  identifiers there, so the whole folder is one group, on the training side);
- ``split.csv``: the shipped model's split (Kaggle and teaching files, unchanged) plus a
  split by patient of ``lgg-tcga`` and of the two folders above, stratified by source.

Training then reads ``lgg-tcga`` in its own folder and these two folders as class folders.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

from mri_tumor.data.folders import scan_folders
from mri_tumor.data.splitting import read_split_csv, split_folders, write_split_csv
from mri_tumor.data.volume import axial_slices, read_nifti

SHIPPED_SPLIT = Path("src/mri_tumor/weights/efficientnet_lite0/split.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/sources"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    healthy = args.out / "healthy-volumes" / "notumor"
    for path in sorted((args.data / "healthy-volumes").glob("*.nii*")):
        volume = read_nifti(path.read_bytes(), path.name)
        folder = healthy / path.name.split(".")[0]
        folder.mkdir(parents=True, exist_ok=True)
        for index, image, _ in axial_slices(volume):
            image.save(folder / f"{index:03d}.png")
    stripped = args.out / "skull-stripped-normal" / "notumor" / "oasis"
    if not stripped.exists():
        shutil.copytree(args.data / "skull-stripped-normal", stripped,
                        ignore=shutil.ignore_patterns("*.md"))

    scans = scan_folders([args.data / "lgg-tcga", args.out / "skull-stripped-normal",
                          args.out / "healthy-volumes"])
    new_rows = split_folders(scans, seed=args.seed)
    shipped = read_split_csv(SHIPPED_SPLIT)
    offset = max(row.group for row in shipped) + 1
    rows = shipped + [replace(row, group=row.group + offset) for row in new_rows]
    write_split_csv(rows, args.out / "split.csv")
    for scan in scans:
        sides: dict[str, int] = {}
        for row in new_rows:
            if row.source == scan.source:
                sides[row.split] = sides.get(row.split, 0) + 1
        print(f"{scan.source}: {len(scan.images)} images {sides}, skipped {len(scan.skipped)}")


if __name__ == "__main__":
    main()
