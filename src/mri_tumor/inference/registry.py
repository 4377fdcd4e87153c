"""The model registry: trained or adapted model folders kept under a name, for rollback.

    register(Path("runs/site-1"), "site-1")   # a copy in HOME/models/site-1
    Predictor.load("site-1")                  # --model site-1 in every command
    remove("site-1")                          # roll back: the name is gone, its copy too

HOME is ``$MRI_TUMOR_HOME``, else ``$XDG_DATA_HOME/mri-tumor``, else
``~/.local/share/mri-tumor``. A registered model is a copy of the model folder's files
(card, weights, split, history, curves; not its ``checkpoints/`` or ``tensorboard/``
folders), made in a hidden temporary folder and renamed into place, so a name always
holds a complete model. ``model_folder.resolve_model`` finds registered names after the shipped
ones and before folders. Research tool, not a diagnosis.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mri_tumor.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from mri_tumor.inference.model_folder import (
    MODEL_NAME_PATTERN,
    REGISTERED_DIR,
    SHIPPED_MODELS,
    load_served,
    registered_model_names,
    registry_home,
)

SHIPPED = "shipped"
REGISTERED = "registered"


def home() -> Path:
    """The registry's folder: ``$MRI_TUMOR_HOME`` or the per-user data folder (it need not
    exist yet; registering creates it)."""
    return registry_home()


def models_dir() -> Path:
    """HOME/models: one folder per registered model."""
    return home() / REGISTERED_DIR


def registered() -> dict[str, Path]:
    """Registered model name -> its folder, sorted by name."""
    return {name: models_dir() / name for name in registered_model_names()}


def check_name(name: str) -> str:
    """``name`` if a model can be registered under it; ValueError (one line) otherwise."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-', "
                         "starting with a letter or digit")
    if name.casefold() in {shipped.casefold() for shipped in SHIPPED_MODELS}:
        raise ValueError(f"model name {name!r} is a shipped model's "
                         f"({', '.join(SHIPPED_MODELS)}); choose another name")
    return name


def validate(model_dir: Path) -> ModelCard:
    """The card of ``model_dir`` after checking that it loads as a model (card and weights
    that fit it); ValueError (one line) otherwise."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir}: no such folder")
    if not (model_dir / CARD_FILE).is_file():
        raise ValueError(f"{model_dir}: not a model folder (no {CARD_FILE})")
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise ValueError(f"{model_dir}: not a model folder (no {WEIGHTS_FILE})")
    try:
        _, card, _ = load_served(model_dir)
    except FileNotFoundError as error:
        raise ValueError(f"{model_dir}: cannot load the model ({error})") from None
    return card


def register(model_dir: Path, name: str) -> Path:
    """Copy the model folder ``model_dir`` into the registry as ``name``; its new folder.

    ValueError (one line) for a name that is not a simple identifier, a shipped model's
    name, a name already registered, or a folder that does not load as a model. Nothing is
    left in the registry when it fails.
    """
    check_name(name)
    target = models_dir() / name
    if target.exists():
        raise ValueError(f"a model named {name!r} is already registered ({target}); remove "
                         "it first or choose another name")
    validate(model_dir)
    files = [item for item in sorted(Path(model_dir).iterdir()) if item.is_file()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()
    try:
        for item in files:
            shutil.copy2(item, staging / item.name)
        try:
            staging.rename(target)  # atomic: the name appears with every file in it
        except OSError:
            if target.exists():
                raise ValueError(f"a model named {name!r} is already registered "
                                 f"({target}); remove it first or choose another name"
                                 ) from None
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def remove(name: str) -> Path:
    """Remove the registered model ``name`` (its copy in the registry; the folder it was
    registered from is not touched); the folder it had. ValueError (one line) for a shipped
    model's name or a name that is not registered."""
    if name in SHIPPED_MODELS:
        raise ValueError(f"{name!r} is a shipped model; only registered models can be "
                         "removed")
    folders = registered()
    if name not in folders:
        known = ", ".join(folders) or "none"
        raise ValueError(f"no registered model named {name!r} (registered: {known})")
    target = folders[name]
    # Renamed away first, so the name never resolves to a half-deleted folder.
    doomed = target.parent / f".{name}.{uuid.uuid4().hex[:12]}.removed"
    target.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return target


@dataclass
class ModelSummary:
    """One shipped or registered model, as ``mri-tumor models`` lists it."""

    name: str
    kind: str  # "shipped" or "registered"
    folder: Path
    created: str = ""
    version: str = ""
    architecture: str = ""
    classes: int = 0
    accuracy: float | None = None  # on its validation split
    macro_f1: float | None = None
    ece: float | None = None
    sequence_accuracy: float | None = None  # models with a sequence head
    parent: str | None = None  # lineage: the model it was adapted from
    parent_weights_sha256: str | None = None
    error: str | None = None  # why the folder could not be read (a damaged registration)

    @classmethod
    def of(cls, name: str, kind: str, folder: Path) -> ModelSummary:
        """The summary of the model in ``folder``, from its card."""
        try:
            card = ModelCard.load(folder)
        except (OSError, ValueError) as error:
            return cls(name, kind, folder, error=str(error).splitlines()[0])
        summary = cls(name, kind, folder, created=card.created, version=card.version,
                      architecture=card.architecture, classes=len(card.class_names))
        if (validation := card.metrics.validation) is not None:
            summary.accuracy = validation.accuracy
            summary.macro_f1 = validation.macro_f1
            summary.ece = validation.ece
            summary.sequence_accuracy = validation.sequence_accuracy
        # Cards from an early adapt kept the lineage in the training section.
        lineage = card.lineage or card.training.other.get("lineage")
        parent = lineage.get("parent") if isinstance(lineage, dict) else None
        if isinstance(parent, dict):
            summary.parent = parent.get("name")
            summary.parent_weights_sha256 = parent.get("weights_sha256")
        return summary

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON object (the folder as a string)."""
        return {**asdict(self), "folder": str(self.folder)}


def list_models() -> list[ModelSummary]:
    """The shipped models, then the registered ones by name."""
    return ([ModelSummary.of(name, SHIPPED, folder) for name, folder in SHIPPED_MODELS.items()]
            + [ModelSummary.of(name, REGISTERED, folder)
               for name, folder in registered().items()])


__all__ = ["REGISTERED", "SHIPPED", "ModelSummary", "check_name", "home", "list_models",
           "models_dir", "register", "registered", "remove", "validate"]
