"""The LightningModule: one network, the tumour loss (and the sequence loss of a model that has a
sequence head, and the distillation to the base model of a fine-tune), the optimiser and its
schedule."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from mri_tumor.data.augment import augment_batch
from mri_tumor.data.preprocess import PreprocessSpec, normalize
from mri_tumor.metrics import accuracy, macro_f1
from mri_tumor.models import channels_last, create_model
from mri_tumor.models.network import network_outputs
from mri_tumor.training.config import TrainConfig

# The sequence is easy to learn and would otherwise pull on the shared features as much as
# the tumour type does: its loss counts half.
SEQUENCE_LOSS_WEIGHT = 0.5


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
            if len(self.sequence_names) > self.model.num_sequences:
                self.model.add_sequences(len(self.sequence_names) - self.model.num_sequences)
            self.model.train()
            if config.distill > 0:
                # A frozen copy of the base model: the targets of the distillation term.
                self.teacher, _, _ = load_model(config.from_model)
                self.teacher = channels_last(self.teacher.eval().requires_grad_(False))
        else:
            self.model = create_model(config.arch, len(class_names),
                                      pretrained=config.pretrained,
                                      init_weights=config.init_weights,
                                      num_sequences=len(self.sequence_names))
        # Channels-last roughly doubles CPU convolution speed here and is neutral on GPU
        # (H200: 23.4 vs 25.2 ms per EfficientNet-Lite0 step at batch 32).
        if config.distill > 0 and config.from_model is None:
            raise ValueError("distillation needs the base model (from_model)")
        self.model = channels_last(self.model)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits, and sequence logits when the model has that head (else None)."""
        outputs = network_outputs(self.model, x.contiguous(memory_format=torch.channels_last))
        return outputs.logits, outputs.sequence_logits if self.sequence_names else None

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

    def train(self, mode: bool = True):
        """Train mode for the network; the distillation's base model always stays in eval
        mode (its batch-norm statistics are not updated)."""
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()
        return self

    def distillation_loss(self, logits: torch.Tensor, inputs: torch.Tensor,
                          known: torch.Tensor) -> torch.Tensor:
        """KL divergence of the network's softened predictions from the base model's on the
        images of the base model's sources (``known``), times T squared (Hinton et al. 2015),
        averaged over those images; zero when the batch has none."""
        if not bool(known.any()):
            return logits.new_zeros(())
        temperature = self.config.distill_temperature
        with torch.no_grad():
            targets = network_outputs(
                self.teacher, inputs[known].contiguous(memory_format=torch.channels_last)).logits
        return F.kl_div(F.log_softmax(logits[known].float() / temperature, dim=1),
                        F.log_softmax(targets.float() / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        pixels, labels, *known = batch  # training batches also say which images are "known"
        grey = pixels.unsqueeze(1).float() / 255.0
        if self.trainer.training:
            grey = augment_batch(grey, self.config.augment)
        return (normalize(grey, self.spec), labels, *known)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, labels, *known = batch
        logits, sequence_logits = self(inputs)
        loss, classes = self._loss(logits, sequence_logits, labels)
        if self.config.distill > 0 and known:
            distilled = self.distillation_loss(logits, inputs, known[0])
            self.log("train_distill", distilled, on_step=False, on_epoch=True, sync_dist=True)
            loss = loss + self.config.distill * distilled
        acc = (logits.argmax(1) == classes).float().mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train_acc", acc, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, labels, *_ = batch
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
            logits = _gathered(self.all_gather(logits))
            labels = _gathered(self.all_gather(labels))
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


def _gathered(value: Any) -> torch.Tensor:
    """A tensor gathered from every process, (world, N, ...) -> (world x N, ...)."""
    assert isinstance(value, torch.Tensor)
    return value.flatten(0, 1)
