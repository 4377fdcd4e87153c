"""Reading PyTorch checkpoint files safely: tensors and plain containers only, never code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a ValueError naming the file when it
    is not a readable checkpoint (damaged, not a checkpoint, or one that needs code to load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch raise many types for a bad file
        detail = (str(error).splitlines() or [""])[0][:160]
        reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
