"""Inference speed and memory of the shipped model, both backends, next to `detect-tumor`.

    python benchmarks/inference.py --data ../shared/data/brain-tumor-mri/Training \
        --split src/mri_tumor/weights/efficientnet_lite0/split.csv [--json out.json]
    python benchmarks/inference.py --network-only vgg16 efficientnet_lite0 efficientnet_lite0:208
    python benchmarks/inference.py --models OLD_MODEL_DIR src/mri_tumor/weights/efficientnet_lite0
        (several model folders in one run, without detect-tumor: compare them on equal terms)

Measured from file bytes to result (decode, preprocess, network, calibration, OOD guard):
- single-image latency p50/p95 over repeated calls with one image each;
- batch throughput (images/s) predicting 256 images in batches of 32;
- cold start: a new Python process, from launch to its first result (median of 3);
- peak resident memory of that process after predicting a batch of 64 images.
With --split, accuracy on the validation rows of that split is measured for both models
(``detect-tumor``'s own training data is unknown: it may include these images).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "images"

# Peak memory is read from VmHWM: ru_maxrss survives exec on Linux and would report the
# parent's peak instead of the child's.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
OURS_CHILD = """
import sys, time
start = time.perf_counter()
from mri_tumor import Predictor
p = Predictor.load(sys.argv[3] if len(sys.argv) > 3 else None, backend=sys.argv[1])
p.predict([sys.argv[2]])
first = time.perf_counter() - start
p.predict([sys.argv[2]] * 64, batch_size=32)
print(first, PEAK / 1024)
""".replace("PEAK", PEAK_RSS)
THEIRS_CHILD = """
import sys, time
start = time.perf_counter()
from detect_tumor.detector import TumorDetector
d = TumorDetector()
d.predict(sys.argv[2])
first = time.perf_counter() - start
for _ in range(64):
    d.predict(sys.argv[2])
print(first, PEAK / 1024)
""".replace("PEAK", PEAK_RSS)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cold_start(child: str, backend: str, image: Path,
               model: Path | None = None) -> tuple[float, float]:
    """Median seconds to first result in a fresh process, and its peak RSS in MB."""
    runs = []
    for _ in range(3):
        extra = [str(model)] if model else []
        out = subprocess.run([sys.executable, "-c", child, backend, str(image), *extra],
                             capture_output=True, text=True, check=True, cwd=REPO)
        first, rss = map(float, out.stdout.split())
        runs.append((first, rss))
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def measure_ours(backend: str, images: list[bytes], image_path: Path,
                 model: Path | None = None) -> dict[str, float]:
    from mri_tumor import Predictor

    predictor = Predictor.load(model, backend=backend)
    predictor.predict(images[:8])  # warm-up
    latencies = []
    for data in images[:200]:
        start = time.perf_counter()
        predictor.predict([data])
        latencies.append((time.perf_counter() - start) * 1000)
    batch = (images * 4)[:256]
    start = time.perf_counter()
    predictor.predict(batch, batch_size=32)
    throughput = len(batch) / (time.perf_counter() - start)
    first, rss = cold_start(OURS_CHILD, backend, image_path, model)
    return {"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "images_per_s": throughput, "cold_start_s": first, "peak_rss_mb": rss}


def measure_detect_tumor(images: list[bytes], image_path: Path) -> dict[str, float]:
    from detect_tumor.detector import TumorDetector

    detector = TumorDetector()
    for data in images[:8]:
        detector.predict(data)
    latencies = []
    for data in images[:200]:
        start = time.perf_counter()
        detector.predict(data)
        latencies.append((time.perf_counter() - start) * 1000)
    batch = (images * 4)[:256]
    start = time.perf_counter()
    for data in batch:  # it has no batch API
        detector.predict(data)
    throughput = len(batch) / (time.perf_counter() - start)
    first, rss = cold_start(THEIRS_CHILD, "-", image_path)
    return {"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "images_per_s": throughput, "cold_start_s": first, "peak_rss_mb": rss}


def validation_accuracy(data_dir: Path, split: Path, limit: int | None) -> dict[str, dict]:
    """Accuracy of both models on the validation rows of a split file."""
    from detect_tumor.detector import TumorDetector

    from mri_tumor import Predictor

    rows = [r for r in csv.DictReader(split.open()) if r["split"] == "val"][:limit]
    paths = [data_dir / r["path"] for r in rows]
    truth = [r["label"] for r in rows]
    ours = Predictor.load(backend="onnx").predict(paths)
    accepted = [(r.label, t) for r, t in zip(ours, truth, strict=True) if r.status == "ok"]
    detector = TumorDetector()
    theirs = [detector.predict(str(p)).predicted_class for p in paths]
    theirs = [getattr(label, "value", str(label)).lower().replace(" ", "") for label in theirs]
    return {
        "n": len(rows),
        "ours": {"accuracy_all": float(np.mean([r.label == t for r, t in zip(ours, truth,
                                                                             strict=True)])),
                 "accuracy_accepted": float(np.mean([a == b for a, b in accepted])),
                 "rejected": sum(r.status == "rejected" for r in ours)},
        "detect_tumor": {"accuracy_all": float(np.mean([a == b for a, b in zip(theirs, truth,
                                                                              strict=True)]))},
    }


def network_latency(arch: str, size: int | None = None, repeats: int = 50) -> float:
    """p50 ms of the bare network on one image at ``size`` (default: the architecture's input
    size), torch, 2 threads. Weights are random (speed does not depend on them), so
    architectures without shipped weights (VGG16) can be compared."""
    import torch

    from mri_tumor.models import ARCHITECTURES, create_model, fuse_batch_norm

    torch.set_num_threads(2)
    size = size or ARCHITECTURES[arch].image_size
    model = fuse_batch_norm(create_model(arch, 4, pretrained=False).eval())
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            start = time.perf_counter()
            model(x)
            if i >= 5:
                times.append((time.perf_counter() - start) * 1000)
    return percentile(times, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="image folder the split's paths are under")
    parser.add_argument("--split", type=Path, help="split CSV: measure validation accuracy")
    parser.add_argument("--limit", type=int, help="at most this many validation images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--network-only", nargs="+", metavar="ARCH",
                        help="only time these bare networks (e.g. vgg16 efficientnet_lite0; "
                             "ARCH:SIZE for another input size)")
    parser.add_argument("--models", nargs="+", type=Path, metavar="DIR",
                        help="time these model folders, both backends, in one run")
    args = parser.parse_args()
    if args.models:
        image_paths = sorted(FIXTURES.glob("*/*.jpg"))
        images = [p.read_bytes() for p in image_paths] * 10
        print("| model | backend | p50 ms | p95 ms | images/s (batch) | cold start s | "
              "peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for model in args.models:
            for backend in ("onnx", "torch"):
                r = measure_ours(backend, images, image_paths[0], model)
                print(f"| {model} | {backend} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                      f"{r['images_per_s']:.0f} | {r['cold_start_s']:.2f} | "
                      f"{r['peak_rss_mb']:.0f} |", flush=True)
        return
    if args.network_only:
        for name in args.network_only:
            arch, _, size = name.partition(":")
            print(f"{name}: network only, 1 image, torch: p50 "
                  f"{network_latency(arch, int(size) if size else None):.1f} ms")
        return

    image_paths = sorted(FIXTURES.glob("*/*.jpg"))
    images = [p.read_bytes() for p in image_paths] * 10
    results: dict[str, object] = {
        "torch": measure_ours("torch", images, image_paths[0]),
        "onnx": measure_ours("onnx", images, image_paths[0]),
        "detect-tumor": measure_detect_tumor(images, image_paths[0]),
    }
    if args.split and args.data:
        results["validation"] = validation_accuracy(args.data, args.split, args.limit)
    print("| model | p50 ms | p95 ms | images/s (batch) | cold start s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name in ("torch", "onnx", "detect-tumor"):
        r = results[name]
        print(f"| {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['images_per_s']:.0f} | "
              f"{r['cold_start_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    if "validation" in results:
        print(json.dumps(results["validation"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
