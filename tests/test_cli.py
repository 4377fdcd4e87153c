"""The command line: defaults, help and the messages of commands that have nothing to do."""

from __future__ import annotations

import argparse
import json
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
    assert set(defaults) == {"predict", "evaluate", "segment"}
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


def test_predict_names_the_files_it_skipped_and_the_sub_folders_it_did_not_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data"
    (folder / "series 2").mkdir(parents=True)
    glioma = sorted((FIXTURE_IMAGES / "glioma").glob("*.jpg"))
    shutil.copy(glioma[0], folder / "a.jpg")
    shutil.copy(glioma[1], folder / "IMG0001")  # a JPEG without an extension: read by content
    shutil.copy(glioma[2], folder / "series 2" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "NOEXT").write_bytes(b"plain text, no extension")
    assert main(["predict", "--json", str(folder)]) == 0
    captured = capsys.readouterr()
    read = [json.loads(line)["path"] for line in captured.out.splitlines()]
    assert read == [str(folder / "IMG0001"), str(folder / "a.jpg")]
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: skipped 2 non-image files in the given folders (not an image, DICOM, NIfTI or "
        "zip by the extension, or by the content when there is none): "
        f"{folder / 'NOEXT'}, {folder / 'notes.txt'}",
        f"note: did not read 1 sub-folder ({folder / 'series 2'}); add --recursive to read "
        "sub-folders too"]
    assert "Research tool, not a diagnosis" in captured.err
    # With --recursive the sub-folder is read and not mentioned; many skipped files are
    # named up to five.
    for index in range(6):
        (folder / f"extra{index}.csv").write_text("x")
    assert main(["predict", "--recursive", "--json", str(folder)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert "did not read" not in captured.err
    assert "skipped 8 non-image files" in captured.err and "and 3 more" in captured.err
