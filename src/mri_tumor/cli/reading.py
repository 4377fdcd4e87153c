"""Commands that read images with a model: ``predict``, ``export``, ``evaluate``, ``compare``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from mri_tumor.card import DISCLAIMER
from mri_tumor.cli.common import (
    UsageError,
    add_backend,
    add_model,
    nothing_found,
    skipped_note,
    subfolders,
    unread_note,
)


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images, DICOM files or folders of them")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per input line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch-size", type=int, default=32, help="files decoded per step")
    add_backend(p)
    add_model(p)


def run_predict(args: argparse.Namespace) -> int:
    from mri_tumor.data.inputs import expand_inputs
    from mri_tumor.inference import ERROR, Predictor
    from mri_tumor.presentation import format_results

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    inputs, skipped = expand_inputs(args.paths, recursive=args.recursive)
    if skipped:
        print(f"note: {skipped_note(skipped)}", file=sys.stderr)
    if not inputs:
        print(f"mri-tumor predict: {nothing_found(args.paths, args.recursive)}",
              file=sys.stderr)
        return 1
    if not args.recursive and (unread := subfolders(args.paths)):
        print(f"note: {unread_note(unread)}", file=sys.stderr)
    predictor = Predictor.load(args.model, backend=args.backend)
    results = predictor.predict(inputs, batch_size=args.batch_size)
    mode = "json" if args.json else "csv" if args.csv else "table"
    sys.stdout.write(format_results(results, mode, predictor.card, given=args.paths))
    if mode == "table":
        print(f"\n{predictor.disclaimer}")
    else:
        print(predictor.disclaimer, file=sys.stderr)
    return 1 if any(r.status == ERROR for r in results) else 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the model to ONNX (optionally int8)",
        description="Write the model as one self-contained ONNX graph (opset 17; the network "
        "and its out-of-distribution guard) for ONNX Runtime and other stacks, and the model "
        "card beside it (model.onnx -> model.card.json). The graph's metadata_props carry "
        "the card's class names, display names, input size, preprocessing (intensity step, "
        "mean, std), temperature and guard threshold, keys mri_tumor.*, each value JSON. "
        "INPUT 'pixels': float32, shape (batch, 3, S, S), S the card's image_size (208 for "
        "both shipped models). Each image: decoded to 8-bit grey, resized to S x S "
        "(bilinear), then the card's intensity step ('equalize', the shipped models': each "
        "grey level becomes the mid-rank of its pixels, (below + equal / 2) / pixel count; "
        "'none': divided by 255), the grey channel repeated 3 times and (x - mean) / std with "
        "the card's mean and std (0.5 and 0.5 for the shipped models: values in -1..1). "
        "OUTPUTS: 'logits' (batch, classes) in the card's class_names order, calibrated "
        "probabilities = softmax(logits / temperature); 'features' (batch, F; 1280 for the "
        "shipped models), the pooled embedding; 'ood_score' (batch), above the card's "
        "ood_threshold an image is refused as not a brain MRI; for a model with a sequence "
        "head (types) also 'sequence_logits' (batch, sequences) in sequence_names order, "
        "with sequence_temperature. Research tool, not a diagnosis.")
    p.add_argument("out", type=Path, help="output file, e.g. model.onnx (the card goes beside "
                                          "it: model.card.json)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format")
    p.add_argument("--quantize", choices=("int8",),
                   help="static int8 quantisation (QDQ) of the network, calibrated on the "
                        "bundled samples; the guard's score stays in float")
    add_model(p)
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing file and a card beside it that export did "
                        "not write")


def run_export(args: argparse.Namespace) -> int:
    from mri_tumor.inference.export import exported_card_path, is_exported_card
    from mri_tumor.inference.model_folder import export_model

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    if args.out.suffix.lower() != ".onnx":
        raise UsageError(f"{args.out}: the output file name must end in .onnx")
    card = exported_card_path(args.out)
    if card.is_dir():
        raise UsageError(f"{card} is a folder, where the model card would go; choose "
                         "another output name")
    if (card.exists() or card.is_symlink()) and not (args.force or is_exported_card(card)):
        raise UsageError(f"{card} exists and is not a card written by mri-tumor export; "
                         "move it, choose another output name, or pass --force to overwrite "
                         "it")
    path = export_model(args.model, args.out, quantize=args.quantize)
    print(f"wrote {path} and its model card {card}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, calibration and a report on labelled folders",
                       description="Score one or more labelled folders (each a source) and "
                       "report metrics overall, per source, per MR sequence and per source x "
                       "sequence x class. Research tool, not a diagnosis.")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="one folder per source: a sub-folder per class (glioma, notumor ...) "
                        "or per tumour type and sequence ('Meningioma T1C+', '_NORMAL T2')")
    add_model(p)
    p.add_argument("--split", type=Path, metavar="CSV",
                   help="score only the images on one side of this split file (a run's "
                        "split.csv), found under the DATA_DIRs by their source names")
    p.add_argument("--subset", choices=("train", "val", "test"), default="val",
                   help="the side of --split to score")
    p.add_argument("--train-dir", dest="train_dirs", type=Path, nargs="+", action="extend",
                   metavar="DIR",
                   help="training folder(s), after the DATA_DIRs (--train-dir A B, or repeat "
                        "the option): report metrics on the images with no duplicate there, "
                        "and how well a brightness-only classifier fitted on them does (with "
                        "--split: on the split's training rows)")
    p.add_argument("--stress", action="store_true",
                   help="also score the images after histogram swaps (from another class, "
                        "and from the same class as a control), gamma 0.5 and 2.0 and a mirror")
    p.add_argument("--out", type=Path, help="write report.md and figures into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (horizontal flip)")
    p.add_argument("--batch-size", type=int, default=64, help="images scored per step")
    p.add_argument("--scans", action="store_true",
                   help="the DATA_DIRs hold whole scans: patient folders with every slice and "
                        "masks, or <class>/<scan> (a NIfTI file or a DICOM folder per scan); "
                        "report the answer per scan (sensitivity, specificity per class and "
                        "sequence, bootstrap intervals) and, with slice labels, tumour "
                        "presence per slice and refusals by position in the stack")
    add_backend(p)


def run_scan_evaluate(args: argparse.Namespace) -> int:
    from mri_tumor.data.splitting import read_split_csv
    from mri_tumor.evaluation.scans import (
        find_cases,
        format_scan_metrics,
        scan_metrics,
        score_cases,
        split_groups,
    )
    from mri_tumor.inference import Predictor

    predictor = Predictor.load(args.model, backend=args.backend)
    normal = predictor.card.normal_class or ""
    groups = split_groups(read_split_csv(args.split), args.subset) if args.split else None
    try:
        cases = find_cases(args.data_dirs, normal, groups)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    scans, slices = score_cases(predictor, cases, batch_size=args.batch_size)
    metrics = scan_metrics(scans, slices, normal)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scans.json").write_text(json.dumps(
            {"metrics": metrics, "scans": scans}, indent=1) + "\n")
        with (args.out / "slices.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(slices[0]) if slices else ["scan"])
            writer.writeheader()
            writer.writerows(slices)
    print(json.dumps(metrics) if args.json else format_scan_metrics(metrics))
    print(DISCLAIMER, file=sys.stderr if args.json else sys.stdout)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from mri_tumor.card import ModelCard
    from mri_tumor.data.folders import scan_folders
    from mri_tumor.evaluation import collect_images, evaluate, report, split_training_rows
    from mri_tumor.inference import Predictor
    from mri_tumor.inference.model_folder import resolve_model

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.split is not None and not args.split.is_file():
        raise UsageError(f"--split {args.split}: no such file")
    if args.scans:
        return run_scan_evaluate(args)
    # Folder and file problems are reported before the model is loaded and anything scored;
    # the card says how the folders are labelled.
    scheme = ModelCard.load(resolve_model(args.model)[1]).label_scheme
    image_set = collect_images(args.data_dirs, args.split, args.subset, scheme)
    train_dirs = args.train_dirs or []
    for train_dir in train_dirs:
        if not train_dir.is_dir():
            raise UsageError(f"--train-dir {train_dir}: no such folder")
    if train_dirs:
        scan_folders(train_dirs, scheme)
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out}: exists and is not a folder")
        report.check_output_dir(args.out)  # before the long part: refuse early, write nothing
    predictor = Predictor.load(args.model, backend=args.backend)
    # With a split, the training images are its training rows, not whole folders (they also
    # hold the images being evaluated).
    train_only = split_training_rows(args.split) if args.split and train_dirs else None
    evaluation = evaluate(predictor, image_set, train_dirs, args.batch_size, args.tta,
                          stress=args.stress, train_only=train_only)
    report_path = report.write_report(evaluation, args.out) if args.out is not None else None
    if args.json:
        print(json.dumps(evaluation.to_json()))
        for warning in (evaluation.shift_warning, evaluation.small_group_warning):
            if warning:
                print(warning, file=sys.stderr)
        if report_path is not None:
            print(f"Report: {report_path}", file=sys.stderr)
        print(DISCLAIMER, file=sys.stderr)
    else:
        print(report.format_summary(evaluation, report_path))
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two models on the same images: differences and "
                       "whether they exceed the images' noise",
                       description="Compare two `mri-tumor evaluate --out` reports of the same "
                       "images (one per model): accuracy and ECE of each, overall and per "
                       "source, the images only one model gets right, and a paired bootstrap "
                       "interval for each difference. Two reports of `evaluate --scans` "
                       "(scans.json) compare the scan answers: right per true class and "
                       "sequence; two of `evaluate-segmenter --out` (segmentation.json) the "
                       "Dice per patient. Research tool, not a diagnosis.")
    p.add_argument("report_a", type=Path, metavar="REPORT_A",
                   help="model A's report folder (or its predictions.csv or scans.json)")
    p.add_argument("report_b", type=Path, metavar="REPORT_B",
                   help="model B's report folder, on the same images")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="confidence level of the intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run_compare(args: argparse.Namespace) -> int:
    from mri_tumor.evaluation.comparison import compare, format_comparison, read_predictions
    from mri_tumor.evaluation.report import PREDICTIONS_FILE
    from mri_tumor.evaluation.scan_comparison import (
        compare_scan_answers,
        format_scan_comparison,
        has_scan_report,
        read_scan_answers,
    )
    from mri_tumor.evaluation.segmentation_comparison import (
        compare_segmentations,
        format_segmentation_comparison,
        has_segmentation_report,
        read_patient_scores,
    )

    if args.resamples < 100:
        raise UsageError("--resamples must be at least 100")
    if not 0 < args.confidence < 1:
        raise UsageError("--confidence must be between 0 and 1, e.g. 0.9")
    names = (str(args.report_a), str(args.report_b))
    if all(has_segmentation_report(r) for r in (args.report_a, args.report_b)):
        outlines = compare_segmentations(read_patient_scores(args.report_a),
                                         read_patient_scores(args.report_b), args.resamples,
                                         args.confidence, args.seed)
        _print_comparison(args, "segmentation", outlines.to_json(),
                          format_segmentation_comparison(outlines, *names, args.confidence))
        return 0
    # Reports of `evaluate --scans` hold scans.json and no predictions.csv: their scan answers
    # are compared instead of image predictions.
    if all(has_scan_report(r) and not (r / PREDICTIONS_FILE).is_file()
           for r in (args.report_a, args.report_b)):
        scan_groups = compare_scan_answers(read_scan_answers(args.report_a),
                                           read_scan_answers(args.report_b), args.resamples,
                                           args.confidence, args.seed)
        _print_comparison(args, "scan_groups", {g.name: g.to_json() for g in scan_groups},
                          format_scan_comparison(scan_groups, *names, args.confidence))
        return 0
    groups = compare(read_predictions(args.report_a), read_predictions(args.report_b),
                     args.resamples, args.confidence, args.seed)
    _print_comparison(args, "groups", {g.name: g.to_json() for g in groups},
                      format_comparison(groups, *names, args.confidence))
    return 0


def _print_comparison(args: argparse.Namespace, key: str, result: dict, table: str) -> None:
    """``compare``'s result: one JSON object (``--json``, the result under ``key``) or the
    table, and the disclaimer."""
    if args.json:
        print(json.dumps({"model_a": str(args.report_a), "model_b": str(args.report_b),
                          "confidence": args.confidence, "resamples": args.resamples,
                          key: result}))
        print(DISCLAIMER, file=sys.stderr)
    else:
        print(table)
        print(DISCLAIMER)
