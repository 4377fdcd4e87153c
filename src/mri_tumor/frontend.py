"""Helpers shared by the front ends (CLI, web app, HTTP API): input discovery, output
formatting and model loading. No model logic lives here: that is ``inference``."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.card import SHIPPED_MODEL_DIR, ModelCard
from mri_tumor.data.reading import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, looks_like_dicom_bytes
from mri_tumor.inference import DEFAULT_BACKEND

if TYPE_CHECKING:  # torch is imported only when a model is needed (fast `mri-tumor app` start)
    from mri_tumor.inference import Prediction, Predictor


def load_predictor(model_dir: Path | None = None, backend: str = DEFAULT_BACKEND) -> Predictor:
    """Load a model folder (default: the shipped one) or raise FileNotFoundError saying why."""
    from mri_tumor.inference import Predictor

    directory = Path(model_dir) if model_dir else SHIPPED_MODEL_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model folder")
    return Predictor.load(directory, backend=backend)


def _is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS:
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


def _confidence_text(result: Prediction) -> str:
    return f"{result.confidence:.1%}" if result.confidence is not None else "-"


def format_results(results: Sequence[Prediction], mode: str = "table") -> str:
    """Render results as a table, JSON Lines or CSV; DICOM series get summary lines."""
    from mri_tumor.inference import RESULT_KEYS, series_summaries

    summaries = series_summaries(results)
    if mode == "json":
        lines = [json.dumps(r.to_dict()) for r in results]
        lines += [json.dumps({"series_summary": s}) for s in summaries]
        return "\n".join(lines) + ("\n" if lines else "")
    if mode == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(RESULT_KEYS)
        for r in results:
            probs = json.dumps(r.probabilities) if r.probabilities else ""
            writer.writerow([r.path, r.status, r.label or "", _blank_if_none(r.confidence),
                             probs, _blank_if_none(r.ood_score), r.message])
        return buffer.getvalue()
    rows = [("FILE", "STATUS", "PREDICTION", "CONFIDENCE", "NOTE")]
    for r in results:
        note = r.message.removeprefix(f"{r.path}: ")  # the FILE column already names it
        rows.append((r.path, r.status, r.display_label or "-", _confidence_text(r), note))
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(4)]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
           + ("  " + row[4] if row[4] else "") for row in rows]
    for s in summaries:
        out.append(f"series {s['series']} ({s['slices']} slices): most likely {s['label']} "
                   f"(p={s['probability']:.2f}, slice {s['slice']})")
    return "\n".join(out) + "\n"


def export_model(model_dir: Path | None, out: Path, quantize: str | None = None) -> Path:
    """Export a model folder to ONNX (network and guard score); int8 calibrates on the
    bundled sample images and keeps the guard's score in fp32."""
    from mri_tumor.export import export_onnx, quantize_int8
    from mri_tumor.models import load_model
    from mri_tumor.ood import OODGuard

    directory = Path(model_dir) if model_dir else SHIPPED_MODEL_DIR
    model, card, extras = load_model(directory)
    guard = OODGuard.from_tensors(extras, card.ood_threshold)
    if quantize != "int8":
        return export_onnx(model, card, out, guard)
    fp32 = out.with_suffix(".fp32.onnx")
    export_onnx(model, card, fp32, guard)
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


def launch_app(port: int = 8501, host: str = "127.0.0.1", model_dir: Path | None = None) -> int:
    """Run the Streamlit app in this process' Python; returns streamlit's exit status.

    Raises ValueError for a bad port and FileNotFoundError or ValueError for a model folder
    that cannot be loaded, before anything starts.
    """
    if not 0 < port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    if model_dir:
        ModelCard.load(Path(model_dir))
    script = Path(__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               "--server.port", str(port), "--server.address", host,
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    if model_dir:
        command += ["--", "--model", str(model_dir)]
    print(f"MRI tumour classifier: http://{host}:{port}  (Ctrl+C to stop)", flush=True)
    return subprocess.call(command)
