"""The per-process service state: settings, the model (loaded in the background) and the
inference queue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mri_tumor.api.queue import InferenceQueue
from mri_tumor.api.settings import Settings
from mri_tumor.card import SHIPPED_MODEL_DIR
from mri_tumor.inference import Predictor

logger = logging.getLogger(__name__)


class ModelNotReadyError(Exception):
    """The model is still loading, or failed to load; the message says which."""


class Service:
    """Per-process state: settings, the model (loaded in the background) and the queue."""

    def __init__(self, settings: Settings, loader: Callable[[], Predictor]) -> None:
        self.settings = settings
        self.loader = loader
        self.predictor: Predictor | None = None
        self.queue: InferenceQueue | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._loading: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the queue's worker runs."""
        return self._ready.is_set()

    def start(self) -> None:
        """Load the model in a background thread; /readyz answers 503 until it is done."""
        self._loading = threading.Thread(target=self._load, name="mri-tumor-load", daemon=True)
        self._loading.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            predictor = self.loader()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            logger.error("model failed to load: %s", self.load_error)
            return
        queue = InferenceQueue(predictor, self.settings.queue_size, self.settings.max_batch)
        queue.start()
        self.predictor, self.queue = predictor, queue
        self._ready.set()
        logger.info("model loaded in %.1f s (%s backend); ready", time.perf_counter() - started,
                    getattr(predictor, "backend", "?"))

    def stop(self) -> None:
        """Stop the worker thread (after the queued work)."""
        if self._loading is not None:
            self._loading.join(timeout=60)
        if self.queue is not None:
            self.queue.stop()

    def check_ready(self) -> None:
        """Raise :class:`ModelNotReadyError` while the model loads, or after it failed to."""
        if self.ready:
            return
        if self.load_error:
            raise ModelNotReadyError(f"The model failed to load ({self.load_error}); see the "
                                     "server log.")
        raise ModelNotReadyError("The model is still loading; retry shortly.")

    def require_ready(self) -> tuple[Predictor, InferenceQueue]:
        """The predictor and queue; :class:`ModelNotReadyError` until the model is loaded."""
        self.check_ready()
        if self.predictor is None or self.queue is None:  # set before the ready flag
            raise ModelNotReadyError("The model is still loading; retry shortly.")
        return self.predictor, self.queue


def default_loader(settings: Settings) -> Callable[[], Predictor]:
    """Loads the configured model folder (default: the shipped model) once."""
    def load() -> Predictor:
        directory = settings.model_dir or SHIPPED_MODEL_DIR
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{directory}: no such model folder")
        return Predictor.load(directory, backend=settings.backend, threads=settings.threads)
    return load
