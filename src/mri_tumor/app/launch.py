"""``mri-tumor app``: run the Streamlit page (``app/page.py``) as a child process and stop it
cleanly on Ctrl+C or SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.card import ModelCard
from mri_tumor.inference.model_folder import resolve_model

if TYPE_CHECKING:  # torch is imported only when a model is needed (fast `mri-tumor app` start)
    pass


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
    script = Path(__file__).with_name("page.py")
    command = [sys.executable, "-m", "streamlit", "run", str(script),
               "--server.port", str(port), "--server.address", host,
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               # No "Deploy" button or developer menu, from the first session on (the page's
               # own st.set_option comes too late for the session that starts the server).
               "--client.toolbarMode", "minimal"]
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
