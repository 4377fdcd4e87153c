"""``segment``, ``train-segmenter`` and ``evaluate-segmenter``: outline tumours, train the
outline model, score it on held-out patients."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mri_tumor.cli.common import (
    HelpFormatter,
    UsageError,
    add_backend,
    add_model,
    nothing_found,
    skipped_note,
    subfolders,
    unread_note,
)


def _add_segmenter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmenter", metavar="DIR", type=Path,
                   help="a segmentation model folder (default: the shipped one)")


def add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="outline the tumour (FLAIR abnormality) and measure it",
        description="Outline the tumour in NIfTI volumes, DICOM series and slice images and "
                    "measure it (volume in mL, slices, largest axial diameter). The "
                    "classifier answers first: a scan it refuses or calls no tumour gets an "
                    "empty mask and the reason. Research tool, not a diagnosis.")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the masks (<name>.mask.nii.gz, <name>.mask.png)")
    p.add_argument("--json", action="store_true", help="one JSON object per input line")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--no-classifier", action="store_true",
                   help="outline every input, whatever the classifier would answer")
    p.add_argument("--with", dest="companions", action="append", default=[],
                   metavar="SEQUENCE=NIFTI",
                   help="a volume of another sequence of the same session (T1=t1.nii.gz, "
                        "T1C+=t1c.nii.gz; repeat), resampled onto the FLAIR's voxel grid by "
                        "the files' coordinates when on another: the one input is then the "
                        "FLAIR volume, outlined by the shipped FLAIR + T1 + T1C+ model (or "
                        "--segmenter); a sequence not given is replaced by FLAIR")
    _add_segmenter(p)
    add_model(p)
    add_backend(p)


def run_segment(args: argparse.Namespace) -> int:
    from mri_tumor.card import DISCLAIMER
    from mri_tumor.data.inputs import expand_inputs
    from mri_tumor.inference.outlining import ERROR, Outliner
    from mri_tumor.inference.segmentation import Segmenter

    files, skipped = expand_inputs(args.paths, recursive=args.recursive)
    if skipped:
        print(f"note: {skipped_note(skipped)}", file=sys.stderr)
    if not files:
        print(f"mri-tumor segment: {nothing_found(args.paths, args.recursive)}", file=sys.stderr)
        return 1
    if not args.recursive and (unread := subfolders(args.paths)):
        print(f"note: {unread_note(unread)}", file=sys.stderr)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    companions = _companion_volumes(args.companions, files)
    if companions:
        from mri_tumor.inference.segmentation import SHIPPED_MULTI_SEGMENTER

        segmenter = Segmenter.load(args.segmenter or SHIPPED_MULTI_SEGMENTER)
    else:
        segmenter = Segmenter.load(args.segmenter)
    predictor = None
    if not args.no_classifier:
        from mri_tumor.inference import Predictor

        predictor = Predictor.load(args.model, backend=args.backend)
    try:
        outliner = Outliner(segmenter, predictor, args.out, companions)
    except ValueError as error:
        where = f"--segmenter {args.segmenter}" if args.segmenter else "--with"
        raise UsageError(f"{where}: {error}") from None
    results = outliner.run(files, args.paths)
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict()))
        else:
            where = f" -> {result.mask}" if result.mask else ""
            print(f"{result.name}: {result.message}{where}")
    print(("" if args.json else "\n") + DISCLAIMER, file=sys.stderr if args.json else sys.stdout)
    return 1 if any(r.status == ERROR for r in results) else 0


def _companion_volumes(given: list[str], files: list[Path]) -> dict:
    """``--with SEQUENCE=PATH`` -> sequence -> its volume; checks that there is one NIfTI
    input to go with them."""
    from mri_tumor.data.reading import ImageReadError
    from mri_tumor.data.volume import is_nifti_name, read_nifti

    if not given:
        return {}
    if len(files) != 1 or not is_nifti_name(files[0]):
        raise UsageError("--with needs exactly one input, the FLAIR volume as NIfTI "
                         f"(got {len(files)} file(s))")
    volumes = {}
    for item in given:
        sequence, _, path = item.partition("=")
        if not sequence or not path:
            raise UsageError(f"--with {item!r}: write it SEQUENCE=PATH, e.g. T1=t1.nii.gz")
        if sequence in volumes:
            raise UsageError(f"--with: {sequence} given twice")
        try:
            volumes[sequence] = read_nifti(Path(path).read_bytes(), path)
        except (OSError, ImageReadError, ValueError) as error:
            message = str(error) if not isinstance(error, OSError) else "cannot read this file"
            raise UsageError(f"--with {sequence}={path}: {message}") from None
    return volumes


def add_train_segmenter(sub: argparse._SubParsersAction) -> None:
    from mri_tumor.training.config import SegmentConfig

    default = SegmentConfig(data_dir=Path("."))
    p = sub.add_parser(
        "train-segmenter", formatter_class=HelpFormatter,
        help="train the tumour outline model on slices with masks",
        description="Train the segmentation model on a whole-scan folder (patient folders "
                    "of <NNN>_FLAIR.jpg slices with <NNN>_mask.png masks), holding out a "
                    "share of each institution's patients, then score it on them.")
    p.add_argument("data_dir", type=Path, help="the whole-scan folder (e.g. lgg-tcga)")
    p.add_argument("--out", type=Path, default=default.out, help="run folder")
    p.add_argument("--epochs", type=int, default=default.epochs, help="passes (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=default.batch_size, help="slices per step")
    p.add_argument("--lr", type=float, default=default.lr, help="peak learning rate (AdamW)")
    p.add_argument("--companions", nargs="+", default=list(default.companions),
                   metavar="SEQUENCE", help="co-registered sequences read as further input "
                                            "channels, e.g. T1 T1C+ (default: FLAIR alone)")
    p.add_argument("--neighbours", action="store_true", default=default.neighbours,
                   help="2.5-D: read the slices before and after as further input channels "
                        "(with FLAIR alone)")
    p.add_argument("--image-size", type=int, default=default.image_size,
                   help="model input side, a multiple of 32")
    p.add_argument("--held-out", type=float, default=default.held_out,
                   help="share of each institution's patients held out")
    p.add_argument("--seed", type=int, default=default.seed,
                   help="seed of the split and of training")
    p.add_argument("--max-minutes", type=float, help="stop after this wall time")
    p.add_argument("--max-train-batches", type=float, default=default.max_train_batches,
                   help="share (<= 1) or number of batches per epoch, for smoke tests")


def run_train_segmenter(args: argparse.Namespace) -> int:
    from mri_tumor.training.config import SegmentConfig

    if not 0 < args.held_out < 1:
        raise UsageError("--held-out must lie between 0 and 1")
    if args.epochs < 1 or args.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    if args.neighbours and args.companions:
        raise UsageError("--neighbours reads FLAIR alone: leave out --companions")
    limit = args.max_train_batches
    config = SegmentConfig(
        data_dir=args.data_dir, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, image_size=args.image_size, held_out=args.held_out, seed=args.seed,
        max_minutes=args.max_minutes, max_train_batches=int(limit) if limit > 1 else limit,
        companions=tuple(args.companions), neighbours=args.neighbours)
    from mri_tumor.training.segmentation import train_segmenter

    out = train_segmenter(config)
    print(f"segmentation model written to {out}")
    return _evaluate(out, args.data_dir, "test", as_json=False, write_card=True)


def add_evaluate_segmenter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-segmenter", help="score the outline model on patients with masks",
        description="Dice per patient (3-D, over each patient's stack) and outlined volume "
                    "against the manual masks, with a bootstrap interval over patients.")
    p.add_argument("data_dir", type=Path, help="the whole-scan folder (e.g. lgg-tcga)")
    _add_segmenter(p)
    p.add_argument("--patients", choices=("test", "train", "all"), default="test",
                   help="which patients of the model's split.csv (all: every patient found)")
    p.add_argument("--json", action="store_true", help="the metrics as one JSON object")
    p.add_argument("--out", type=Path, help="also write the metrics to OUT/segmentation.json "
                                            "(for `mri-tumor compare`)")
    p.add_argument("--without-neighbours", action="store_true",
                   help="a 2.5-D model reads each slice alone, as it reads a slice image")


def run_evaluate_segmenter(args: argparse.Namespace) -> int:
    from mri_tumor.inference.segmentation import SHIPPED_SEGMENTER

    if args.out is not None and args.out.is_file():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    return _evaluate(args.segmenter or SHIPPED_SEGMENTER, args.data_dir, args.patients,
                     as_json=args.json, write_card=False, out=args.out,
                     neighbours=not args.without_neighbours)


def _evaluate(model_dir: Path, data_dir: Path, side: str, as_json: bool,
              write_card: bool, out: Path | None = None, neighbours: bool = True) -> int:
    from mri_tumor.card import SegmentationCard
    from mri_tumor.evaluation.segmentation import (
        evaluate_segmentation,
        format_segmentation_metrics,
        split_of,
    )
    from mri_tumor.inference.segmentation import Segmenter

    segmenter = Segmenter.load(model_dir)
    patients = None
    if side != "all":
        patients = [p for p, s in split_of(model_dir).items() if s == side]
        if not patients:
            raise UsageError(f"{model_dir}: its split has no {side} patients")
    metrics = evaluate_segmentation(segmenter, data_dir, patients, neighbours)
    if write_card:
        card = SegmentationCard.load(model_dir)
        card.metrics = {"held_out": {k: v for k, v in metrics.items() if k != "per_patient"},
                        "held_out_per_patient": metrics["per_patient"]}
        card.save(model_dir)
    if out is not None:
        from mri_tumor.evaluation.segmentation_comparison import SEGMENTATION_FILE

        out.mkdir(parents=True, exist_ok=True)
        (out / SEGMENTATION_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if as_json:
        print(json.dumps(metrics))
    else:
        print(f"{side} patients of {Path(model_dir)} on {data_dir}:")
        sys.stdout.write(format_segmentation_metrics(metrics))
    return 0
