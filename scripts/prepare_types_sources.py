"""Extend the `types` model's split with the lower-grade glioma patients (FLAIR among them).

    python scripts/prepare_types_sources.py [--lgg ../shared/data/lgg-tcga]
        [--patients runs/sources/split.csv] [--out runs/types-sources/split.csv]

The teaching files keep the shipped types model's split (so that `mri-tumor compare` pairs
the same validation images); each `lgg-tcga` slice is labelled by the types scheme (a tumour
slice by the patient's histology when it is a type, astrocytoma or oligodendroglioma; a clear
slice "normal"; see ``data.patients``) and goes to the side of the split that ``--patients``
(the whole-scan split of ``scripts/prepare_scan_sources.py``) gives its patient, so both models
hold out the same glioma patients.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mri_tumor.data.folders import scan_folder
from mri_tumor.data.splitting import read_split_csv, write_split_csv

TYPES_SPLIT = Path("src/mri_tumor/weights/types/split.csv")
TEACHING_SOURCE = "brain-mri-44-types"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lgg", type=Path, default=Path("../shared/data/lgg-tcga"))
    parser.add_argument("--patients", type=Path, default=Path("runs/sources/split.csv"))
    parser.add_argument("--out", type=Path, default=Path("runs/types-sources/split.csv"))
    args = parser.parse_args()

    teaching = [replace(row, source=row.source or TEACHING_SOURCE)
                for row in read_split_csv(TYPES_SPLIT)]
    lgg = scan_folder(args.lgg, scheme="types")
    by_path = {row.path: row for row in read_split_csv(args.patients)
               if row.source == lgg.source}
    offset = max(row.group for row in teaching) + 1
    groups: dict[int, int] = {}
    rows = list(teaching)
    for image in lgg.images:
        known = by_path.get(lgg.relative(image.path))
        if known is None:
            raise SystemExit(f"{lgg.relative(image.path)} is not in {args.patients}: make the "
                             "whole-scan split first (scripts/prepare_scan_sources.py)")
        group = groups.setdefault(known.group, offset + len(groups))
        rows.append(replace(known, label=image.label, group=group, sequence=image.sequence))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_split_csv(rows, args.out)
    for side in ("train", "val"):
        counts: dict[str, int] = {}
        for row in rows:
            if row.source == lgg.source and row.split == side:
                counts[f"{row.label} {row.sequence}"] = counts.get(f"{row.label} {row.sequence}",
                                                                   0) + 1
        print(f"{lgg.source} {side}: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
