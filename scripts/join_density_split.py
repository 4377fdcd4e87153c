"""A split for fitting a model's guard density on more sources than it was trained on: the
model's own rows on their sides, plus the rows of the other sources of a second split.

    python scripts/join_density_split.py src/mri_tumor/weights/types/split.csv \
        --source brain-mri-44-types --add runs/sources/split_oof.csv --out runs/types-density.csv

The model's rows without a source name get ``--source``; the second split's rows of that
source are dropped (the model's own sides win), the others are kept as they are, test side
included (a density fits on train and val only). Then ``mri-tumor calibrate ...
--density-only --density-split OUT`` with every source's folder.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_split", type=Path)
    parser.add_argument("--source", required=True, help="the source name of the model's rows")
    parser.add_argument("--add", type=Path, required=True, help="a split of more sources")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.model_split.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        own = [dict(row, source=row.get("source") or args.source) for row in reader]
    with args.add.open(newline="") as handle:
        added = [row for row in csv.DictReader(handle) if row["source"] != args.source]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(own + added)
    print(f"{args.out}: {len(own)} rows of {args.source}, {len(added)} of other sources")


if __name__ == "__main__":
    main()
