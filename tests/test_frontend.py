"""The front ends' shared helpers (presentation.py, app/launch.py): how probabilities are
written, the CLI's table and CSV, and `mri-tumor app` stopping its Streamlit server on
SIGTERM and SIGINT."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mri_tumor.app import launch
from mri_tumor.app.launch import run_until_stopped
from mri_tumor.card import ModelCard
from mri_tumor.columns import column_keys
from mri_tumor.inference import Prediction
from mri_tumor.presentation import csv_columns, format_probability, format_results

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 90  # generous: CI runners share their cores
STOP_SECONDS = 10


# -- probabilities as text -----------------------------------------------------------------
@pytest.mark.parametrize("p, text", [
    (0.9997, "> 99.9%"), (0.99951, "> 99.9%"), (1.0, "> 99.9%"), (0.9994, "99.9%"),
    (0.5, "50.0%"), (0.0012, "0.1%"), (0.0004, "< 0.1%"), (0.0, "< 0.1%"), (None, ""),
])
def test_format_probability(p: float | None, text: str) -> None:
    assert format_probability(p) == text


def _results(names: list[str]) -> list[Prediction]:
    probabilities = {n: (0.9997 if i == 0 else 0.0001) for i, n in enumerate(names)}
    return [
        Prediction("a.jpg", "ok", label=names[0], confidence=0.9997,
                   probabilities=probabilities, ood_score=1.5),
        Prediction("cat.png", "rejected", ood_score=40.0, message="not a brain MRI slice"),
        Prediction("b.png", "error", message="b.png: the file is empty"),
    ]


def _card(names: list[str]) -> ModelCard:
    return ModelCard(architecture="efficientnet_lite0", class_names=names, image_size=224,
                     mean=[0.5] * 3, std=[0.25] * 3)


def test_table_writes_confidences_as_the_app_does() -> None:
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    table = format_results(_results(names), "table").splitlines()
    assert table[1].split()[:2] == ["a.jpg", "ok"]
    assert "> 99.9%" in table[1] and "100.0%" not in table[1]
    assert table[3].split()[:4] == ["b.png", "error", "-", "-"]
    assert table[3].endswith("the file is empty")


@pytest.mark.parametrize("names", [
    ["glioma", "meningioma", "notumor", "pituitary"],
    ["benign", "malignant"],  # another model's card: the columns follow its classes
])
def test_csv_has_one_probability_column_per_class(names: list[str]) -> None:
    rows = list(csv.reader(io.StringIO(format_results(_results(names), "csv", _card(names)))))
    assert rows[0] == ["path", "status", "label", "confidence",
                       *(f"p_{n}" for n in names), "ood_score", "message"]
    assert rows[0] == csv_columns(names)
    ok, rejected, error = (dict(zip(rows[0], row, strict=True)) for row in rows[1:])
    assert ok["confidence"] == ok[f"p_{names[0]}"] == "0.9997"
    assert [ok[f"p_{n}"] for n in names[1:]] == ["0.0001"] * (len(names) - 1)
    for row in (rejected, error):
        assert [row[f"p_{n}"] for n in names] == [""] * len(names)
    assert rejected["ood_score"] == "40.0" and error["ood_score"] == ""


def test_csv_without_class_names_uses_those_of_the_results() -> None:
    names = ["benign", "malignant"]
    header = next(csv.reader(io.StringIO(format_results(_results(names), "csv"))))
    assert header == csv_columns(names)


SEQUENCES = ["T1", "T1C+", "T2"]


def _sequence_results(names: list[str]) -> list[Prediction]:
    """The results of a model with a sequence head: the classified one names a sequence."""
    ok, rejected, error = _results(names)
    ok.sequence = "T1C+"
    ok.sequence_probabilities = {"T1": 0.05, "T1C+": 0.87, "T2": 0.08}
    return [ok, rejected, error]


def test_csv_of_a_sequence_model_has_the_sequence_columns() -> None:
    names = [f"type-{i}" for i in range(15)]
    card = _card(names)
    card.sequence_names = list(SEQUENCES)
    text = format_results(_sequence_results(names), "csv", card)
    rows = list(csv.reader(io.StringIO(text)))
    sequence_columns = ["p_sequence_T1", "p_sequence_T1Cplus", "p_sequence_T2"]
    assert rows[0] == csv_columns(names, SEQUENCES) == [
        "path", "status", "label", "confidence", *(f"p_type_{i}" for i in range(15)),
        "sequence", *sequence_columns, "ood_score", "message"]
    ok, rejected, error = (dict(zip(rows[0], row, strict=True)) for row in rows[1:])
    assert ok["sequence"] == "T1C+"  # the cells keep the names as they are
    assert [ok[c] for c in sequence_columns] == ["0.05", "0.87", "0.08"]
    for row in (rejected, error):  # no sequence for an input that got no class
        assert [row["sequence"], *(row[c] for c in sequence_columns)] == [""] * 4
    # Without a card the sequences come from the results, as the classes do.
    header = next(csv.reader(io.StringIO(format_results(_sequence_results(names), "csv"))))
    assert header == csv_columns(names, SEQUENCES)


def test_csv_columns_of_the_types_model_have_no_spaces_or_punctuation() -> None:
    types = ModelCard.load(ROOT / "src/mri_tumor/weights/types")
    header = csv_columns(types.class_names, types.sequence_names)
    assert "p_carcinoma_metastasis" in header and "p_papilloma_choroid_plexus" in header
    assert header[-6:-2] == ["sequence", "p_sequence_T1", "p_sequence_T1Cplus", "p_sequence_T2"]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", column) for column in header)
    assert len(set(header)) == len(header)
    # The rows still name the classes as the card does: the CSV of a carcinoma result.
    names = types.class_names
    result = Prediction("a.jpg", "ok", label="carcinoma (metastasis)", confidence=0.9,
                        probabilities={n: (0.9 if n.startswith("carcinoma") else 0.0)
                                       for n in names}, ood_score=1.0)
    row = next(csv.DictReader(io.StringIO(format_results([result], "csv", types))))
    assert row["label"] == "carcinoma (metastasis)" and row["p_carcinoma_metastasis"] == "0.9"


@pytest.mark.parametrize(("names", "keys"), [
    (["carcinoma (metastasis)", "T1C+", "_NORMAL T2", "Ödem"],
     ["carcinoma_metastasis", "T1Cplus", "NORMAL_T2", "Odem"]),
    (["a b", "a_b", "a-b"], ["a_b", "a_b_2", "a_b_3"]),  # a clash: numbered in card order
    (["()", "??"], ["class", "class_2"]),  # nothing to keep
    (["carcinoma_metastasis", "T1Cplus"], ["carcinoma_metastasis", "T1Cplus"]),  # keys stay
])
def test_column_keys_are_readable_unique_and_stable(names: list[str], keys: list[str]) -> None:
    assert column_keys(names) == keys
    assert column_keys(keys) == keys


def test_csv_of_a_model_without_a_sequence_head_has_no_sequence_columns() -> None:
    names = ["benign", "malignant"]
    header = next(csv.reader(io.StringIO(format_results(_results(names), "csv",
                                                        _card(names)))))
    assert "sequence" not in header and not any(c.startswith("p_sequence_") for c in header)


def test_table_shows_the_sequence_next_to_the_prediction() -> None:
    names = ["astrocytoma", "normal"]
    results = _sequence_results(names)
    results[0].display_label = "Astrocytoma"
    table = format_results(results, "table").splitlines()
    assert table[0].split() == ["FILE", "STATUS", "PREDICTION", "CONFIDENCE", "SEQUENCE",
                                "NOTE"]
    assert table[1].split() == ["a.jpg", "ok", "Astrocytoma", ">", "99.9%", "T1C+", "(87.0%)"]
    assert table[2].split()[:5] == ["cat.png", "rejected", "-", "-", "-"]
    assert "SEQUENCE" not in format_results(_results(names), "table")


# -- `mri-tumor app` and signals -----------------------------------------------------------
def test_run_until_stopped_returns_the_status_of_its_command() -> None:
    assert run_until_stopped([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def test_a_command_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(launch, "STOP_SECONDS", 1.0)
    pid_file = tmp_path / "pid"
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    # SIGTERM to this process (the test runner) once the child is up: run_until_stopped
    # handles it while it runs, and restores the runner's own handling afterwards.
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    try:
        assert run_until_stopped([sys.executable, "-c", stubborn]) == 143
    finally:
        timer.cancel()
    assert time.monotonic() - start < 10
    assert "did not stop in time; killing it" in capsys.readouterr().err
    assert not _alive(int(pid_file.read_text()))
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                    timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while being read
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has stopped; only its parent's wait is missing


@pytest.fixture
def running_app(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """`python -m mri_tumor app` on a free port, answering; in a session of its own so that
    the teardown can stop whatever it left behind (only processes this fixture started).
    Its output goes to a file: a server left running would hold a pipe open forever."""
    port = _free_port()
    log = tmp_path / "app.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mri_tumor", "app", "--port", str(port)], cwd=ROOT,
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _answers(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.3)
        yield process, port, log
    finally:
        with contextlib.suppress(ProcessLookupError):  # a server left behind by a failure
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, to_group, status", [
    (signal.SIGTERM, False, 143),  # `kill PID`: the command alone gets it
    (signal.SIGINT, False, 130),  # `kill -INT PID`
    (signal.SIGINT, True, 130),  # Ctrl+C in a terminal: the command and the server get it
], ids=["kill", "kill-INT", "ctrl-c"])
def test_app_command_stops_its_server_on_a_signal(
        running_app: tuple[subprocess.Popen, int, Path], signum: int, to_group: bool,
        status: int) -> None:
    process, port, log = running_app
    servers = _children(process.pid)
    assert servers, "no streamlit child found"
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    assert process.wait(timeout=STOP_SECONDS + 5) == status
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in servers), "the streamlit server is still running"
    assert not _answers(port)
    assert "Traceback" not in log.read_text()


def test_the_table_gives_a_series_refused_by_its_header_one_row() -> None:
    refusal = "DICOM Modality is CT (computed tomography), not MR"
    results = [Prediction(f"ct/{i}.dcm", "rejected", message=f"ct/{i}.dcm: {refusal}",
                          series="abc", by_header=True) for i in range(3)]
    results.insert(1, Prediction("mr/1.jpg", "error", message="mr/1.jpg: holds no image"))
    table = format_results(results).splitlines()
    rows = [line for line in table if line.startswith(("ct/", "mr/"))]
    assert [row.split()[0] for row in rows] == ["ct/0.dcm", "mr/1.jpg"]
    assert rows[0].endswith(f"{refusal} (and 2 more files of this series, refused alike)")
    assert format_results(results, "json").count('"rejected"') == 3  # JSON: a line per file
