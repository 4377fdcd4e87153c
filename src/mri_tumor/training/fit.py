"""``train``: a split, a Lightning run, then ``finalize``.

A run directory holds ``model.safetensors`` + ``card.json`` (a model folder that every front end
can load), ``split.csv``, ``history.json``, ``curves.png``, ``checkpoints/`` and
``tensorboard/``."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from mri_tumor import __version__
from mri_tumor.card import HISTORY_FILE, SPLIT_FILE, ModelCard, TrainingRecord
from mri_tumor.data.folders import naming, scan_folders, source_name
from mri_tumor.data.preprocess import PreprocessSpec
from mri_tumor.data.rows import (
    class_names_of,
    load_pixels,
    load_refusal_pixels,
    read_split_under,
    sequence_names_of,
    source_roots,
)
from mri_tumor.data.splitting import (
    SplitRow,
    folder_fingerprint,
    source_summary,
    split_folders,
    split_summary,
    write_split_csv,
)
from mri_tumor.figures import plot_history
from mri_tumor.models import ARCHITECTURES, channels_last
from mri_tumor.training.callbacks import AveragedWeights, History, RestoreBestWeights
from mri_tumor.training.config import TrainConfig
from mri_tumor.training.finalize import finalize
from mri_tumor.training.module import TumorClassifier

logger = logging.getLogger(__name__)


def prepare_split(config: TrainConfig) -> list[SplitRow]:
    """Reuse ``config.split`` if given, else make a duplicate-aware split of the folders."""
    if config.split is not None:
        return read_split_under(config.split, config.data_dirs)
    scans = scan_folders(config.data_dirs, config.label_scheme)
    rows = split_folders(scans, val_fraction=config.val_fraction, seed=config.seed)
    for scan in scans:
        if scan.skipped:
            listing = "".join(f"\n  {name}: {reason}" for name, reason in scan.skipped)
            logger.warning("%s: skipped %d file(s) or folder(s):%s", scan.source,
                           len(scan.skipped), listing)
    return rows


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def train(config: TrainConfig) -> Path | None:
    """Train a model and write a complete run folder; returns it (None on non-zero ranks).

    The weights that ship are those of the epoch with the best validation accuracy (the card's
    ``best_epoch_val_acc``); early stopping on validation loss only ends the run. With
    ``config.resume`` the run continues from its ``checkpoints/last.ckpt``, history included.
    """
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")
    L.seed_everything(config.seed, workers=True, verbose=False)
    arch = ARCHITECTURES[config.arch]
    # Fine-tuning keeps the input the model was trained on, and its outputs and their order.
    base = ModelCard.load(config.from_model) if config.from_model is not None else None
    image_size = config.image_size or (base.image_size if base else arch.image_size)
    intensity = base.intensity if base else config.intensity
    spec = PreprocessSpec(image_size, arch.mean, arch.std, 3, intensity)
    out = Path(config.out)

    rows = prepare_split(config)
    train_rows = [r for r in rows if r.split == "train"]
    val_rows = [r for r in rows if r.split == "val"]
    if not train_rows or not val_rows:
        raise ValueError("the split has no training or no validation images; "
                         "the folder needs more images per class")
    extra = oversampling(train_rows, config.oversample,  # before the slow reading of pixels
                         source_name(config.data_dirs[0]) if len(config.data_dirs) == 1 else "")
    roots = source_roots(config.data_dirs)
    class_names = base.class_names if base else class_names_of(rows)
    if base is not None and (unknown := sorted({row.label for row in rows} - set(class_names))):
        raise ValueError(f"{config.from_model} has no class {', '.join(unknown)} (its "
                             f"classes: {', '.join(class_names)})")
    sequence_names = sequence_names_of(rows) if config.label_scheme == "types" else []
    if base is not None:
        # Fine-tuning keeps the base's sequences in their order; a new one (FLAIR) is appended.
        sequence_names = base.sequence_names + [s for s in sequence_names
                                                if s not in base.sequence_names]
        if sequence_names and not base.sequence_names:
            raise ValueError(f"{config.from_model} has no sequence head; --labels types "
                             "needs a types model to fine-tune")
    train_pixels, train_labels = load_pixels(roots, train_rows, image_size, class_names,
                                             sequence_names)
    val_pixels, val_labels = load_pixels(roots, val_rows, image_size, class_names,
                                         sequence_names)
    refuse_pixels = None
    if config.refuse_dirs:  # read before training: a bad folder should not cost a run
        refuse_pixels, _ = load_refusal_pixels(config.refuse_dirs, image_size)
    repeats = source_repeats(train_rows, config.source_balance)
    epoch_indices = torch.tensor([i for i, row in enumerate(train_rows)
                                  for _ in range(repeats[row.source] * extra[i])])
    # Images of the sources the base model was trained on: the distillation's (all False
    # without --distill).
    known_sources = ({source["name"] for source in base.training.sources}
                     if base is not None and config.distill > 0 else set())
    # A run on one folder records its rows' source as "", the card names the folder.
    names = [row.source or source_name(config.data_dirs[0]) for row in train_rows]
    if config.distill > 0 and not known_sources & set(names):
        raise ValueError(f"distillation: none of the training sources is one that "
                         f"{config.from_model} was trained on "
                         f"({', '.join(sorted(known_sources)) or 'none recorded'})")
    known = torch.tensor([name in known_sources for name in names])
    train_loader = DataLoader(TensorDataset(train_pixels[epoch_indices],
                                            train_labels[epoch_indices],
                                            known[epoch_indices]),
                              batch_size=config.batch_size, shuffle=True, drop_last=False)
    val_loader = DataLoader(TensorDataset(val_pixels, val_labels), batch_size=64)

    module = TumorClassifier(config, spec, class_names, [r.source for r in val_rows],
                             sequence_names)
    history = History()
    # The one rule for the weights that ship: the epoch with the best validation accuracy,
    # as the seed served it. Early stopping watches the loss but only stops; the checkpoint
    # (last.ckpt, every epoch) is where --resume continues.
    restore = RestoreBestWeights("val_acc", "max")
    callbacks = [
        ModelCheckpoint(dirpath=out / "checkpoints", save_top_k=0, save_last=True),
        EarlyStopping(monitor="val_loss", mode="min", patience=config.early_stop_patience),
        restore,
        LearningRateMonitor(logging_interval="epoch"),
        TQDMProgressBar(),
        history,
    ]
    if config.ema_decay > 0:  # after RestoreBestWeights (see AveragedWeights)
        callbacks.append(AveragedWeights(decay=config.ema_decay))
    use_cuda = torch.cuda.is_available()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="gpu" if use_cuda else "cpu",
        devices=config.devices,
        strategy="ddp" if config.devices > 1 else "auto",
        precision="16-mixed" if use_cuda else "32-true",
        benchmark=use_cuda,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        limit_train_batches=config.max_train_batches,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        num_sanity_val_steps=0,
        deterministic=False,
        enable_model_summary=False,
    )
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_split_csv(rows, out / SPLIT_FILE)
    started = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=config.resume)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return None

    # RestoreBestWeights has put the best-val-accuracy epoch's weights back (the last epoch's
    # when no epoch was validated, e.g. --max-minutes cut the first one short).
    model = channels_last(module.model.cpu(), on=False).eval()
    card = ModelCard(
        architecture=config.arch,
        class_names=class_names,
        display_names=naming(class_names)[0],
        normal_class=naming(class_names)[1],
        label_scheme=config.label_scheme,
        sequence_names=sequence_names,
        image_size=image_size,
        mean=list(spec.mean),
        std=list(spec.std),
        input_channels=3,
        intensity=spec.intensity,
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        training=TrainingRecord(
            data_fingerprint=folder_fingerprint(roots, [(r.source, r.path) for r in rows]),
            split_file=SPLIT_FILE,
            split_counts=split_summary(rows),
            sources=describe_sources(config.data_dirs, rows, repeats, config.oversample),
            epochs_run=len(history.epochs),
            best_epoch_val_acc=restore.best_epoch,  # the epoch whose weights ship
            best_epoch_val_loss=_best_epoch(history.epochs, "val_loss", min),
            seconds=round(seconds, 1),
            hardware=hardware_description(),
            devices=config.devices,
            batch_size=config.batch_size,
            lr=config.lr,
            schedule=config.schedule,
            seed=config.seed,
            augment=config.augment.to_dict(),
            ema_decay=config.ema_decay or None,
            pretrained=(ARCHITECTURES[config.arch].pretrained_default
                           if config.pretrained is None else config.pretrained),
            init_weights=str(config.init_weights) if config.init_weights else None,
            from_model=str(config.from_model) if config.from_model else None,
            distill=config.distill or None,
            distill_temperature=config.distill_temperature if config.distill else None,
        ),
    )
    if config.refuse_dirs:
        card.training.refuse_dirs = [Path(d).name for d in config.refuse_dirs]
    if base is not None and base.scan_rule:
        card.scan_rule = carried_scan_rule(base.scan_rule, config.from_model)
    finalize(model, card, train_pixels, train_labels, val_pixels, val_labels, out,
             half=config.half_precision_weights, val_sources=[r.source for r in val_rows],
             refuse_pixels=refuse_pixels, density=config.guard_density)
    (out / HISTORY_FILE).write_text(json.dumps(
        {"sources": card.training.sources, "epochs": history.epochs}, indent=2) + "\n")
    plot_history(history.epochs, out / "curves.png")
    return out


def carried_scan_rule(rule: dict[str, Any], base: Path | str | None) -> dict[str, Any]:
    """A fine-tuned model keeps its base's scan rule (better than the unfitted default, less
    the cautions measured on the base's answers), saying so in ``fitted_on``: it was fitted
    on the base model's slice probabilities, and ``scripts/fit_scan_rule.py`` refits it for
    the new weights."""
    logger.warning("the scan rule is carried over from %s; refit it for the new weights with "
                   "scripts/fit_scan_rule.py", base)
    carried = dict(rule)
    carried.pop("cautions", None)  # measured on the base model's answers, not the new ones
    carried["fitted_on"] = (f"carried over from the base model {Path(str(base)).name} "
                            f"(fitted on: {rule.get('fitted_on', 'unknown')}); not refitted")
    return carried


def describe_sources(data_dirs: list[Path], rows: list[SplitRow], repeats: dict[str, int],
                     oversample: dict[str, int] | None = None) -> list[dict]:
    """Per source folder: its name, image counts per split and class, repeats per epoch
    (and, where ``oversample`` names it, the further repeats of it or of its sequences)."""
    counts = source_summary(rows)
    described = []
    for folder in data_dirs:
        key = source_name(folder) if len(data_dirs) > 1 else ""
        entry: dict[str, Any] = {"name": source_name(folder), "counts": counts.get(key, {}),
                                 "repeats_per_epoch": repeats.get(key, 1)}
        mine = {name.partition(":")[2] or "all": times
                for name, times in (oversample or {}).items()
                if name.partition(":")[0] == source_name(folder)}
        if mine:
            entry["oversampled"] = mine
        described.append(entry)
    return described


def oversampling(rows: list[SplitRow], oversample: dict[str, int],
                 unnamed: str = "") -> list[int]:
    """The further repeats of each row (``TrainConfig.oversample``): the product of the
    factors of its source and of its source and sequence. ``unnamed`` is the source name of
    rows that record none (a one-folder run: the folder's name). A key that names no
    training image is an error, so that a typing slip does not pass as a recipe."""
    factors = [1] * len(rows)
    sources = [row.source or unnamed for row in rows]
    for key, times in oversample.items():
        source, _, sequence = key.partition(":")
        if times < 1:
            raise ValueError(f"oversample {key}={times}: the repeats must be 1 or more")
        hits = [i for i, row in enumerate(rows) if sources[i] == source
                and (not sequence or row.sequence == sequence)]
        if not hits:
            known = sorted({f"{name}:{row.sequence}" if row.sequence else name
                            for name, row in zip(sources, rows, strict=True)})
            raise ValueError(f"oversample {key}: no training image of that source"
                             f"{' and sequence' if sequence else ''} (the training side has: "
                             f"{', '.join(known)})")
        for i in hits:
            factors[i] *= times
    return factors


def source_repeats(rows: list[SplitRow], balance: float) -> dict[str, int]:
    """How many times each source's training images go into an epoch: smaller sources are
    repeated until they reach ``balance`` times the largest source's count."""
    counts = Counter(row.source for row in rows)
    largest = max(counts.values())
    return {source: max(1, math.ceil(balance * largest / count)) if balance > 0 else 1
            for source, count in counts.items()}


def _best_epoch(epochs: list[dict[str, float]], key: str, pick) -> int | None:
    scored = [row for row in epochs if key in row]
    return int(pick(scored, key=lambda row: row[key])["epoch"]) if scored else None
