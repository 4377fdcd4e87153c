"""Training stage: the recipe (``config``), the LightningModule (``module``), its callbacks, the
run (``fit.train``) and what is fitted after it (``finalize``, and ``refit`` for the
``calibrate`` command).

    from mri_tumor.training import TrainConfig, train
    model_dir = train(TrainConfig(data_dirs=[Path("data/Training")], out=Path("runs/a")))

The names below are loaded on first use, so that reading the recipe (``training.config``)
does not import torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mri_tumor.lazy import lazy_exports

if TYPE_CHECKING:
    from mri_tumor.training.callbacks import AveragedWeights, History, RestoreBestWeights
    from mri_tumor.training.config import AugmentConfig, TrainConfig
    from mri_tumor.training.finalize import finalize, refit
    from mri_tumor.training.fit import train
    from mri_tumor.training.module import TumorClassifier
    from mri_tumor.training.outputs import predict_outputs

_HOMES = {"AveragedWeights": "callbacks", "History": "callbacks", "RestoreBestWeights": "callbacks",
          "AugmentConfig": "config", "TrainConfig": "config", "finalize": "finalize",
          "predict_outputs": "outputs", "refit": "finalize", "train": "fit",
          "TumorClassifier": "module"}
__getattr__ = lazy_exports(__name__, _HOMES)
__all__ = ["AugmentConfig", "AveragedWeights", "History", "RestoreBestWeights", "TrainConfig",
           "TumorClassifier", "finalize", "predict_outputs", "refit", "train"]
