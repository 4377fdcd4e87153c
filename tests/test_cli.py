"""The command line: defaults, help and the messages of commands that have nothing to do."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from tests.conftest import FIXTURE_IMAGES

from mri_tumor.cli import build_parser, main
from mri_tumor.data.reading import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB
from mri_tumor.inference import DEFAULT_BACKEND


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_that_runs_a_model_defaults_to_the_same_backend() -> None:
    defaults = {name: command.get_default("backend") for name, command in _subcommands().items()
                if any(a.dest == "backend" for a in command._actions)}
    assert set(defaults) == {"predict", "evaluate"}
    assert set(defaults.values()) == {DEFAULT_BACKEND}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_help_shows_every_default(command: str) -> None:
    subparser = _subcommands()[command]
    text = " ".join(subparser.format_help().split())
    for action in subparser._actions:
        if action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            continue
        shown = str(action.default)
        assert f"default: {shown}" in text or f"{shown} (default" in text, (
            f"{command} {action.option_strings[0]}: default {shown} not in --help")


def test_predict_on_a_folder_of_folders_says_so_and_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(FIXTURE_IMAGES, tmp_path / "data")
    assert main(["predict", str(tmp_path / "data")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no image or DICOM file found" in captured.err
    assert "4 sub-folders: add --recursive to read them" in captured.err


def test_predict_recursive_reads_the_sub_folders(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(FIXTURE_IMAGES, tmp_path / "data")
    assert main(["predict", "--recursive", "--json", str(tmp_path / "data")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(list(FIXTURE_IMAGES.glob("*/*")))


def test_predict_on_an_empty_folder_fails(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--recursive", str(tmp_path)]) == 1
    assert "or its sub-folders" in capsys.readouterr().err


def test_a_file_over_the_upload_limit_gets_the_one_wording(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: no 51 MB written to disk
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    assert main(["predict", str(big)]) == 1
    out = capsys.readouterr().out
    assert f"larger than the {MAX_UPLOAD_MB} MB limit (1 MB = 1,048,576 bytes)" in out
