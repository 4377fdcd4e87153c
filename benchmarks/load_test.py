"""Bounded load test of the HTTP API, on this machine only (127.0.0.1).

    python benchmarks/load_test.py                    # start `mri-tumor serve`, 60 s, 16 clients
    python benchmarks/load_test.py --duration 5 --json
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --pid 1234   # a running server

It starts the server on a free port (unless --url is given), waits for /readyz, warms up,
then runs ``--clients`` concurrent asyncio/httpx clients for ``--duration`` seconds, each
posting one real MRI image per request (the test fixtures and bundled samples). It stops by
itself and prints requests/s, latency percentiles, the error count and the server's resident
memory (VmRSS of the server and its worker processes) after warm-up and at the end, and
the CPU cores the server and this process (the clients) used during the timed run.

Targets on 2 CPU cores: >= 100 requests/s, p99 <= 250 ms, no errors, RSS growth < 50 MB.
``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIRS = (ROOT / "tests" / "fixtures" / "images", ROOT / "src" / "mri_tumor" / "samples")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
TARGETS = {"requests_per_s": 100.0, "p99_ms": 250.0, "errors": 0, "rss_growth_mb": 50.0}


@dataclass
class Report:
    """What one run measured."""

    url: str
    clients: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    rss_ready_mb: float | None = None  # once the model is loaded
    rss_start_mb: float | None = None  # after warm-up
    rss_end_mb: float | None = None
    rss_growth_mb: float | None = None
    server_alive: bool | None = None
    server_cpu_cores: float | None = None  # CPU seconds per second of the timed run
    client_cpu_cores: float | None = None  # this process: the 16 httpx clients
    targets_met: dict[str, bool] = field(default_factory=dict)


def load_images() -> list[tuple[str, bytes]]:
    """Every fixture and sample JPEG, as (name, bytes)."""
    paths = sorted(p for d in IMAGE_DIRS for p in d.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no images found under {', '.join(map(str, IMAGE_DIRS))}")
    return [(p.name, p.read_bytes()) for p in paths]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn workers)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in found or not Path(f"/proc/{current}").exists():
            continue
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and all its descendants (uvicorn workers), in MB."""
    total_kb = 0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1) if total_kb else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far (from /proc)."""
    ticks = 0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def start_server(port: int, workers: int, model: Path | None, log: Path) -> subprocess.Popen:
    """``mri-tumor serve`` on 127.0.0.1:port in its own process group."""
    script = shutil.which("mri-tumor", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "mri_tumor"]
    command += ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if model:
        command += ["--model", str(model)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_server(process: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop) to the group we started, then SIGKILL if needed."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


async def wait_ready(client: httpx.AsyncClient, process: subprocess.Popen | None,
                     timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


async def post_one(client: httpx.AsyncClient, name: str, data: bytes, raw: bool
                   ) -> str | None:
    """One prediction request; returns None on success or a short error kind."""
    try:
        if raw:
            response = await client.post("/v1/predict", params={"filename": name}, content=data,
                                         headers={"Content-Type": "image/jpeg"})
        else:
            response = await client.post("/v1/predict",
                                         files=[("files", (name, data, "image/jpeg"))])
    except httpx.HTTPError as error:
        return type(error).__name__
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    results = response.json()
    if len(results) != 1 or results[0]["status"] == "error" or results[0]["path"] != name:
        return "bad result"
    return None


async def run_clients(client: httpx.AsyncClient, images: list[tuple[str, bytes]], clients: int,
                      duration: float, raw: bool) -> tuple[list[float], dict[str, int], float]:
    """``clients`` loops posting images until ``duration`` has passed."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + duration

    async def loop(offset: int) -> None:
        index = offset
        while time.perf_counter() < deadline:
            name, data = images[index % len(images)]
            index += clients
            begin = time.perf_counter()
            error = await post_one(client, name, data, raw)
            latencies.append((time.perf_counter() - begin) * 1000)
            if error:
                errors[error] = errors.get(error, 0) + 1

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return latencies, errors, time.perf_counter() - started


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def measure(args: argparse.Namespace, url: str, pid: int | None,
                  process: subprocess.Popen | None) -> Report:
    images = load_images()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    report = Report(url=url, clients=args.clients, duration_s=args.duration)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0,
                                 headers=headers) as client:
        await wait_ready(client, process, args.ready_timeout)
        report.rss_ready_mb = rss_mb(pid) if pid else None
        if args.warmup > 0:
            await run_clients(client, images, args.clients, args.warmup, args.raw)
        report.rss_start_mb = rss_mb(pid) if pid else None
        server_cpu, client_cpu = cpu_seconds(pid) if pid else 0.0, time.process_time()
        latencies, errors, elapsed = await run_clients(client, images, args.clients,
                                                       args.duration, args.raw)
        if pid:
            report.server_cpu_cores = round((cpu_seconds(pid) - server_cpu) / elapsed, 2)
        report.client_cpu_cores = round((time.process_time() - client_cpu) / elapsed, 2)
    report.rss_end_mb = rss_mb(pid) if pid else None
    ordered = sorted(latencies)
    report.requests = len(latencies)
    report.errors = sum(errors.values())
    report.error_kinds = errors
    report.requests_per_s = round(len(latencies) / elapsed, 1) if elapsed else 0.0
    report.p50_ms, report.p95_ms, report.p99_ms = (round(percentile(ordered, q), 1)
                                                   for q in (50, 95, 99))
    report.max_ms = round(ordered[-1], 1) if ordered else 0.0
    if report.rss_start_mb is not None and report.rss_end_mb is not None:
        report.rss_growth_mb = round(report.rss_end_mb - report.rss_start_mb, 1)
    if process is not None:
        report.server_alive = process.poll() is None
    report.targets_met = {
        "requests_per_s": report.requests_per_s >= TARGETS["requests_per_s"],
        "p99_ms": report.p99_ms <= TARGETS["p99_ms"],
        "errors": report.errors <= TARGETS["errors"],
        "rss_growth_mb": (report.rss_growth_mb is not None
                          and report.rss_growth_mb < TARGETS["rss_growth_mb"]),
    }
    return report


def print_report(report: Report) -> None:
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} MB"

    verdict = {True: "ok", False: "MISSED"}
    met = report.targets_met
    print(f"server          {report.url}  ({report.clients} clients, {report.duration_s:g} s)")
    print(f"requests        {report.requests}")
    print(f"throughput      {report.requests_per_s:.1f} req/s   "
          f"[target >= {TARGETS['requests_per_s']:g}: {verdict[met['requests_per_s']]}]")
    print(f"latency         p50 {report.p50_ms:.1f} ms  p95 {report.p95_ms:.1f} ms  "
          f"p99 {report.p99_ms:.1f} ms  max {report.max_ms:.1f} ms   "
          f"[p99 target <= {TARGETS['p99_ms']:g} ms: {verdict[met['p99_ms']]}]")
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report.error_kinds.items()))
    print(f"errors          {report.errors}{f' ({kinds})' if kinds else ''}   "
          f"[target 0: {verdict[met['errors']]}]")
    growth = "n/a" if report.rss_growth_mb is None else f"{report.rss_growth_mb:+.1f} MB"
    print(f"server RSS      ready {mb(report.rss_ready_mb)}, start {mb(report.rss_start_mb)}, "
          f"end {mb(report.rss_end_mb)}, growth {growth}   "
          f"[target < {TARGETS['rss_growth_mb']:g} MB: {verdict[met['rss_growth_mb']]}]")
    server_cores = "n/a" if report.server_cpu_cores is None else f"{report.server_cpu_cores:.2f}"
    print(f"CPU cores used  server {server_cores}, load-test clients {report.client_cpu_cores}")
    if report.server_alive is not None:
        print(f"server alive    {'yes' if report.server_alive else 'NO'}")


def check_local(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"--url must point at 127.0.0.1 (this machine), not {url!r}")
    return url.rstrip("/")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of load before measuring (default 5)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    p.add_argument("--url", help="use a running server on 127.0.0.1 instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for its memory")
    p.add_argument("--api-key", default=os.environ.get("MRI_TUMOR_API_KEY"),
                   help="X-API-Key to send (default: $MRI_TUMOR_API_KEY)")
    p.add_argument("--raw", action="store_true", help="raw image bodies instead of multipart")
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.workers < 1 or args.warmup < 0:
        p.error("--duration, --clients and --workers must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test; exit status 1 with --check when a target is missed."""
    args = parse_args(argv)
    process = None
    log = Path(tempfile.mkstemp(prefix="mri-tumor-serve-", suffix=".log")[1])
    try:
        if args.url:
            url, pid = check_local(args.url), args.pid
        else:
            port = free_port()
            process = start_server(port, args.workers, args.model, log)
            url, pid = f"http://127.0.0.1:{port}", process.pid
        try:
            report = asyncio.run(measure(args, url, pid, process))
        except (RuntimeError, KeyboardInterrupt) as error:
            print(f"load test stopped: {error or 'interrupted'}", file=sys.stderr)
            if process is not None:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 2
    finally:
        if process is not None:
            stop_server(process)
        log.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print_report(report)
    return 1 if args.check and not all(report.targets_met.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
