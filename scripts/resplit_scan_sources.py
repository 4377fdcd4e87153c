"""A fresh split of the whole-scan sources, with a fold for fitting the scan rule out of fold.

    python scripts/resplit_scan_sources.py [--split runs/sources/split.csv]
        [--out runs/sources/split_oof.csv] [--test 11] [--rule-fold 11] [--seed 4]
        [--tested-before CSV ...] [--keep-healthy]

Why: the scan rule of the third whole-scan candidate was fitted on the predictions for its own
training patients, which the network has learnt, so it asked for more evidence than the network
gives a new patient (docs/experiments.md). This split keeps the Kaggle and teaching-file rows as
they are and re-draws the patients of ``lgg-tcga`` (stratified by institution):

- ``test``: ``--test`` patients from the old training side, never evaluated as held out before;
  training ignores them;
- ``val``: ``--rule-fold`` other patients from the old training side; the network does not train
  on them, so the scan rule is fitted on their stacks (``fit_scan_rule.py --side val``);
- ``train``: the rest, the old held-out patients included.

The healthy volumes swap sides: the two that were on the training side are now the test side.

With ``--tested-before`` (the splits whose test sides have been looked at), the new test patients
are drawn from the input split's training *and* rule-fold patients who were never on the test
side of it or of those splits, and the rule fold from every other patient not on the new test
side (an earlier test patient may fit the rule or train); ``--keep-healthy`` leaves the healthy
volumes where they are. The sixth whole-scan run: ``--split runs/sources/split_oof.csv
--tested-before runs/sources/split.csv --keep-healthy --seed 6 --out
runs/sources/split_six.csv``.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from mri_tumor.data.splitting import SplitRow, read_split_csv, write_split_csv

LGG = "lgg-tcga"
HEALTHY = "healthy-volumes"


def institution(patient: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``CS``."""
    return patient.split("_")[1]


def patient_sides(rows: list[SplitRow]) -> dict[str, str]:
    """Each ``lgg-tcga`` patient's side in a split."""
    return {row.path.split("/")[0]: row.split for row in rows if row.source == LGG}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("runs/sources/split.csv"))
    parser.add_argument("--out", type=Path, default=Path("runs/sources/split_oof.csv"))
    parser.add_argument("--test", type=int, default=11)
    parser.add_argument("--rule-fold", type=int, default=11)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--tested-before", type=Path, action="append", default=[],
                        metavar="CSV", help="an earlier split whose test patients are not "
                        "drawn for the new test side")
    parser.add_argument("--keep-healthy", action="store_true",
                        help="leave the healthy volumes on their sides")
    args = parser.parse_args()
    rows = read_split_csv(args.split)

    old_side = patient_sides(rows)
    if args.tested_before:
        tested = {p for p, side in old_side.items() if side == "test"}
        for earlier in args.tested_before:
            tested |= {p for p, side in patient_sides(read_split_csv(earlier)).items()
                       if side == "test"}
        test_pool = [p for p in sorted(old_side) if p not in tested]
    else:
        test_pool = [p for p, side in sorted(old_side.items()) if side == "train"]
    rng = random.Random(args.seed)
    new_side = {patient: "train" for patient in old_side}
    for side, wanted in (("test", args.test), ("val", args.rule_fold)):
        drawn_from = test_pool
        if side == "val" and args.tested_before:  # anyone not on the new test side
            drawn_from = [p for p in sorted(old_side) if new_side[p] != "test"]
        by_institution: dict[str, list[str]] = defaultdict(list)
        for patient in drawn_from:
            by_institution[institution(patient)].append(patient)
        pool = len(drawn_from)
        remaining = {k: [p for p in v if new_side[p] == "train"] for k, v in by_institution.items()}
        # Largest remainder: each institution in proportion to its share of the pool.
        quotas = {k: wanted * len(by_institution[k]) / pool for k in by_institution}
        counts = {k: int(q) for k, q in quotas.items()}
        for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True):
            if sum(counts.values()) >= wanted:
                break
            counts[k] += 1
        for k, patients in sorted(remaining.items()):
            for patient in rng.sample(patients, counts[k]):
                new_side[patient] = side

    out_rows = []
    for row in rows:
        if row.source == LGG:
            row = replace(row, split=new_side[row.path.split("/")[0]])
        elif row.source == HEALTHY and not args.keep_healthy:
            row = replace(row, split="test" if row.split == "train" else "train")
        out_rows.append(row)
    write_split_csv(out_rows, args.out)
    for side in ("train", "val", "test"):
        patients = sorted(p for p, s in new_side.items() if s == side)
        tally = ", ".join(f"{k} {sum(institution(p) == k for p in patients)}"
                           for k in sorted({institution(p) for p in old_side}))
        print(f"{LGG} {side}: {len(patients)} patients ({tally})")
    healthy = sorted({(r.path.split('/')[1], r.split) for r in out_rows if r.source == HEALTHY})
    print(f"{HEALTHY}: {', '.join(f'{name} {side}' for name, side in healthy)}")


if __name__ == "__main__":
    main()
