"""Training stage: the seed's recipe on PyTorch Lightning, and the files a run leaves.

A run directory holds ``model.safetensors`` + ``card.json`` (a model folder that every front
end can load), ``split.csv``, ``history.json``, ``curves.png``, ``checkpoints/`` and
``tensorboard/``.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from mri_tumor import __version__
from mri_tumor.calibration import fit_low_confidence, fit_temperature, softmax
from mri_tumor.card import HISTORY_FILE, SPLIT_FILE, ModelCard, TrainingRecord, ValidationMetrics
from mri_tumor.curves import plot_history
from mri_tumor.data.augment import AugmentConfig, augment_batch
from mri_tumor.data.folders import naming, scan_folders, source_name
from mri_tumor.data.preprocess import PreprocessSpec, normalize, to_model_pixels
from mri_tumor.data.reading import read_image
from mri_tumor.data.splitting import (
    SplitRow,
    folder_fingerprint,
    read_split_csv,
    source_summary,
    split_folders,
    split_summary,
    write_split_csv,
)
from mri_tumor.metrics import accuracy, expected_calibration_error, macro_f1
from mri_tumor.models import ARCHITECTURES, create_model, half_precision_state, save_weights
from mri_tumor.ood import DEFAULT_REJECT_RATE, OODGuard, fit_guard, fit_refusal

# The sequence is easy to learn and would otherwise pull on the shared features as much as
# the tumour type does: its loss counts half.
SEQUENCE_LOSS_WEIGHT = 0.5


@dataclass
class TrainConfig:
    data_dirs: list[Path]  # one folder per source
    arch: str = "efficientnet_lite0"
    out: Path = Path("runs/efficientnet_lite0")
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4  # the seed's Adam learning rate
    weight_decay: float = 0.0
    seed: int = 0
    image_size: int | None = None  # None: the architecture's default
    devices: int = 1
    resume: Path | None = None
    init_weights: Path | None = None
    pretrained: bool | None = None
    from_model: Path | None = None  # a trained model folder to fine-tune (same architecture)
    split: Path | None = None  # reuse a split CSV instead of making one
    val_fraction: float = 0.15
    schedule: str = "plateau"  # "plateau" (seed) or "cosine"
    lr_patience: int = 2
    early_stop_patience: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    intensity: str = "equalize"  # the preprocessing's intensity step (data.preprocess)
    # Repeat the images of smaller sources in each epoch so that every source has at least
    # this share of the largest source's count (0: no repeats).
    source_balance: float = 0.5
    # Decay of an exponential moving average of the weights (0: none). With it, validation,
    # the chosen epoch and the exported weights are the average's (``AveragedWeights``).
    ema_decay: float = 0.0
    max_train_batches: int | float = 1.0  # for smoke tests: a few steps, not a full epoch
    max_minutes: float | None = None  # stop after this wall time (then export as usual)
    # Folders of images that are not brain MRI (head CT, say): the guard learns to refuse
    # them (``ood.fit_refusal``). Not used for the network's training.
    refuse_dirs: list[Path] = field(default_factory=list)
    half_precision_weights: bool = True
    # How the folders are labelled (data.folders.LABEL_SCHEMES); "types" also trains a second
    # head that names the MR sequence.
    label_scheme: str = "classes"


class TumorClassifier(L.LightningModule):
    """Wraps an architecture with the seed's loss, optimiser and schedule."""

    def __init__(self, config: TrainConfig, spec: PreprocessSpec, class_names: list[str],
                 val_sources: list[str] | None = None,
                 sequence_names: list[str] | None = None) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.class_names = class_names
        self.sequence_names = sequence_names or []
        # Source of each validation image, in loader order: accuracy per source each epoch.
        self.val_sources = np.asarray(val_sources or [])
        if config.from_model is not None:
            from mri_tumor.models import load_model

            self.model, card, _ = load_model(config.from_model)
            if card.architecture != config.arch:
                raise ValueError(f"{config.from_model} holds a {card.architecture}, "
                                 f"not a {config.arch}")
            self.model.train()
        else:
            self.model = create_model(config.arch, len(class_names),
                                      pretrained=config.pretrained,
                                      init_weights=config.init_weights,
                                      num_sequences=len(self.sequence_names))
        # Channels-last roughly doubles CPU convolution speed here and is neutral on GPU
        # (H200: 23.4 vs 25.2 ms per EfficientNet-Lite0 step at batch 32).
        self.model = self.model.to(memory_format=torch.channels_last)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits, and sequence logits when the model has that head (else None)."""
        maps = self.model.feature_maps(x.contiguous(memory_format=torch.channels_last))
        features = self.model.pool_features(maps)
        sequences = self.model.classify_sequence(features) if self.sequence_names else None
        return self.model.classify(features), sequences

    def _loss(self, logits: torch.Tensor, sequence_logits: torch.Tensor | None,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the class, plus SEQUENCE_LOSS_WEIGHT x that of the sequence;
        labels are (N,) classes or (N, 2) classes and sequences. Returns (loss, classes)."""
        if sequence_logits is None:
            return F.cross_entropy(logits, labels), labels
        classes, sequences = labels[:, 0], labels[:, 1]
        loss = (F.cross_entropy(logits, classes)
                + SEQUENCE_LOSS_WEIGHT * F.cross_entropy(sequence_logits, sequences))
        return loss, classes

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        pixels, labels = batch
        grey = pixels.unsqueeze(1).float() / 255.0
        if self.trainer.training:
            grey = augment_batch(grey, self.config.augment)
        return normalize(grey, self.spec), labels

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        logits, sequence_logits = self(inputs)
        loss, classes = self._loss(logits, sequence_logits, labels)
        acc = (logits.argmax(1) == classes).float().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train_acc", acc, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, labels = batch
        logits, sequence_logits = self(inputs)
        if sequence_logits is not None:  # one tensor: class logits, then sequence logits
            logits = torch.cat([logits, sequence_logits], dim=1)
        self._val_logits.append(logits.float())
        self._val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits)
        labels = torch.cat(self._val_labels)
        self._val_logits.clear()
        self._val_labels.clear()
        if self.trainer.world_size > 1:
            logits = self.all_gather(logits).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        sequence_logits = None
        if self.sequence_names:
            logits, sequence_logits = logits.split([len(self.class_names),
                                                    len(self.sequence_names)], dim=1)
        loss, classes = self._loss(logits, sequence_logits, labels)
        predicted = logits.argmax(1).cpu().numpy()
        truth = classes.cpu().numpy()
        # Every rank holds the gathered set, so "syncing" only averages identical values.
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_acc", accuracy(truth, predicted), prog_bar=True, sync_dist=True)
        self.log("val_macro_f1", macro_f1(truth, predicted, len(self.class_names)), sync_dist=True)
        if sequence_logits is not None:
            self.log("val_sequence_acc", accuracy(labels[:, 1].cpu().numpy(),
                                                  sequence_logits.argmax(1).cpu().numpy()),
                     sync_dist=True)
        # Under DDP the gathered order is rank-major, not the sources' order: skip it there.
        if (self.trainer.world_size == 1 and len(set(self.val_sources)) > 1
                and len(self.val_sources) == len(truth)):
            for source in sorted(set(self.val_sources)):
                mine = self.val_sources == source
                self.log(f"val_acc/{source}", accuracy(truth[mine], predicted[mine]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        if self.config.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, self.config.epochs))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=self.config.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


class RestoreBestWeights(Callback):
    """Keeps the weights of the epoch with the best monitored value and puts them back when
    training ends (Keras' ``EarlyStopping(restore_best_weights=True)``).

    In ``train`` this is the one place that decides which weights ship: the first epoch with
    the highest validation accuracy. Early stopping (on validation loss) only stops.
    The kept weights, epoch and value are part of the checkpoint, so a ``--resume``d run
    still compares against, and can go back to, epochs trained before the interruption.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.sign = 1.0 if mode == "min" else -1.0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self.best_value is None or self.sign * value < self.sign * self.best_value:
            self.best_value = value
            self.best_epoch = trainer.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value")
        self.best_epoch = state_dict.get("best_epoch")
        self.best_state = state_dict.get("best_state")


class AveragedWeights(EMAWeightAveraging):
    """An exponential moving average of the weights, updated after every training step
    (Lightning's ``EMAWeightAveraging``), that is also what ``RestoreBestWeights`` keeps.

    Lightning swaps the average in for validation and back when the validation *epoch* ends,
    before ``on_validation_end``, where ``RestoreBestWeights`` copies the weights it keeps.
    Here the swap back waits until ``on_validation_end``, so list this callback after
    ``RestoreBestWeights``: the epoch is chosen on, and keeps, the weights it was scored with.
    """

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # swapped back in on_validation_end instead

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)


class History(Callback):
    """Per-epoch metrics, for ``history.json`` and the training-curves plot. They are part of
    the checkpoint, so a ``--resume``d run's history also holds the epochs before the resume.

    A row is written when the training epoch ends: Lightning aggregates the epoch's training
    metrics only then, after that epoch's validation has run.
    """

    TRAIN_KEYS = ("train_loss_epoch", "train_acc")
    VAL_KEYS = ("val_loss", "val_acc", "val_macro_f1", "val_sequence_acc")

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._validation: dict[str, float] = {}
        self._validated_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validated_epoch = trainer.current_epoch
        self._validation = {k: float(v) for k, v in trainer.callback_metrics.items()
                            if k in self.VAL_KEYS or k.startswith("val_acc/")}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()
                    if k in self.TRAIN_KEYS})
        # An epoch cut short (--max-minutes) may end without validation: no stale values.
        if self._validated_epoch == epoch:
            row.update(self._validation)
        row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        # Keep one row per epoch even if Lightning repeats an epoch after a resume.
        self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(row) for row in self.epochs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [dict(row) for row in state_dict.get("epochs", [])]


def prepare_split(config: TrainConfig) -> list[SplitRow]:
    """Reuse ``config.split`` if given, else make a duplicate-aware split of the folders."""
    if config.split is not None:
        return read_split_under(config.split, config.data_dirs)
    scans = scan_folders(config.data_dirs, config.label_scheme)
    rows = split_folders(scans, val_fraction=config.val_fraction, seed=config.seed)
    for scan in scans:
        if scan.skipped:
            print(f"{scan.source}: skipped {len(scan.skipped)} file(s) or folder(s):")
            for name, reason in scan.skipped:
                print(f"  {name}: {reason}")
    return rows


def source_roots(data_dirs: list[Path] | Path) -> dict[str, Path]:
    """Source name -> folder; a single folder is also source "" (single-source splits)."""
    dirs = [data_dirs] if isinstance(data_dirs, Path) else list(data_dirs)
    roots = {source_name(d): Path(d) for d in dirs}
    if len(dirs) == 1:
        roots[""] = Path(dirs[0])
    return roots


def row_path(row: SplitRow, roots: dict[str, Path]) -> Path:
    """Where a split row's image is, given the source folders; KeyError names the source."""
    if row.source not in roots:
        raise KeyError(row.source)
    return roots[row.source] / row.path


def read_split_under(split: Path, data_dirs: list[Path] | Path) -> list[SplitRow]:
    """Read a split CSV and check that every file it lists is under its source folder."""
    if not split.is_file():
        raise FileNotFoundError(f"no split file at {split}")
    rows = read_split_csv(split)
    roots = source_roots(data_dirs)
    sources = sorted({r.source for r in rows} - roots.keys())
    if sources:
        given = ", ".join(dict.fromkeys(str(d) for d in roots.values()))
        raise FileNotFoundError(f"split {split} lists images of source(s) {', '.join(sources)}, "
                                f"but no data folder of that name was given ({given}); give "
                                "every folder the model was trained on")
    missing = [r.path for r in rows if not row_path(r, roots).is_file()]
    if missing:
        where = ", ".join(str(d) for d in dict.fromkeys(roots.values()))
        raise FileNotFoundError(f"{len(missing)} file(s) of split {split} are not under "
                                f"{where}, e.g. {missing[0]}")
    return rows


def load_refusal_pixels(folders: list[Path], image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Every image (and DICOM slice, whatever its modality) under the given folders, as
    uint8 (N, H, W) pixels, and their names; unreadable files are skipped."""
    from mri_tumor.data.reading import (
        DICOM_EXTENSIONS,
        IMAGE_EXTENSIONS,
        ImageReadError,
        read_frames,
    )

    pixels, names = [], []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
                continue
            try:
                frames = read_frames(path, any_modality=True)
            except (ImageReadError, OSError):
                continue
            for frame in frames:
                pixels.append(to_model_pixels(frame.image, image_size))
                names.append(str(path))
    if not pixels:
        raise ValueError(f"refusal examples {', '.join(map(str, folders))}: no readable "
                         "images there")
    return torch.from_numpy(np.stack(pixels)), names


def load_pixels(roots: dict[str, Path] | Path, rows: list[SplitRow], image_size: int,
                class_names: list[str] | None = None,
                sequence_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize the listed images once: uint8 (N, H, W) and int64 labels (indices
    into ``class_names``, by default the rows' labels sorted); with ``sequence_names`` the
    labels are (N, 2): class and sequence."""
    if isinstance(roots, Path):
        roots = {"": roots}
    pixels = np.zeros((len(rows), image_size, image_size), dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels[i] = to_model_pixels(read_image(row_path(row, roots)), image_size)
    class_names = class_names or class_names_of(rows)
    labels = torch.tensor([class_names.index(r.label) for r in rows])
    if sequence_names:
        sequences = torch.tensor([sequence_names.index(r.sequence) for r in rows])
        labels = torch.stack([labels, sequences], dim=1)
    return torch.from_numpy(pixels), labels


def class_names_of(rows: list[SplitRow]) -> list[str]:
    """The classes a new model learns from these rows: their labels, sorted."""
    return sorted({row.label for row in rows})


def sequence_names_of(rows: list[SplitRow]) -> list[str]:
    """The MR sequences a sequence head learns from these rows, sorted; ValueError when a
    row does not say its sequence."""
    unknown = [row.path for row in rows if not row.sequence]
    if unknown:
        raise ValueError(f"{len(unknown)} image(s) have no MR sequence in their folder name "
                         f"(e.g. {unknown[0]}); a sequence head needs '<Type> <Sequence>' "
                         "folders")
    return sorted({row.sequence for row in rows})


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, pixels: torch.Tensor, spec: PreprocessSpec,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of a model for uint8 pixel batches, without augmentation."""
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    for start in range(0, len(pixels), batch_size):
        batch = normalize(pixels[start:start + batch_size].to(device), spec)
        pooled = model.pool_features(model.feature_maps(
            batch.contiguous(memory_format=torch.channels_last)))
        logits.append(model.classify(pooled).float().cpu())
        features.append(pooled.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


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
    image_size = config.image_size or arch.image_size
    if config.from_model is not None and config.image_size is None:
        image_size = ModelCard.load(config.from_model).image_size
    intensity = config.intensity
    if config.from_model is not None:  # fine-tuning keeps the input the model was trained on
        intensity = ModelCard.load(config.from_model).intensity
    spec = PreprocessSpec(image_size, arch.mean, arch.std, 3, intensity)
    out = Path(config.out)

    rows = prepare_split(config)
    train_rows = [r for r in rows if r.split == "train"]
    val_rows = [r for r in rows if r.split == "val"]
    if not train_rows or not val_rows:
        raise ValueError("the split has no training or no validation images; "
                         "the folder needs more images per class")
    roots = source_roots(config.data_dirs)
    class_names = class_names_of(rows)
    if config.from_model is not None:  # fine-tuning keeps the model's outputs and their order
        class_names = ModelCard.load(config.from_model).class_names
        if unknown := sorted({row.label for row in rows} - set(class_names)):
            raise ValueError(f"{config.from_model} has no class {', '.join(unknown)} (its "
                             f"classes: {', '.join(class_names)})")
    sequence_names = sequence_names_of(rows) if config.label_scheme == "types" else []
    if config.from_model is not None:
        sequence_names = ModelCard.load(config.from_model).sequence_names
    train_pixels, train_labels = load_pixels(roots, train_rows, image_size, class_names,
                                             sequence_names)
    val_pixels, val_labels = load_pixels(roots, val_rows, image_size, class_names,
                                         sequence_names)
    refuse_pixels = None
    if config.refuse_dirs:  # read before training: a bad folder should not cost a run
        refuse_pixels, _ = load_refusal_pixels(config.refuse_dirs, image_size)
    repeats = source_repeats(train_rows, config.source_balance)
    epoch_indices = torch.tensor([i for i, row in enumerate(train_rows)
                                  for _ in range(repeats[row.source])])
    train_loader = DataLoader(TensorDataset(train_pixels[epoch_indices],
                                            train_labels[epoch_indices]),
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
        max_time=({"minutes": config.max_minutes} if config.max_minutes else None),
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
    model = module.model.cpu().to(memory_format=torch.contiguous_format).eval()
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
            sources=describe_sources(config.data_dirs, rows, repeats),
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
        ),
    )
    if config.refuse_dirs:
        card.training.refuse_dirs = [Path(d).name for d in config.refuse_dirs]
    finalize(model, card, train_pixels, train_labels, val_pixels, val_labels, out,
             half=config.half_precision_weights, val_sources=[r.source for r in val_rows],
             refuse_pixels=refuse_pixels)
    (out / HISTORY_FILE).write_text(json.dumps(
        {"sources": card.training.sources, "epochs": history.epochs}, indent=2) + "\n")
    plot_history(history.epochs, out / "curves.png")
    return out


def describe_sources(data_dirs: list[Path], rows: list[SplitRow],
                     repeats: dict[str, int]) -> list[dict]:
    """Per source folder: its name, image counts per split and class, repeats per epoch."""
    counts = source_summary(rows)
    described = []
    for folder in data_dirs:
        key = source_name(folder) if len(data_dirs) > 1 else ""
        described.append({"name": source_name(folder), "counts": counts.get(key, {}),
                          "repeats_per_epoch": repeats.get(key, 1)})
    return described


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


def finalize(model: torch.nn.Module, card: ModelCard, train_pixels: torch.Tensor,
             train_labels: torch.Tensor, val_pixels: torch.Tensor, val_labels: torch.Tensor,
             out: Path, half: bool = True, val_sources: list[str] | None = None,
             refuse_pixels: torch.Tensor | None = None, per_source: bool = False,
             reject_rate: float | None = None) -> ModelCard:
    """Fit what is fitted after training, measure, and save weights + card.

    The temperature and the out-of-distribution threshold are fitted on the validation split
    (with ``per_source``, each source in ``val_sources`` weighing the same, and the guard's
    cuts the highest of the sources'; each cut refuses ``reject_rate`` of them, 0.005 unless
    given), the guard's class statistics on the training split
    (without augmentation), its refusal direction on ``refuse_pixels`` (images that are not
    brain MRI) when given. Metrics are recorded overall and per source. Weights are stored in
    fp16 only if that leaves every validation prediction unchanged.
    """
    spec = PreprocessSpec.from_card(card)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    logits, val_features = predict_outputs(model, val_pixels, spec)
    _, train_features = predict_outputs(model, train_pixels, spec)
    labels, sequences = _split_labels(val_labels)
    predicted = logits.argmax(1)
    sources = np.asarray(val_sources or [""] * len(labels))
    groups = sources if per_source else None
    card.temperature = fit_temperature(logits, labels, groups=groups)
    sequence_logits = _sequence_logits(model, val_features)
    if sequence_logits is not None:
        card.sequence_temperature = fit_temperature(sequence_logits, sequences, groups=groups)
    rate = reject_rate or DEFAULT_REJECT_RATE
    guard = fit_guard(train_features, _split_labels(train_labels)[0], val_features,
                      len(card.class_names), reject_rate=rate, heldout_groups=groups)
    card.metrics.refusal_examples_refused = None  # from an earlier fit of this folder
    if refuse_pixels is None:
        card.training.refusal_examples = None
        card.training.refuse_dirs = None
    if refuse_pixels is not None and len(refuse_pixels):
        _, refuse_features = predict_outputs(model, refuse_pixels, spec)
        fit_refusal(guard, train_features, refuse_features, val_features, reject_rate=rate,
                    heldout_groups=groups)
        card.training.refusal_examples = len(refuse_pixels)
        card.metrics.refusal_examples_refused = float(
            (guard.score(refuse_features) > guard.threshold).mean())
    card.ood_threshold = guard.threshold
    card.training.per_source_fit = per_source or None
    card.training.reject_rate = reject_rate if rate != DEFAULT_REJECT_RATE else None
    rejected = guard.score(val_features) > guard.threshold
    card.metrics.validation = validation_metrics(logits, labels, card, rejected)
    if sequence_logits is not None:
        card.metrics.validation.sequence_accuracy = accuracy(sequences,
                                                             sequence_logits.argmax(1))
        card.metrics.validation.sequence_ece = expected_calibration_error(
            softmax(sequence_logits, card.sequence_temperature), sequences)
    calibrated = softmax(logits, card.temperature)
    unsure = fit_low_confidence(calibrated.max(axis=1), predicted == labels)
    card.low_confidence_threshold = unsure.threshold
    card.metrics.low_confidence = unsure
    if len(set(sources)) > 1:
        card.metrics.validation_by_source = {
            str(source): validation_metrics(logits[sources == source], labels[sources == source],
                                            card, rejected[sources == source])
            for source in sorted(set(sources))}
    extra = guard.to_tensors()
    if half:
        half_model = copy.deepcopy(model)
        half_model.load_state_dict(half_precision_state(model))  # copied back into fp32
        half_logits, half_features = predict_outputs(half_model, val_pixels, spec)
        half_guard = OODGuard(guard.class_means.astype(np.float16).astype(np.float32),
                              guard.whitening.astype(np.float16).astype(np.float32),
                              guard.threshold, guard.refusal_weight, guard.refusal_bias,
                              guard.refusal_cut)
        same_labels = bool((half_logits.argmax(1) == predicted).all())
        if sequence_logits is not None:
            half_sequences = _sequence_logits(half_model, half_features)
            same_labels &= bool((half_sequences.argmax(1) == sequence_logits.argmax(1)).all())
        same_rejections = bool(((half_guard.score(half_features) > guard.threshold)
                                == (guard.score(val_features) > guard.threshold)).all())
        half = same_labels and same_rejections
    if half:  # the refusal direction is small and stays fp32
        extra = {k: v.half() if k in ("ood_class_means", "ood_whitening") else v
                 for k, v in extra.items()}
    card.training.weights_dtype = "float16" if half else "float32"
    save_weights(model.cpu(), out, half=half, extra={f"extra.{k}": v for k, v in extra.items()})
    card.save(out)
    return card


def _split_labels(labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(classes, sequences) from ``load_pixels``' labels; sequences None without them."""
    values = labels.numpy()
    return (values[:, 0], values[:, 1]) if values.ndim == 2 else (values, None)


@torch.inference_mode()
def _sequence_logits(model: torch.nn.Module, features: np.ndarray) -> np.ndarray | None:
    """The sequence head on pooled features (None for a model without one)."""
    head = getattr(model, "classify_sequence", None)
    device = next(model.parameters()).device
    logits = head(torch.from_numpy(features).to(device)) if head else None
    return None if logits is None else logits.float().cpu().numpy()


def validation_metrics(logits: np.ndarray, labels: np.ndarray, card: ModelCard,
                       rejected: np.ndarray) -> ValidationMetrics:
    """Accuracy, macro-F1, ECE (raw and calibrated) and the guard's rejection share."""
    predicted = logits.argmax(1)
    return ValidationMetrics(
        n=len(labels),
        accuracy=accuracy(labels, predicted),
        macro_f1=macro_f1(labels, predicted, len(card.class_names)),
        ece_uncalibrated=expected_calibration_error(softmax(logits), labels),
        ece=expected_calibration_error(softmax(logits, card.temperature), labels),
        ood_rejected=float(np.mean(rejected)),
    )


def refit(model_dir: Path, data_dirs: list[Path] | Path, image_size: int | None = None,
          refuse_dirs: list[Path] | None = None, per_source: bool = False,
          reject_rate: float | None = None) -> ModelCard:
    """Re-fit temperature and out-of-distribution guard of a trained model folder on the
    split it was trained with (``split.csv`` beside it), e.g. after changing those methods;
    ``per_source``, ``reject_rate``: see ``finalize``.

    With ``image_size`` the model is served at that input size from now on (the card says so,
    and keeps the size it was trained at); its validation metrics are measured at that size.
    """
    from mri_tumor.models import load_model

    model, card, _ = load_model(model_dir)
    display, normal = naming(card.class_names)  # cards from before the fields: as shown then
    card.display_names = card.display_names or display
    card.normal_class = card.normal_class or normal
    if image_size is not None and image_size != card.image_size:
        card.training.image_size = card.training.image_size or card.image_size
        card.image_size = image_size
    rows = read_split_under(card.split_path(model_dir), data_dirs)
    roots = source_roots(data_dirs)
    names = (card.class_names, card.sequence_names)
    train_pixels, train_labels = load_pixels(roots, [r for r in rows if r.split == "train"],
                                             card.image_size, *names)
    val_pixels, val_labels = load_pixels(roots, [r for r in rows if r.split == "val"],
                                         card.image_size, *names)
    half = card.training.weights_dtype == "float16"
    refuse_pixels = None
    if refuse_dirs:
        refuse_pixels, _ = load_refusal_pixels(refuse_dirs, card.image_size)
        card.training.refuse_dirs = [Path(d).name for d in refuse_dirs]
    return finalize(model, card, train_pixels, train_labels, val_pixels, val_labels, model_dir,
                    half=half, val_sources=[r.source for r in rows if r.split == "val"],
                    refuse_pixels=refuse_pixels, per_source=per_source,
                    reject_rate=reject_rate)


__all__ = ["History", "RestoreBestWeights", "TrainConfig", "TumorClassifier", "refit", "train"]
