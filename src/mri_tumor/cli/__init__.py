"""The ``mri-tumor`` command. Thin: it parses arguments, calls a stage, prints the result. One
module per group of commands (``modelling``, ``reading``, ``serving``); ``common`` holds what
they share."""

from __future__ import annotations

import argparse
import sys

from mri_tumor import __version__
from mri_tumor.cli.common import HelpFormatter, UsageError
from mri_tumor.cli.modelling import (
    add_adapt,
    add_calibrate,
    add_models,
    add_train,
    run_adapt,
    run_calibrate,
    run_models,
    run_train,
)
from mri_tumor.cli.reading import (
    add_compare,
    add_evaluate,
    add_export,
    add_predict,
    run_compare,
    run_evaluate,
    run_export,
    run_predict,
)
from mri_tumor.cli.segmenting import (
    add_evaluate_segmenter,
    add_segment,
    add_train_segmenter,
    run_evaluate_segmenter,
    run_segment,
    run_train_segmenter,
)
from mri_tumor.cli.serving import add_app, add_pacs, add_serve, run_app, run_pacs, run_serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri-tumor",
        description="Brain MRI tumour classifier. Research tool, not a diagnosis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_calibrate, add_evaluate, add_compare, add_predict,
                add_export, add_segment, add_train_segmenter, add_evaluate_segmenter,
                add_app, add_serve, add_adapt, add_models, add_pacs):
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return parser


COMMANDS = {"train": run_train, "calibrate": run_calibrate, "evaluate": run_evaluate,
            "compare": run_compare, "predict": run_predict, "export": run_export,
            "app": run_app, "serve": run_serve, "adapt": run_adapt, "models": run_models,
            "pacs": run_pacs, "segment": run_segment,
            "train-segmenter": run_train_segmenter,
            "evaluate-segmenter": run_evaluate_segmenter}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mri-tumor`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"mri-tumor {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"mri-tumor {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # cannot write an output: no space, no permission, a file in the way
        where = f": {error.filename}" if error.filename else ""
        print(f"mri-tumor {args.command}: error: {error.strerror or error}{where}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
