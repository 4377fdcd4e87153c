"""What every command shares: the usage error, the help format, the --model and --backend
options, counting words, logging to stderr and stopping on signals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UsageError(Exception):
    """Bad arguments or inputs: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (flags,
    options that are off unless given) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_model(p: argparse.ArgumentParser) -> None:
    from mri_tumor.inference.model_folder import SHIPPED_MODELS

    p.add_argument("--model", metavar="NAME_OR_DIR",
                   help=f"a shipped model ({', '.join(SHIPPED_MODELS)}; default: default, "
                        "the 4-class model), a registered one (mri-tumor models) or a model "
                        "folder")


def add_backend(p: argparse.ArgumentParser) -> None:
    from mri_tumor.inference import BACKENDS, DEFAULT_BACKEND

    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND,
                   help="onnx: ONNX Runtime, no torch, several times faster to start and run "
                        "on CPU; torch: PyTorch (same results)")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def nothing_found(folders: list[Path], recursive: bool) -> str:
    """Why a predict run has nothing to read, and what would find something."""
    where = ", ".join(str(folder) for folder in folders)
    if recursive:
        return f"no image or DICOM file found in {where} or its sub-folders"
    subfolders = sum(1 for folder in folders for child in folder.iterdir()
                     if child.is_dir() and not child.name.startswith("."))
    if subfolders:
        return (f"no image or DICOM file found in {where}; it holds "
                f"{count(subfolders, 'sub-folder')}: add --recursive to read them")
    return f"no image or DICOM file found in {where}"


def log_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    package = logging.getLogger("mri_tumor")
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def stop_on_signals():
    """An event set by SIGTERM or SIGINT, for the long-running PACS actions."""
    import signal
    import threading

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    return stop
