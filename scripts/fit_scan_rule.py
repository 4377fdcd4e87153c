"""Fit a model's scan rule on the scans of its training patients and healthy volumes.

    python scripts/fit_scan_rule.py MODEL_DIR --scans LGG_DIR HEALTHY_SCANS_DIR \
        [--split MODEL_DIR/split.csv] [--window 3] [--side train] [--healthy-side SIDE]

Positives: every stack of a tumour patient on the split's ``--side`` (one per sequence).
Negatives: the healthy volumes on ``--healthy-side`` (``--side`` unless given), and each run of
eight or more consecutive clear slices (two or more slices from the tumour) of the tumour
patients' stacks, as a stack without tumour. ``--side val`` fits the rule out of fold, on
patients the network did not train on (``scripts/resplit_scan_sources.py``). The
fitted rule (``scans.ScanRule``) is written into the model's card as ``scan_rule``, with what
it was fitted on. Research tool, not a diagnosis.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mri_tumor import Predictor
from mri_tumor.card import ModelCard
from mri_tumor.data.splitting import read_split_csv
from mri_tumor.evaluation.scans import CLEAR, find_cases, rule_fitting_groups, score_cases
from mri_tumor.inference.scans import fit_scan_rule, window_statistic

MIN_CLEAR_RUN = 8


def clear_runs(rows: list[dict]) -> list[list[float]]:
    """Runs of consecutive readable clear slices of one stack, at least MIN_CLEAR_RUN long."""
    runs, current = [], []
    for row in sorted(rows, key=lambda r: r["index"]):
        if row["truth"] == CLEAR and row["status"] == "ok":
            current.append(row["p_tumour"])
        elif row["truth"] != CLEAR:
            if len(current) >= MIN_CLEAR_RUN:
                runs.append(current)
            current = []
    if len(current) >= MIN_CLEAR_RUN:
        runs.append(current)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--scans", type=Path, nargs="+", required=True)
    parser.add_argument("--split", type=Path)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--side", choices=("train", "val"), default="train",
                        help="the split's side whose tumour patients fit the rule")
    parser.add_argument("--healthy-side", choices=("train", "val"),
                        help="the side of the healthy volumes (default: --side)")
    args = parser.parse_args()
    split = args.split or args.model / "split.csv"
    predictor = Predictor.load(args.model)
    normal = predictor.card.normal_class
    if normal is None:
        raise SystemExit(f"{args.model}: the card names no normal class, so no scan rule")
    groups = rule_fitting_groups(read_split_csv(split), normal, args.side, args.healthy_side)
    cases = find_cases(args.scans, normal, groups)
    scans, slices = score_cases(predictor, cases)
    curves, labels = [], []
    for scan in scans:
        rows = [s for s in slices if s["scan"] == scan["scan"]]
        readable = [r["p_tumour"] for r in sorted(rows, key=lambda r: r["index"])
                    if r["status"] == "ok"]
        if len(readable) < 3:
            continue
        curves.append(readable)
        labels.append(scan["truth"] != normal)
        if scan["truth"] != normal:
            for run in clear_runs(rows):
                curves.append(run)
                labels.append(False)
    positives, negatives = sum(labels), len(labels) - sum(labels)
    healthy = sum(1 for s in scans if s["truth"] == normal)
    rule = fit_scan_rule(curves, labels, args.window, fitted_on=(
        f"{positives} {args.side}-side tumour stacks and {negatives} stacks without tumour "
        f"({healthy} healthy volumes, {negatives - healthy} runs of >= {MIN_CLEAR_RUN} clear "
        f"slices of tumour patients) of {', '.join(sorted({c.source for c in cases}))}"))
    called = np.array([rule.probability(window_statistic(c, rule.window)[0]) >= rule.threshold
                       for c in curves])
    truth = np.array(labels)
    print(f"rule: {rule}")
    print(f"{args.side} side: tumour stacks called tumour {called[truth].mean():.1%} "
          f"({positives}), stacks without tumour called normal {(~called[~truth]).mean():.1%} "
          f"({negatives})")
    card = ModelCard.load(args.model)
    card.scan_rule = rule.to_dict()
    card.save(args.model)


if __name__ == "__main__":
    main()
