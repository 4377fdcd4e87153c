"""Average the weights of several runs of one recipe (a uniform "model soup").

    python scripts/average_weights.py RUN_DIR RUN_DIR [...] --out DIR
    mri-tumor calibrate --model DIR DATA_DIR [DATA_DIR ...] [--refuse ...]   # then, always

Runs fine-tuned from the same pretrained start with the same recipe and split land close
enough together that the mean of their weights is itself a good model (Wortsman et al., 2022),
and it is as cheap to run as one of them; it takes out part of the run-to-run noise that
moves a single run's validation numbers. Every floating-point tensor is averaged, batch-norm
running statistics included. The output holds the average (fp32), the first run's card,
split and history, with the runs named in the card (`training.averaged_runs`). The
temperature, the guard and the card's metrics still belong to the first run until `mri-tumor
calibrate` re-fits them on the average, which is why that step is not optional.

Measured once (docs/experiments.md, "A second draw, and the average of the two"): two seeds of
the balanced-sources recipe averaged to a model worse than either (94.9% against 96.4% and
96.8% on Kaggle). Each seed starts its classification layer from its own random draw, so those
runs did not share a start; runs that do (e.g. continued from one trained model) are the case
the method is for.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from mri_tumor.card import CARD_FILE
from mri_tumor.models import load_model, save_weights


def average_runs(runs: list[Path], out: Path) -> None:
    """Write the uniform average of ``runs`` (same architecture, classes and split) to ``out``."""
    loaded = [load_model(run) for run in runs]
    first_model, card, _ = loaded[0]
    splits = {(run / "split.csv").read_bytes() for run in runs}
    for run, (_, other, _) in zip(runs[1:], loaded[1:], strict=True):
        if (other.architecture, other.class_names, other.sequence_names) != (
                card.architecture, card.class_names, card.sequence_names):
            raise ValueError(f"{run}: another architecture or other classes than {runs[0]}")
    if len(splits) != 1:
        raise ValueError("the runs were trained on different splits (split.csv differs)")
    states = [model.state_dict() for model, _, _ in loaded]
    averaged = {key: torch.stack([s[key] for s in states]).mean(dim=0)
                if value.is_floating_point() else value
                for key, value in states[0].items()}
    first_model.load_state_dict(averaged)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(first_model, out)
    for name in ("split.csv", "history.json", "curves.png"):
        if (runs[0] / name).is_file():
            shutil.copy(runs[0] / name, out / name)
    card.training.other["averaged_runs"] = [
        {"run": run.name, "seed": other.training.seed,
         "best_epoch": other.training.best_epoch_val_acc}
        for run, (_, other, _) in zip(runs, loaded, strict=True)]
    card.save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="trained model folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.runs) < 2:
        print("give at least two runs to average", file=sys.stderr)
        return 2
    for run in args.runs:
        for needed in (CARD_FILE, "split.csv"):
            if not (run / needed).is_file():
                print(f"{run}: not a trained run folder (no {needed})", file=sys.stderr)
                return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out}: exists and is not empty; nothing was written", file=sys.stderr)
        return 2
    try:
        average_runs(args.runs, args.out)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"wrote {args.out}; now re-fit it: mri-tumor calibrate --model {args.out} DATA_DIR ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
