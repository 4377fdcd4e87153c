"""Continuous training: adapt a model to a site's confirmed cases, behind a regression gate.

    result = adapt(AdaptConfig(site_dir, from_model="default", out=Path("runs/site-1"),
                               reference_dirs=[kaggle_dir]))

1. **Split** the site folder duplicate-aware into a training part and a check part.
2. **Fine-tune** the model on the site's training part plus a replay sample of the
   reference folders' training images (so that it does not forget them), then re-fit the
   temperature and the out-of-distribution guard (``training.train`` with ``from_model``).
3. **Gate**: score the base model and the candidate on the site's check part and on a check
   set of every reference folder (images the base model never trained on when its split
   names them). The candidate is promoted only if site accuracy does not fall, no reference
   accuracy falls by more than ``max_reference_drop`` points and its ECE stays at most
   ``MAX_ECE`` on every set (or no higher than the base's, where that was already above).

Promoted: ``out`` is a complete model folder whose card records its lineage (parent, site
data, gate), plus ``gate.json`` and ``gate.md``. Refused: ``out`` holds only the gate files.
The check images also choose the candidate's epoch, so its site numbers are a little
optimistic; the base model's are not. Research tool, not a diagnosis.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mri_tumor.card import SPLIT_FILE, ModelCard
from mri_tumor.data.folders import LabelledImage, scan_folders
from mri_tumor.data.splitting import (
    SplitRow,
    folder_fingerprint,
    read_split_csv,
    split_folders,
    write_split_csv,
)
from mri_tumor.inference.model_folder import resolve_model
from mri_tumor.training.config import AugmentConfig, TrainConfig

MIN_SITE_IMAGES = 20  # fewer confirmed cases than this say too little to adapt on
MIN_PER_CLASS = 4  # and each class the site has needs at least this many
CHECK_FRACTION = 0.3  # share of the site's images kept aside for the gate
REPLAY_PER_SITE_IMAGE = 3  # reference images replayed per site training image
REFERENCE_CHECK_MAX = 1000  # reference images per folder that the gate scores
# A candidate's ECE must be at most this on every set, or, where the base model was already
# above it (a new site it was never calibrated for), no higher than the base model's.
MAX_ECE = 0.05
GATE_JSON, GATE_MD = "gate.json", "gate.md"


class TooFewSiteImagesError(ValueError):
    """The site folder holds too few confirmed cases to adapt on (exit 2)."""


@dataclass
class AdaptConfig:
    """What ``mri-tumor adapt`` takes."""

    site_dir: Path
    out: Path
    from_model: str | Path | None = None  # a shipped name, a registered name or a folder
    reference_dirs: list[Path] = field(default_factory=list)
    # Non-MRI examples for the guard's refusal direction (e.g. head CT), as in training.
    refuse_dirs: list[Path] = field(default_factory=list)
    max_reference_drop: float = 0.5  # percentage points
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    # Fine-tuning sees the training recipe's augmentation (the same as ``TrainConfig()`` and
    # ``mri-tumor train``), so a site's scanner differences are learnt as in training; the
    # promoted card records it under ``lineage.augment``.
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class GateResult:
    """The gate's decision and the numbers it was made on (``gate.json``)."""

    promoted: bool
    base: dict[str, dict[str, Any]]
    candidate: dict[str, dict[str, Any]]
    rule: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "base": self.base, "candidate": self.candidate,
                "rule": self.rule, "reason": self.reason}


def gate_rule(max_reference_drop: float) -> str:
    """The promotion rule in words."""
    return (f"promote only if site accuracy does not fall, no reference accuracy falls by "
            f"more than {max_reference_drop:g} points, and on every set ECE <= {MAX_ECE} "
            "(or, where the base model's was already above that, no higher than the base's)")


def decide(base: dict[str, dict[str, Any]], candidate: dict[str, dict[str, Any]],
           max_reference_drop: float) -> tuple[bool, str]:
    """Apply the gate rule to per-set ``{n, accuracy, macro_f1, ece}``; (promoted, reason).
    The set named ``site`` is the site's check part, every other set a reference."""
    problems = []
    if candidate["site"]["accuracy"] < base["site"]["accuracy"]:
        problems.append(f"site accuracy fell from {base['site']['accuracy']:.1%} to "
                        f"{candidate['site']['accuracy']:.1%}")
    for name in base:
        if name == "site":
            continue
        drop = (base[name]["accuracy"] - candidate[name]["accuracy"]) * 100
        if drop > max_reference_drop:
            problems.append(f"{name} accuracy fell by {drop:.1f} points (at most "
                            f"{max_reference_drop:g} allowed)")
    for name, scores in candidate.items():
        allowed = max(MAX_ECE, base[name]["ece"] or 0.0)
        if scores["ece"] is not None and scores["ece"] > allowed:
            problems.append(f"ECE on {name} is {scores['ece']:.3f} (at most {allowed:.3f})")
    if problems:
        return False, "refused: " + "; ".join(problems)
    gain = (candidate["site"]["accuracy"] - base["site"]["accuracy"]) * 100
    return True, f"promoted: site accuracy {gain:+.1f} points, every reference within the rule"


def check_site(scan_counts: dict[str, int], class_names: list[str]) -> None:
    """TooFewSiteImagesError or ValueError, in one line, unless the site folder can be
    adapted on."""
    unknown = sorted(set(scan_counts) - set(class_names))
    if unknown:
        raise ValueError(f"site classes {', '.join(unknown)} are not among the model's "
                         f"({', '.join(class_names)})")
    total = sum(scan_counts.values())
    few = [f"{name} ({count})" for name, count in scan_counts.items() if count < MIN_PER_CLASS]
    if total < MIN_SITE_IMAGES or few:
        raise TooFewSiteImagesError(
            f"too few site images to adapt on: {total} in all"
            + (f", and {', '.join(few)}" if few else "")
            + f"; at least {MIN_SITE_IMAGES} in all and {MIN_PER_CLASS} per class are needed")


def adapt(config: AdaptConfig, progress: bool = True) -> GateResult:
    """Fine-tune, gate, and write ``config.out`` (see the module docstring)."""
    from mri_tumor.inference import Predictor
    from mri_tumor.training import train

    base_name, base_dir = resolve_model(config.from_model)
    base_card = ModelCard.load(base_dir)
    site_scan, *reference_scans = scan_folders([config.site_dir, *config.reference_dirs],
                                               base_card.label_scheme)
    check_site(site_scan.counts(), base_card.class_names)
    site_rows = split_folders([site_scan], val_fraction=CHECK_FRACTION, seed=config.seed)
    site_rows = [replace(row, source=site_scan.source) for row in site_rows]
    rng = random.Random(config.seed)
    reference_rows: dict[str, tuple[list[SplitRow], list[SplitRow]]] = {}
    site_train = sum(row.split == "train" for row in site_rows)
    for scan in reference_scans:
        replay, check = _reference_rows(scan, base_dir, base_card, rng)
        replay = rng.sample(replay, min(len(replay), REPLAY_PER_SITE_IMAGE * site_train))
        reference_rows[scan.source] = (replay, rng.sample(check, min(len(check),
                                                                      REFERENCE_CHECK_MAX)))
    with tempfile.TemporaryDirectory(prefix="mri-tumor-adapt-") as tmp:
        work = Path(tmp)
        rows = site_rows + [replace(row, split="train") for replay, _ in reference_rows.values()
                            for row in replay]
        rows += [replace(row, split="val") for _, check in reference_rows.values() for row in check]
        write_split_csv(rows, work / SPLIT_FILE)
        candidate_dir = work / "candidate"
        train(fine_tuning_config(config, base_card, base_dir, work / SPLIT_FILE, candidate_dir))
        sets = {"site": [row for row in site_rows if row.split == "val"]}
        sets |= {name: check for name, (_, check) in reference_rows.items()}
        roots = {site_scan.source: Path(config.site_dir)} | {
            scan.source: scan.root for scan in reference_scans}
        scores: dict[str, dict[str, dict[str, Any]]] = {}
        for role, directory in (("base", base_dir), ("candidate", candidate_dir)):
            predictor = Predictor.load(directory)
            scores[role] = {}
            for name, set_rows in sets.items():
                images = [LabelledImage(roots[row.source] / row.path, row.label, row.source,
                                        row.sequence) for row in set_rows]
                scores[role][name] = gate_scores(predictor, images, progress)
        promoted, reason = decide(scores["base"], scores["candidate"],
                                  config.max_reference_drop)
        result = GateResult(promoted, scores["base"], scores["candidate"],
                            gate_rule(config.max_reference_drop), reason)
        _write_out(config, result, candidate_dir if promoted else None, base_name, base_dir,
                   site_scan)
    return result


def fine_tuning_config(config: AdaptConfig, base_card: ModelCard, base_dir: Path, split: Path,
                       out: Path) -> TrainConfig:
    """The training run of an adaptation: the base model fine-tuned on the site's split, with
    a cosine schedule, no source repeats and the recipe's augmentation (``config.augment``)."""
    return TrainConfig(
        data_dirs=[config.site_dir, *config.reference_dirs], out=out,
        arch=base_card.architecture, from_model=base_dir, split=split,
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
        schedule="cosine", source_balance=0.0, image_size=base_card.image_size,
        label_scheme=base_card.label_scheme, refuse_dirs=list(config.refuse_dirs),
        augment=config.augment)


def gate_scores(predictor: Any, images: list[LabelledImage],
                progress: bool = False) -> dict[str, Any]:
    """``{n, accuracy, macro_f1, ece}`` of a predictor on labelled images (one gate set)."""
    from mri_tumor.evaluation import ImageSet, compute_metrics, score_images

    image_set = ImageSet(sorted({image.path.parent for image in images}), images,
                         [str(image.path) for image in images])
    scored = score_images(predictor, image_set, progress=progress)
    metrics = compute_metrics(scored.logits, scored.labels, predictor.class_names,
                              predictor.card.temperature)
    return {key: metrics[key] for key in ("n", "accuracy", "macro_f1", "ece")}


def _reference_rows(scan: Any, base_dir: Path, base_card: ModelCard,
                    rng: random.Random) -> tuple[list[SplitRow], list[SplitRow]]:
    """(replay pool, check pool) of a reference folder: the base model's own training and
    validation rows of that folder when its split names it (so the check images are ones it
    never trained on), else a fresh duplicate-aware split of the folder."""
    split = base_card.split_path(base_dir)
    relative = {scan.relative(image.path): image for image in scan.images}
    if split.is_file():
        rows = [row for row in read_split_csv(split)
                if row.source in (scan.source, "") and row.path in relative
                and row.label in base_card.class_names]
        if rows:
            rows = [replace(row, source=scan.source) for row in rows]
            return ([row for row in rows if row.split == "train"],
                    [row for row in rows if row.split != "train"])
    fresh = [replace(row, source=scan.source)
             for row in split_folders([scan], seed=rng.randrange(1000))]
    return ([row for row in fresh if row.split == "train"],
            [row for row in fresh if row.split != "train"])


def _write_out(config: AdaptConfig, result: GateResult, candidate_dir: Path | None,
               base_name: str, base_dir: Path, site_scan: Any) -> None:
    """The gate files, and for a promoted candidate the model folder with its lineage."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if candidate_dir is not None:
        card = ModelCard.load(candidate_dir)
        files = [(site_scan.source, site_scan.relative(image.path)) for image in site_scan.images]
        card.lineage = {
            "parent": {"name": base_name, "weights_sha256": ModelCard.weights_sha256(base_dir)},
            "site_data": {"fingerprint": folder_fingerprint({site_scan.source: site_scan.root},
                                                            files),
                          "counts": site_scan.counts()},
            "gate": result.to_dict(),
            "augment": config.augment.to_dict()}
        card.save(candidate_dir)
        for item in candidate_dir.iterdir():
            if item.name in ("checkpoints", "tensorboard"):
                continue
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    (out / GATE_JSON).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (out / GATE_MD).write_text(gate_markdown(result))


def gate_markdown(result: GateResult) -> str:
    """``gate.md``: the decision and the numbers, in words and a table."""
    lines = [f"# Regression gate: {'promoted' if result.promoted else 'refused'}", "",
             f"Rule: {result.rule}.", "", f"Decision: {result.reason}.", "",
             "| set | images | base accuracy | candidate accuracy | change (points) | "
             "candidate ECE |", "|---|---|---|---|---|---|"]
    for name, base in result.base.items():
        candidate = result.candidate[name]
        change = (candidate["accuracy"] - base["accuracy"]) * 100
        lines.append(f"| {name} | {base['n']} | {base['accuracy']:.1%} | "
                     f"{candidate['accuracy']:.1%} | {change:+.1f} | "
                     f"{_ece(candidate['ece'])} |")
    lines += ["", "Research tool, not a diagnosis. A promoted model is a candidate for review, "
              "not a validated medical device.", ""]
    return "\n".join(lines)


def _ece(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


__all__ = ["AdaptConfig", "GateResult", "TooFewSiteImagesError", "adapt", "decide",
           "gate_rule", "gate_scores"]
