"""One recipe: ``TrainConfig()`` and ``AugmentConfig()`` hold the training defaults, the
``mri-tumor train`` flags read them, and ``adapt`` fine-tunes with the same augmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mri_tumor.adaptation import AdaptConfig, fine_tuning_config
from mri_tumor.card import ModelCard
from mri_tumor.cli import build_parser
from mri_tumor.cli.modelling import train_config
from mri_tumor.inference import SHIPPED_MODELS
from mri_tumor.training.config import AugmentConfig, TrainConfig


def _cli_config(tmp_path: Path, *flags: str) -> TrainConfig:
    args = build_parser().parse_args(["train", str(tmp_path), *flags])
    return train_config(args, tmp_path / "run", "equalize")


def test_the_command_line_trains_the_recipe_of_the_config_objects(tmp_path: Path) -> None:
    default, given = TrainConfig(data_dirs=[tmp_path]), _cli_config(tmp_path)
    assert given.augment == default.augment == AugmentConfig()
    # Every setting the flags can leave alone is the config object's default.
    for name in ("arch", "epochs", "batch_size", "lr", "weight_decay", "seed", "devices",
                 "val_fraction", "schedule", "early_stop_patience", "source_balance",
                 "ema_decay", "label_scheme", "lr_patience", "intensity"):
        assert getattr(given, name) == getattr(default, name), name


def test_adapt_fine_tunes_with_the_recipe_augmentation(tmp_path: Path) -> None:
    base = SHIPPED_MODELS["default"]
    config = fine_tuning_config(AdaptConfig(site_dir=tmp_path, out=tmp_path / "out"),
                                ModelCard.load(base), base, tmp_path / "split.csv",
                                tmp_path / "candidate")
    assert config.augment == TrainConfig(data_dirs=[]).augment == _cli_config(tmp_path).augment
    assert config.from_model == base and config.schedule == "cosine"


def test_the_recipe_augments_intensity_and_no_augment_turns_every_part_off(
        tmp_path: Path) -> None:
    recipe = AugmentConfig()
    assert recipe.gamma > 0 and recipe.bias_field > 0 and recipe.noise > 0
    off = _cli_config(tmp_path, "--no-augment").augment
    assert off == AugmentConfig.none()
    numbers = {k: v for k, v in dataclasses.asdict(off).items() if k != "probability"}
    assert not any(numbers.values()), numbers


@pytest.mark.parametrize("flag, field, value", [("--gamma", "gamma", 0.2),
                                                ("--noise", "noise", 0.01),
                                                ("--augment-probability", "probability", 0.5)])
def test_a_flag_changes_only_its_own_setting(tmp_path: Path, flag: str, field: str,
                                             value: float) -> None:
    changed = _cli_config(tmp_path, flag, str(value)).augment
    assert changed == dataclasses.replace(AugmentConfig(), **{field: value})
