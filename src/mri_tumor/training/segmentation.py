"""Training the segmentation model: a U-Net (``models.unet``) on the FLAIR slices of the
whole-scan layout and their manual masks, split by patient (``data.segmentation``).

The run is a fixed schedule (cosine, ``SegmentConfig.epochs``) and its last weights ship:
no epoch is picked on the held-out patients, who are scored once, after training
(``evaluation.segmentation``), by the CLI.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from mri_tumor.card import HISTORY_FILE, SPLIT_FILE, SegmentationCard
from mri_tumor.data.augment import augment_with_masks
from mri_tumor.data.folders import PATIENT_TUMOUR_CLASS
from mri_tumor.data.preprocess import PreprocessSpec, normalize
from mri_tumor.data.segmentation import (
    load_pairs,
    masked_slices,
    median_stack_slices,
    split_patients,
    with_neighbours,
)
from mri_tumor.models.factory import ARCHITECTURES, channels_last, save_weights
from mri_tumor.models.unet import efficient_unet
from mri_tumor.training.config import SegmentConfig
from mri_tumor.training.fit import hardware_description

log = logging.getLogger(__name__)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch (slices without tumour count through the
    batch's total, so they are not an undefined 0/0)."""
    probabilities = torch.sigmoid(logits)
    overlap = (probabilities * masks).sum()
    return 1 - (2 * overlap + eps) / (probabilities.sum() + masks.sum() + eps)


def shuffle_neighbours(grey: torch.Tensor, dropout: float) -> torch.Tensor:
    """A 2.5-D batch (B, 3, H, W: the slice, its neighbours before and after) with the two
    neighbours swapped for half the slices, and both replaced by the slice itself for a
    ``dropout`` share of them."""
    n = grey.shape[0]
    swap = torch.rand(n, device=grey.device) < 0.5
    grey = torch.where(swap.view(n, 1, 1, 1), grey[:, [0, 2, 1]], grey)
    alone = (torch.rand(n, device=grey.device) < dropout).view(n, 1, 1, 1)
    return torch.where(alone, grey[:, [0, 0, 0]], grey)


class TumorSegmenter(L.LightningModule):
    """The U-Net with its loss (soft Dice + binary cross-entropy) and optimiser."""

    def __init__(self, config: SegmentConfig, spec: PreprocessSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.model = channels_last(efficient_unet(pretrained=config.pretrained))
        self.epoch_losses: list[float] = []
        self.history: list[dict[str, float]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs.contiguous(memory_format=torch.channels_last))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        pixels, masks = batch
        # (B, H, W): one sequence; (B, C, H, W): one channel per co-registered sequence.
        grey = (pixels.unsqueeze(1) if pixels.dim() == 3 else pixels).float() / 255.0
        masks = masks.unsqueeze(1).float()
        if self.trainer.training and self.config.neighbours:
            grey = shuffle_neighbours(grey, self.config.neighbour_dropout)
        if self.trainer.training:
            grey, moved = augment_with_masks(grey, masks, self.config.augment)
            masks = moved if moved is not None else masks
        return normalize(grey, self.spec), masks

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, masks = batch
        logits = self(inputs)
        loss = soft_dice_loss(logits, masks) + F.binary_cross_entropy_with_logits(logits, masks)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.epoch_losses.append(float(loss.detach()))
        return loss

    def on_train_epoch_end(self) -> None:
        mean = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        self.history.append({"epoch": self.current_epoch, "train_loss": mean})
        log.info("epoch %d: train loss %.4f", self.current_epoch, mean)
        self.epoch_losses.clear()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, self.config.epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}


def train_segmenter(config: SegmentConfig) -> Path:
    """Train the segmentation model and write its folder (weights, card, split, history)."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    if config.image_size % 32:
        raise ValueError(f"image size {config.image_size} is not a multiple of 32")
    L.seed_everything(config.seed, workers=True, verbose=False)
    arch = ARCHITECTURES["efficientnet_lite0"]
    spec = PreprocessSpec(config.image_size, arch.mean, arch.std, 3, config.intensity)
    if config.neighbours and config.companions:
        raise ValueError("a 2.5-D model (neighbours) reads one sequence: give no companions")
    rows = masked_slices(Path(config.data_dir), config.sequence, config.companions)
    sides = split_patients([r.patient for r in rows], config.held_out, config.seed)
    train_rows = [r for r in rows if sides[r.patient] == "train"]
    if not train_rows:
        raise ValueError(f"{config.data_dir}: no training patients left after holding out "
                         f"{config.held_out:.0%}")
    stack_slices = 0
    if config.neighbours:
        stack_slices = median_stack_slices(train_rows)
        train_rows = with_neighbours(train_rows, stack_slices)
    pixels, masks = load_pairs(train_rows, config.image_size)
    tumour = masks.reshape(len(masks), -1).any(1)
    n_tumour, n_clear = int(tumour.sum()), int((~tumour).sum())
    # Each epoch: every tumour slice once, and clear_per_tumour as many clear slices.
    clear_weight = (config.clear_per_tumour * n_tumour / n_clear) if n_clear else 0.0
    weights = np.where(tumour, 1.0, min(1.0, clear_weight)).tolist()
    per_epoch = max(1, n_tumour + min(n_clear, round(config.clear_per_tumour * n_tumour)))
    sampler = WeightedRandomSampler(weights, per_epoch, replacement=False)
    loader = DataLoader(TensorDataset(torch.from_numpy(pixels), torch.from_numpy(masks)),
                        batch_size=config.batch_size, sampler=sampler, drop_last=True)
    log.info("segmentation: %d training slices of %d patients (%d with tumour), %d per epoch",
             len(train_rows), len({r.patient for r in train_rows}), n_tumour, per_epoch)

    out = Path(config.out)
    module = TumorSegmenter(config, spec)
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
        limit_train_batches=config.max_train_batches, limit_val_batches=0,
        max_time=timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        deterministic=False)
    started = time.time()
    trainer.fit(module, loader)
    seconds = time.time() - started

    model = channels_last(module.model.cpu(), on=False).eval()
    save_weights(model, out, half=True)  # fp16 as shipped: the held-out Dice is the same
    with (out / SPLIT_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "split"])
        writer.writerows(sorted(sides.items()))
    (out / HISTORY_FILE).write_text(json.dumps(module.history, indent=2) + "\n")
    card = SegmentationCard(
        image_size=config.image_size, mean=list(spec.mean), std=list(spec.std),
        sequence=config.sequence, companions=list(config.companions),
        neighbours=config.neighbours, stack_slices=stack_slices,
        classes_seen=[PATIENT_TUMOUR_CLASS],
        intensity=config.intensity, threshold=config.threshold,
        min_component_share=config.min_component_share,
        version=datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        training={
            "data": Path(config.data_dir).name, "split_file": SPLIT_FILE,
            "patients": {side: sum(1 for s in sides.values() if s == side)
                         for side in ("train", "test")},
            "slices": len(train_rows), "tumour_slices": n_tumour, "slices_per_epoch": per_epoch,
            "epochs_run": len(module.history), "epochs": config.epochs,
            "batch_size": config.batch_size, "lr": config.lr, "schedule": "cosine",
            "weight_decay": config.weight_decay, "seed": config.seed,
            "augment": config.augment.to_dict(), "pretrained": config.pretrained,
            **({"neighbour_dropout": config.neighbour_dropout} if config.neighbours else {}),
            "seconds": round(seconds, 1), "hardware": hardware_description(),
        })
    card.save(out)
    log.info("segmentation model written to %s (%.0f s)", out, seconds)
    return out
