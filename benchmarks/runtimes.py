"""Speed of the exported network in ONNX Runtime and, when installed, OpenVINO.

    python benchmarks/runtimes.py [--model DIR] [--threads 2]
    pip install openvino==2026.4.1   # optional: adds the OpenVINO rows

Runs the model's exported ONNX graph (network and guard score, the file the ONNX backend
uses) on random input of the card's size: milliseconds for one image (median of 100 runs)
and images per second in batches of 8 (the batch the predictor uses). Network only: no
decoding or preprocessing, so the numbers are upper bounds for the end-to-end ones in
``benchmarks/inference.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mri_tumor import Predictor
from mri_tumor.card import ModelCard
from mri_tumor.inference import ensure_onnx_file
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.inference.predictor import NETWORK_BATCH


def timings(run: Callable[[np.ndarray], object], size: int) -> tuple[float, float]:
    """(ms for one image, images/s in batches of NETWORK_BATCH) for one runtime."""
    one = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    batch = np.repeat(one, NETWORK_BATCH, axis=0)
    for _ in range(5):
        run(one)
        run(batch)
    single = []
    for _ in range(100):
        start = time.perf_counter()
        run(one)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(30):
        run(batch)
    throughput = 30 * NETWORK_BATCH / (time.perf_counter() - start)
    return statistics.median(single) * 1000, throughput


def onnxruntime_runner(model_dir: Path, threads: int) -> Callable[[np.ndarray], object]:
    """The ONNX Runtime session of the predictor's ONNX backend, with its settings."""
    session = Predictor.load(model_dir, backend="onnx", threads=threads).backend.session
    return lambda x: session.run(None, {"pixels": x})


def openvino_runners(path: Path, threads: int,
                     size: int) -> dict[str, Callable[[np.ndarray], object]]:
    """One compiled model per batch size (OpenVINO compiles for static shapes best)."""
    import openvino as ov

    core = ov.Core()
    compiled = {}
    for hint in ("LATENCY", "THROUGHPUT"):
        requests = {}
        for batch in (1, NETWORK_BATCH):
            model = core.read_model(str(path))
            model.reshape({"pixels": [batch, 3, size, size]})
            requests[batch] = core.compile_model(
                model, "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads},
            ).create_infer_request()
        compiled[f"OpenVINO ({hint.lower()} hint)"] = (
            lambda x, r=requests: r[len(x)].infer({"pixels": x}))
    return compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    card = ModelCard.load(args.model)
    path = ensure_onnx_file(args.model, card)
    runners = {"ONNX Runtime": onnxruntime_runner(args.model, args.threads)}
    try:
        runners.update(openvino_runners(path, args.threads, card.image_size))
    except ImportError:
        print("openvino is not installed: ONNX Runtime only")
    print(f"{card.architecture} at {card.image_size} px, {args.threads} threads, network only")
    print("| runtime | ms, 1 image (p50) | images/s, batches of 8 |")
    print("|---|---|---|")
    for name, run in runners.items():
        ms, per_second = timings(run, card.image_size)
        print(f"| {name} | {ms:.1f} | {per_second:.0f} |", flush=True)


if __name__ == "__main__":
    main()
