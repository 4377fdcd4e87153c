"""How many images of named sets a model's guard refuses: brain MRIs it must keep and
images that are not brain MRI it must refuse, as `mri-tumor predict` reads them.

    python benchmarks/refusal_sets.py MODEL_DIR \
        --rows NAME=SPLIT_CSV:SIDE[:SOURCE] ... --folder NAME=DIR ... \
        --data DATA_DIR [DATA_DIR ...] [--json out.json]

``--rows`` takes the rows of one side of a split and one source of it (the data folders given
by ``--data`` say where the files are; without SOURCE, a one-source split whose files are in
the first ``--data`` folder); ``--folder``
takes every image under a folder. Prints, per set, the images and the share refused (status
``rejected``), e.g. a `types` guard before and after a change (docs/ood-guard.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mri_tumor import Predictor
from mri_tumor.data.rows import read_split_under, row_path, source_roots

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def row_files(spec: str, data: list[Path]) -> list[Path]:
    """``SPLIT_CSV:SIDE[:SOURCE]`` -> the files of those rows."""
    split, side, *source = spec.split(":")
    # A one-source split (no SOURCE) names no source in its rows: the first folder holds them.
    folders: list[Path] | Path = data if source else data[0]
    rows = [r for r in read_split_under(Path(split), folders) if r.split == side
            and (not source or r.source == source[0])]
    roots = source_roots(folders)
    return [row_path(r, roots) for r in rows]


def refused_share(predictor: Predictor, files: list[Path]) -> dict[str, float | int]:
    """Images read and the share of them refused."""
    results = []
    for start in range(0, len(files), 64):
        results += predictor.predict(files[start:start + 64])
    refused = sum(r.status == "rejected" for r in results)
    return {"images": len(results), "refused": refused,
            "share": round(refused / max(len(results), 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--rows", action="append", default=[], metavar="NAME=SPLIT:SIDE[:SOURCE]")
    parser.add_argument("--folder", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--data", type=Path, nargs="+", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    sets: dict[str, list[Path]] = {}
    for given in args.rows:
        name, spec = given.split("=", 1)
        sets[name] = row_files(spec, args.data)
    for given in args.folder:
        name, folder = given.split("=", 1)
        sets[name] = sorted(p for p in Path(folder).rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES)
    report = {name: refused_share(predictor, files) for name, files in sets.items()}
    text = json.dumps({"model": str(args.model), "sets": report}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
