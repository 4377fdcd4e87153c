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


def subfolders(paths: list[Path]) -> list[Path]:
    """The sub-folders (not hidden ones) of the given folders, which a run without
    --recursive does not read."""
    return sorted(child for folder in paths if folder.is_dir() for child in folder.iterdir()
                  if child.is_dir() and not child.name.startswith("."))


def listed(paths: list[Path], shown: int = 5) -> str:
    """The first ``shown`` paths, then how many more."""
    names = ", ".join(str(path) for path in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def skipped_note(skipped: list[Path]) -> str:
    """The files a folder held that were not read, named (the first few)."""
    return (f"skipped {count(len(skipped), 'non-image file')} in the given folders (not an "
            "image, DICOM, NIfTI or zip by the extension, or by the content when there is "
            f"none): {listed(skipped)}")


def unread_note(unread: list[Path]) -> str:
    """The sub-folders a run without --recursive did not read."""
    return (f"did not read {count(len(unread), 'sub-folder')} ({listed(unread)}); add "
            "--recursive to read sub-folders too")


def nothing_found(folders: list[Path], recursive: bool) -> str:
    """Why a predict run has nothing to read, and what would find something."""
    where = ", ".join(str(folder) for folder in folders)
    if recursive:
        return f"no image or DICOM file found in {where} or its sub-folders"
    if unread := subfolders(folders):
        return (f"no image or DICOM file found in {where}; it holds "
                f"{count(len(unread), 'sub-folder')}: add --recursive to read them")
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
