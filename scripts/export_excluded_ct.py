"""Link the head CTs of the reviewed exclusion list into one folder, as negatives for the guard.

    python scripts/export_excluded_ct.py [--data ../shared/data] [--out runs/kaggle-ct]

The exclusion list (``src/mri_tumor/data/exclusions.csv``) takes these images out of training
and evaluation because they are CT, not MRI; ``mri-tumor calibrate ... --refuse OUT`` fits the
guard's refusal direction on them (docs/ood-guard.md, "A second CT collection").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mri_tumor.data.folders import load_exclusions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/kaggle-ct"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    linked = 0
    for (source, path), reason in sorted(load_exclusions().items()):
        if not reason.startswith("head CT"):
            continue
        target = (args.data / source / path).resolve()
        if not target.is_file():
            raise SystemExit(f"{target}: not found (is --data the folder with {source}?)")
        link = args.out / Path(path).name
        if not link.exists():
            link.symlink_to(target)
        linked += 1
    print(f"{linked} excluded head CTs in {args.out}")


if __name__ == "__main__":
    main()
