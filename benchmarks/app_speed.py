"""Speed of the web app: start-up, and one prediction with its Grad-CAM heat map.

    python benchmarks/app_speed.py [--repeat 5] [--cores 2] [--browser] [--json] [--check]

(a) seconds from launching ``mri-tumor app`` to the server answering HTTP 200 on
    ``/_stcore/health`` (fresh process, on a free port, stopped afterwards);
    with ``--browser``, also the seconds until the page is usable in headless Chromium
    (file uploader shown, the model loaded by the first script run), when /usr/bin/chromium
    exists;
(b) in this process, after one warm-up call: ``predictor.predict`` + ``explain.gradcam`` on
    a bundled sample, and the app's whole per-upload path (``app.analyse_upload``: decode,
    predict, display copy, heat map), median and worst of ``--repeat`` runs.

Targets on 2 CPU cores: page usable within 5 s of launch; one prediction with Grad-CAM
within 1 s. ``--cores N`` pins this process and the app to N cores. ``--check`` exits 1 when
a target is missed.

Next to each wall-clock time the CPU seconds spent are printed. On a machine busy with other
work (a training run, say) the wall-clock times grow with the load while the CPU seconds do
not; start-up is mostly single-threaded, so its CPU seconds are close to the wall-clock time
it would take on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TARGET_STARTUP_SECONDS, TARGET_PREDICT_SECONDS = 5.0, 1.0
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "mri_tumor" / "samples" / "glioma.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("mri-tumor")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "mri_tumor"]
    return [*base, "app", "--port", str(port)]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float,
                 health: str = "/_stcore/health") -> None:
    """Return once ``url + health`` answers 200; RuntimeError if the process exits first,
    TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}{health}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the app did not answer on {url} within {timeout:.0f} s")


def stop_app(process: subprocess.Popen) -> None:
    """Stop the app and the streamlit child it started (their own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _group_cpu_seconds(group: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while being read
        # After the command name: state, ppid, pgrp, ..., utime (12th), stime (13th).
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def measure_startup(timeout: float, browser: bool) -> dict[str, float | None]:
    """Launch `mri-tumor app`; seconds to /_stcore/health = 200 (and to a usable page)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    process = subprocess.Popen(app_command(port), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    result: dict[str, float | None] = {"health_s": None, "health_cpu_s": None,
                                       "page_usable_s": None}
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with status {process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                    if response.status == 200:
                        result["health_s"] = time.perf_counter() - start
                        result["health_cpu_s"] = _group_cpu_seconds(process.pid)
                        break
            except OSError:
                time.sleep(0.05)
        if result["health_s"] is not None and browser and CHROMIUM.exists():
            result["page_usable_s"] = _seconds_to_usable_page(url, start, timeout)
    finally:
        stop_app(process)
    return result


def _seconds_to_usable_page(url: str, start: float, timeout: float) -> float:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            # The uploader appears once the first script run has loaded the model.
            page.wait_for_selector('[data-testid="stFileUploader"]',
                                   timeout=timeout * 1000)
            page.wait_for_selector("text=Try an example", timeout=timeout * 1000)
            return time.perf_counter() - start
        finally:
            browser.close()


def measure_prediction(repeat: int) -> dict[str, float]:
    """Median and worst seconds of predict + gradcam, and of the app's per-upload path."""
    from mri_tumor import Predictor
    from mri_tumor.app.page import analyse_upload
    from mri_tumor.data import read_image
    from mri_tumor.explain.gradcam import gradcam

    started = time.perf_counter()
    predictor = Predictor.load()
    load_s = time.perf_counter() - started
    data = SAMPLE.read_bytes()

    def predict_and_explain() -> None:
        result = predictor.predict([data], names=[SAMPLE.name])[0]
        gradcam(predictor, read_image(data), predictor.class_names.index(result.label))

    def app_path() -> None:
        analyse_upload(predictor, SAMPLE.name, data)

    timings = {}
    for name, call in (("predict_gradcam", predict_and_explain), ("app_analyse", app_path)):
        call()  # warm-up: first-call allocations and lazy imports
        seconds, cpu_seconds = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
        timings[f"{name}_median_s"] = statistics.median(seconds)
        timings[f"{name}_max_s"] = max(seconds)
        timings[f"{name}_cpu_s"] = statistics.median(cpu_seconds)
    return {"model_load_s": load_s, **timings}


def main() -> int:
    """Run both measurements and print them (or one JSON object)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed predictions (default 5)")
    parser.add_argument("--cores", type=int, help="pin this process and the app to N cores")
    parser.add_argument("--timeout", type=float, default=120.0, help="start-up limit, s")
    parser.add_argument("--browser", action="store_true",
                        help="also time a usable page in headless Chromium")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.cores:
        cores = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cores)  # inherited by the app started below

    startup = measure_startup(args.timeout, args.browser)
    prediction = measure_prediction(args.repeat)
    results = {"cpu_cores": len(os.sched_getaffinity(0)), **startup, **prediction}
    usable = results["page_usable_s"] or results["health_s"]
    passed = (usable is not None and usable <= TARGET_STARTUP_SECONDS
              and results["predict_gradcam_median_s"] <= TARGET_PREDICT_SECONDS)
    if args.json:
        print(json.dumps({**results, "targets_met": passed}))
    else:
        def show(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f} s"

        print(f"CPU cores used:                         {results['cpu_cores']}")
        print(f"launch -> /_stcore/health 200:          {show(results['health_s'])}"
              f"   (target <= {TARGET_STARTUP_SECONDS:.0f} s; "
              f"CPU {show(results['health_cpu_s'])})")
        if args.browser:
            print(f"launch -> page usable (Chromium):       {show(results['page_usable_s'])}")
        print(f"model load (in-process):                {show(results['model_load_s'])}")
        print(f"predict + gradcam, median / worst:      "
              f"{show(results['predict_gradcam_median_s'])} / "
              f"{show(results['predict_gradcam_max_s'])}"
              f"   (target <= {TARGET_PREDICT_SECONDS:.0f} s; "
              f"CPU {show(results['predict_gradcam_cpu_s'])})")
        print(f"app per-upload path, median / worst:    "
              f"{show(results['app_analyse_median_s'])} / "
              f"{show(results['app_analyse_max_s'])}"
              f"   (CPU {show(results['app_analyse_cpu_s'])})")
        print("targets met" if passed else "TARGET MISSED")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
