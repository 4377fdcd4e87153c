"""The model folder: which folder a model name means (shipped, registered, a path), the
network it serves with its guard (``load_served``), and the ONNX export cached beside it."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mri_tumor.card import ONNX_FILE, ONNX_GRAPH_VERSION, ModelCard
from mri_tumor.models.ood import OODGuard

if TYPE_CHECKING:
    from mri_tumor.models.network import Network

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
# The models that ship in the package, by the name ``--model`` and ``?model=`` take.
SHIPPED_MODELS = {"default": WEIGHTS_DIR / "efficientnet_lite0", "types": WEIGHTS_DIR / "types"}
SHIPPED_MODEL_DIR = SHIPPED_MODELS["default"]

# Registered models (``mri-tumor models register``, module ``registry``) live in
# HOME/models/NAME, HOME being $MRI_TUMOR_HOME or the per-user data folder.
HOME_ENV = "MRI_TUMOR_HOME"
REGISTERED_DIR = "models"
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def registry_home() -> Path:
    """Where registered models are kept: ``$MRI_TUMOR_HOME``, else ``$XDG_DATA_HOME/mri-tumor``
    (an absolute one), else ``~/.local/share/mri-tumor``."""
    if configured := os.environ.get(HOME_ENV):
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "mri-tumor"


def registered_model_dir(name: str) -> Path | None:
    """The folder of the registered model ``name``, or None if there is none by that name."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        return None
    folder = registry_home() / REGISTERED_DIR / name
    return folder if folder.is_dir() else None


def registered_model_names() -> list[str]:
    """The names of the registered models, sorted."""
    folder = registry_home() / REGISTERED_DIR
    try:
        entries = list(folder.iterdir())
    except OSError:  # no registry yet (or unreadable): nothing registered
        return []
    return sorted(entry.name for entry in entries
                  if MODEL_NAME_PATTERN.fullmatch(entry.name) and entry.is_dir())


def resolve_model(name_or_dir: str | Path | None) -> tuple[str, Path]:
    """(name, folder) of a model given by a shipped model's name, a registered model's name
    or a model folder, in that order (None: the default model). A folder is named by its
    folder name. ValueError, in one line, for anything else."""
    if name_or_dir is None or str(name_or_dir) == "":
        return "default", SHIPPED_MODEL_DIR
    if str(name_or_dir) in SHIPPED_MODELS:
        return str(name_or_dir), SHIPPED_MODELS[str(name_or_dir)]
    if registered := registered_model_dir(str(name_or_dir)):
        return str(name_or_dir), registered
    directory = Path(name_or_dir)
    if directory.is_dir():
        return directory.resolve().name, directory
    registered_names = ", ".join(registered_model_names()) or "none"
    raise ValueError(f"unknown model {str(name_or_dir)!r}: not a shipped model "
                     f"({', '.join(SHIPPED_MODELS)}), not a registered model "
                     f"({registered_names}) and not a model folder")


def load_served(model_dir: Path) -> tuple[Network, ModelCard, OODGuard | None]:
    """The network a model folder serves (eval mode, fp32), its card, and its out-of-
    distribution guard (None for a model without one). Every front end, export, Grad-CAM and
    the registry load a model through here; ValueError (one line) for weights that do not fit
    the card."""
    from mri_tumor.models import load_model

    model, card, extras = load_model(model_dir)
    density_block = (card.ood_density or {}).get("block")
    return model, card, OODGuard.from_tensors(extras, card.ood_threshold, density_block)


def _cache_dir() -> Path:
    base = os.environ.get("MRI_TUMOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mri-tumor")
    return Path(base)


def ensure_onnx_file(model_dir: Path, card: ModelCard) -> Path:
    """``model.onnx`` in the model folder if present, else a cached export made on first use
    (keyed by the input size, the weights' hash and the graph version; ``$MRI_TUMOR_CACHE``
    or ``~/.cache/mri-tumor``)."""
    path = model_dir / ONNX_FILE
    if path.is_file():
        return path
    digest = hashlib.sha256(ModelCard.weights_path(model_dir).read_bytes()).hexdigest()[:16]
    # The graph carries the guard's threshold (the refusal direction's scale): key it too.
    threshold = hashlib.sha256(repr(card.ood_threshold).encode()).hexdigest()[:8]
    path = _cache_dir() / (f"{card.architecture}-{card.image_size}px-{digest}-{threshold}"
                           f"-v{ONNX_GRAPH_VERSION}.onnx")
    if path.is_file():
        return path
    from mri_tumor.inference.export import export_onnx

    model, _, guard = load_served(model_dir)
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        export_onnx(model, card, tmp, guard)
        tmp.replace(path)
    except OSError:  # no writable cache (read-only home, say): a private temporary copy
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="mri-tumor-")) / path.name
        export_onnx(model, card, path, guard)
    return path


def export_model(model: str | Path | None, out: Path, quantize: str | None = None) -> Path:
    """Export a model (a name or a folder) to ONNX (network and guard score) with the card's
    metadata in the graph, and write the card beside it (``export.exported_card_path``); int8
    calibrates on the bundled sample images and keeps the guard's score in fp32."""
    from mri_tumor.inference.export import (
        export_onnx,
        quantize_int8,
        write_exported_card,
        write_metadata,
    )

    model_dir = resolve_model(model)[1]
    network, card, guard = load_served(model_dir)
    if quantize != "int8":
        path = export_onnx(network, card, out, guard)
    else:
        fp32 = out.with_suffix(".fp32.onnx")
        export_onnx(network, card, fp32, guard)
        try:
            path = quantize_int8(fp32, out, calibration_batch(card))
        finally:
            fp32.unlink(missing_ok=True)
        write_metadata(path, card, quantization="int8")
    write_exported_card(card, path, quantize, ModelCard.weights_sha256(model_dir))
    return path


def calibration_batch(card: ModelCard) -> Any:
    """Normalised input batch from the bundled sample images (int8 calibration data)."""
    import torch

    from mri_tumor.data.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec.from_card(card)
    samples = sorted((Path(__file__).parents[1] / "samples").glob("*.jpg"))
    return torch.stack([preprocess(path, spec) for path in samples])
