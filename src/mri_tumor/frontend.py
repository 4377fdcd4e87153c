"""Helpers shared by the front ends (CLI, web app, HTTP API): input discovery, output
formatting and model loading. No model logic lives here: that is ``inference``."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.card import ModelCard, resolve_model
from mri_tumor.data.reading import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, looks_like_dicom_bytes
from mri_tumor.data.volume import is_nifti_name
from mri_tumor.inference import DEFAULT_BACKEND

if TYPE_CHECKING:  # torch is imported only when a model is needed (fast `mri-tumor app` start)
    from mri_tumor.inference import Prediction, Predictor


def load_predictor(model: str | Path | None = None,
                   backend: str = DEFAULT_BACKEND) -> Predictor:
    """Load a shipped model by name or a model folder (default: the default shipped model);
    ValueError or FileNotFoundError say why not, in one line."""
    from mri_tumor.inference import Predictor

    return Predictor.load(model, backend=backend)


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or suffix == ".zip" \
            or is_nifti_name(path):
        return True
    if suffix or not path.is_file():
        return False
    try:  # extension-less files are taken when they are DICOM by content
        with path.open("rb") as handle:
            return looks_like_dicom_bytes(handle.read(132))
    except OSError:
        return False


def expand_inputs(paths: Sequence[Path], recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Files as given, folders expanded to their image and DICOM files (sorted).

    Returns (inputs, skipped files found in folders that are not images). A path that does
    not exist stays in the inputs so that its result reports it.
    """
    inputs: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.is_dir():
            inputs.append(path)
            continue
        found = path.rglob("*") if recursive else path.iterdir()
        for child in sorted(found):
            if child.is_dir() or child.name.startswith("."):
                continue
            # A broken link or a pipe named like an image is kept, so that its result says why
            # it could not be read.
            (inputs if _is_candidate(child) else skipped).append(child)
    return inputs, skipped


def _blank_if_none(value: object) -> object:
    return "" if value is None else value


def format_probability(p: float | None) -> str:
    """A probability as every front end shows it: a percentage with one decimal, never
    "100.0%" or "0.0%" (the model is never certain): "> 99.9%" and "< 0.1%" instead. None
    (no probability: a rejected or unreadable input) gives ""."""
    if p is None:
        return ""
    text = f"{p:.1%}"
    if text == "100.0%" or p > 1:
        return "> 99.9%"
    if text in ("0.0%", "-0.0%") or p < 0:
        return "< 0.1%"
    return text


def result_class_names(results: Sequence[Prediction]) -> list[str]:
    """The class names found in the results' probabilities, in their order (for callers that
    have no model card at hand; the card's ``class_names`` are the reference)."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.probabilities or {}))
    return list(names)


def result_sequence_names(results: Sequence[Prediction]) -> list[str]:
    """The MR sequence names found in the results' sequence probabilities, in their order
    (empty when no result names a sequence; the card's ``sequence_names`` are the
    reference)."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.sequence_probabilities or {}))
    return list(names)


def csv_columns(class_names: Sequence[str], sequence_names: Sequence[str] = ()) -> list[str]:
    """The header of ``predict --csv`` (and of the app's download): one ``p_<class>`` column
    per class, named as in ``evaluate``'s ``predictions.csv``; for a model with a sequence
    head (``sequence_names``) also ``sequence`` and one ``p_sequence_<name>`` column per
    sequence."""
    sequence = (["sequence", *(f"p_sequence_{name}" for name in sequence_names)]
                if sequence_names else [])
    return ["path", "status", "label", "confidence", *(f"p_{name}" for name in class_names),
            *sequence, "ood_score", "message"]


def format_sequence(result: Prediction) -> str:
    """A result's MR sequence with its probability, as the front ends show it ("T1C+
    (87.0%)"); "" when it names none."""
    if result.sequence is None:
        return ""
    probability = (result.sequence_probabilities or {}).get(result.sequence)
    if probability is None:
        return result.sequence
    return f"{result.sequence} ({format_probability(probability)})"


def given_source(source: str, given: Sequence[Path | str] | None) -> str:
    """The path the user gave that holds ``source`` (a scan's file or folder), as typed."""
    for path in given or ():
        if Path(source) == Path(path) or Path(path) in Path(source).parents:
            return str(path)
    return source


def format_results(results: Sequence[Prediction], mode: str = "table",
                   card: ModelCard | None = None,
                   given: Sequence[Path | str] | None = None) -> str:
    """Render results as a table, JSON Lines or CSV; DICOM series get summary lines.

    ``card``, the model's card (``predictor.card``), gives the CSV's ``p_<class>`` columns
    (its ``class_names``, in their order), its sequence columns (``sequence_names``: a model
    with a sequence head) and the normal class of the series summaries; without it the
    classes and sequences found in the results are used. The table shows the MR sequence
    next to the prediction when a result names one.
    """
    from mri_tumor.scans import scan_summaries, study_summaries

    summaries = scan_summaries(results, card)
    for summary in summaries:
        summary["source"] = given_source(summary["source"], given)
    studies = study_summaries(summaries)
    if mode == "json":
        lines = [json.dumps(r.to_dict()) for r in results]
        lines += [json.dumps({"series_summary": s}) for s in summaries]
        lines += [json.dumps({"study_summary": study}) for study in studies]
        return "\n".join(lines) + ("\n" if lines else "")
    if mode == "csv":
        names = list(card.class_names) if card else result_class_names(results)
        sequences = list(card.sequence_names) if card else result_sequence_names(results)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(csv_columns(names, sequences))
        for r in results:
            probabilities = r.probabilities or {}
            sequence_cells = []
            if sequences:
                sequence_probabilities = r.sequence_probabilities or {}
                sequence_cells = [r.sequence or "", *(
                    _blank_if_none(sequence_probabilities.get(name)) for name in sequences)]
            writer.writerow([r.path, r.status, r.label or "", _blank_if_none(r.confidence),
                             *(_blank_if_none(probabilities.get(name)) for name in names),
                             *sequence_cells, _blank_if_none(r.ood_score), r.message])
        return buffer.getvalue()
    with_sequence = any(r.sequence is not None for r in results)
    header = ("FILE", "STATUS", "PREDICTION", "CONFIDENCE",
              *(("SEQUENCE",) if with_sequence else ()))
    rows: list[tuple[tuple[str, ...], str]] = [(header, "NOTE")]
    for r in results:
        note = r.message.removeprefix(f"{r.path}: ")  # the FILE column already names it
        cells = (r.path, r.status, r.display_label or "-",
                 format_probability(r.confidence) or "-",
                 *((format_sequence(r) or "-",) if with_sequence else ()))
        rows.append((cells, note))
    widths = [min(max(len(cells[i]) for cells, _ in rows), 60) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
           + ("  " + note if note else "") for cells, note in rows]
    out.extend(scan_line(s, card) for s in summaries)
    out.extend(f"study {study['source']}: {study['message']}" for study in studies)
    return "\n".join(out) + "\n"


def scan_line(summary: dict, card: ModelCard | None) -> str:
    """One scan's answer in words, for the table and the logs."""
    refused = f", {summary['refused']} refused as not brain MRI" if summary["refused"] else ""
    head = f"scan {summary['source']} ({summary['slices']} slices read{refused})"
    if summary["status"] != "ok":
        return f"{head}: {summary['message']}"
    label = card.display_name(summary["label"]) if card else summary["label"]
    keys = ", ".join(str(k) for k in summary["key_slices"])
    disagree = "; slices disagree" if summary["disagree"] else ""
    return (f"{head}: {label}, scan-level probability "
            f"{format_probability(summary['probability'])} (key slices {keys}{disagree})")


def export_model(model: str | Path | None, out: Path, quantize: str | None = None) -> Path:
    """Export a model folder to ONNX (network and guard score); int8 calibrates on the
    bundled sample images and keeps the guard's score in fp32."""
    from mri_tumor.export import export_onnx, quantize_int8
    from mri_tumor.models import load_model
    from mri_tumor.ood import OODGuard

    network, card, extras = load_model(resolve_model(model)[1])
    guard = OODGuard.from_tensors(extras, card.ood_threshold)
    if quantize != "int8":
        return export_onnx(network, card, out, guard)
    fp32 = out.with_suffix(".fp32.onnx")
    export_onnx(network, card, fp32, guard)
    try:
        return quantize_int8(fp32, out, calibration_batch(card))
    finally:
        fp32.unlink(missing_ok=True)


def calibration_batch(card) -> object:
    """Normalised input batch from the bundled sample images (int8 calibration data)."""
    import torch

    from mri_tumor.data.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec.from_card(card)
    samples = sorted((Path(__file__).parent / "samples").glob("*.jpg"))
    return torch.stack([preprocess(path, spec) for path in samples])


STOP_SECONDS = 10.0  # how long the server may take to stop before it is killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def launch_app(port: int = 8501, host: str = "127.0.0.1",
               model: str | Path | None = None) -> int:
    """Run the Streamlit app in this process' Python until it stops; returns its exit status.

    SIGINT (Ctrl+C) and SIGTERM stop the server too: the signal is passed on to it (as
    SIGTERM, which it handles at any point of its start-up), it is waited for (killed after
    ``STOP_SECONDS``), and the status is 128 + the signal's number (130, 143), as a shell
    reports it. Raises ValueError for a bad port and FileNotFoundError or ValueError for a
    model that cannot be loaded, before anything starts. ``model`` (a shipped model's name or
    a model folder) is the one the page starts with; the page lists the shipped ones too.
    """
    if not 0 < port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    if model:
        ModelCard.load(resolve_model(model)[1])
    script = Path(__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               "--server.port", str(port), "--server.address", host,
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    if model:
        command += ["--", "--model", str(model)]
    print(f"MRI tumour classifier: http://{host}:{port}  (Ctrl+C to stop)", flush=True)
    return run_until_stopped(command)


def run_until_stopped(command: Sequence[str]) -> int:
    """Run ``command`` as a child and wait for it; SIGINT or SIGTERM sent to this process
    stops the child first (see ``launch_app``). Returns the child's exit status, or 128 + the
    signal's number when a signal stopped it. Never leaves the child running."""
    received: list[int] = []
    process: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if process is not None and process.poll() is None:
            process.terminate()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS} if in_main_thread else {}
    try:
        process = subprocess.Popen(list(command))
        if received:  # a signal came while the child was being started
            process.terminate()
        return _wait_for(process, received)
    finally:
        if process is not None and process.poll() is None:  # an unexpected error here
            process.kill()
            process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_for(process: subprocess.Popen, received: list[int]) -> int:
    deadline: float | None = None
    while True:
        try:
            status = process.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if received and deadline is None:
            deadline = time.monotonic() + STOP_SECONDS
        elif deadline is not None and time.monotonic() > deadline:
            print("The app did not stop in time; killing it.", file=sys.stderr, flush=True)
            process.kill()
            status = process.wait()
            break
    if received:
        return 128 + received[0]
    return status if status >= 0 else 128 - status  # -N: the child was killed by signal N
