"""Time ``mri-tumor evaluate`` on a labelled folder, per backend.

    python benchmarks/evaluate_speed.py DATA_DIR [--backend torch onnx] [--repeat 2]
                                                 [--cores 2] [--model DIR] [--tta]

Each timed run is the whole command in a fresh process (start-up, model loading, decoding,
scoring, metrics), as a user would run it, with ``--json`` so that nothing is rendered.
An untimed warm-up run per backend comes first (it fills the disk cache and, for onnx,
the exported-model cache). The CPU seconds (user + system) of the command are printed too:
on a machine shared with other work the wall-clock time is inflated, while CPU seconds / 2
still estimates the wall-clock time on two dedicated cores.

The target is 1,311 images (the Kaggle test split) in at most 30 s on a 2-core machine.
``--cores N`` emulates an N-core machine on a bigger one: the command is pinned to N cores
and sees N as the CPU count (which sets its thread counts).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_IMAGES, TARGET_SECONDS = 1311, 30.0
# Below this, start-up (imports, model loading) dominates and a projection would mislead.
MIN_IMAGES_TO_PROJECT = 500

# Started with ``python -c``: pin to the first N allowed cores and report N as the CPU
# count, then run the command exactly as the console script does.
EMULATE_CORES = """
import os, sys
cores = int(sys.argv[1])
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
os.cpu_count = lambda: cores
sys.argv = ["mri-tumor", *sys.argv[2:]]
from mri_tumor.cli import main
raise SystemExit(main())
"""


def command(args: argparse.Namespace, backend: str) -> list[str]:
    """The command line of one timed run."""
    evaluate = ["evaluate", str(args.data_dir), "--json", "--backend", backend,
                "--batch-size", str(args.batch_size)]
    if args.model:
        evaluate += ["--model", str(args.model)]
    if args.tta:
        evaluate.append("--tta")
    if args.cores:
        return [sys.executable, "-c", EMULATE_CORES, str(args.cores), *evaluate]
    return [sys.executable, "-m", "mri_tumor", *evaluate]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str]) -> tuple[float, float, dict]:
    """Run the command; returns (wall-clock seconds, CPU seconds, its JSON result)."""
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu_seconds = _children_cpu_seconds() - cpu_before
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise SystemExit(f"evaluate failed (exit {completed.returncode}): {tail[0]}")
    return seconds, cpu_seconds, json.loads(completed.stdout)


def main() -> int:
    """Time each backend and print images/s and total seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="labelled folder (Kaggle or SARTAJ layout)")
    parser.add_argument("--backend", nargs="+", choices=("torch", "onnx"),
                        default=["torch", "onnx"])
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per backend")
    parser.add_argument("--cores", type=int, help="emulate a machine with this many cores")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", type=Path, help="model folder (default: the shipped one)")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed first run per backend")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: no such folder")
    cores = args.cores or os.cpu_count()
    print(f"{args.data_dir}: {cores} core(s){' (emulated)' if args.cores else ''}, "
          f"batch size {args.batch_size}, TTA {'on' if args.tta else 'off'}")
    print(f"{'backend':8} {'images':>6} {'seconds':>8} {'images/s':>9} {'CPU s':>7}  runs (s)")
    for backend in args.backend:
        argv = command(args, backend)
        if args.warmup:
            run_once(argv)
        times, cpu_times, n = [], [], 0
        for _ in range(args.repeat):
            seconds, cpu_seconds, result = run_once(argv)
            times.append(seconds)
            cpu_times.append(cpu_seconds)
            n = result["n"]
        best = min(times)
        print(f"{backend:8} {n:>6} {best:>8.2f} {n / best:>9.1f} {min(cpu_times):>7.1f}  "
              f"{', '.join(f'{t:.2f}' for t in times)}"
              + (f"  (median {statistics.median(times):.2f})" if len(times) > 2 else ""))
        if n >= MIN_IMAGES_TO_PROJECT:
            projected = TARGET_IMAGES / n * best
            print(f"{'':8} projected for {TARGET_IMAGES} images: {projected:.1f} s "
                  f"(target {TARGET_SECONDS:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
