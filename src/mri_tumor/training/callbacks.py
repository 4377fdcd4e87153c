"""Small Lightning callbacks of a run: keep the best weights, average weights, write the history."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
)


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

    TRAIN_KEYS = ("train_loss_epoch", "train_acc", "train_distill")
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
