"""The per-process service state: settings and the models, each with its own predictor and
inference queue.

Every offered model (the server's own model, ``mri-tumor serve --model NAME_OR_DIR`` /
``MRI_TUMOR_MODEL_DIR``, default ``default``, then the other shipped models) loads in the
background at start-up, one after the other; readiness means all of them are loaded (with
``MRI_TUMOR_PRELOAD_MODELS=0`` only the own model loads at start-up and the others on first
use). A request for a model still loading waits for it, up to ``MRI_TUMOR_LOAD_WAIT_S``
seconds, then gets 503 + Retry-After; a model that failed to load is 503 with the reason. A
request can only name a shipped model: never a folder, so no client can make the server read
files it was not configured with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mri_tumor.api.queue import InferenceQueue, QueueUnavailableError
from mri_tumor.api.settings import FEEDBACK_CONCURRENCY, Settings
from mri_tumor.card import ModelCard
from mri_tumor.inference import Predictor
from mri_tumor.inference.identity import ModelIdentity
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model

logger = logging.getLogger(__name__)
MAX_NAME_SHOWN = 80  # an unknown ?model= value is quoted back, cut to this length


class ModelNotReadyError(Exception):
    """A model is still loading, or failed to load; the message says which."""


class UnknownModelError(Exception):
    """``?model=`` names no shipped model (a path is never accepted); the message, one line,
    names the shipped models."""

    def __init__(self, name: str, own: str) -> None:
        shown = name if len(name) <= MAX_NAME_SHOWN else name[:MAX_NAME_SHOWN] + "..."
        super().__init__(f"Unknown model {shown!r}: ?model= takes the name of a shipped model "
                         f"({', '.join(SHIPPED_MODELS)}), never a path; leave it out for this "
                         f"server's model ({own}).")


class FeedbackBusyError(QueueUnavailableError):
    """As many feedback requests as allowed at once are being stored (503, Retry-After)."""

    def __init__(self) -> None:
        super().__init__("Too many confirmed cases are being stored at once; retry shortly.")


class ModelSlot:
    """One model of the server: how to load it and, once loaded, its predictor and its own
    inference queue (with its own worker thread)."""

    def __init__(self, name: str, loader: Callable[[], Predictor], settings: Settings,
                 folder: Path | None = None) -> None:
        self.name = name
        self.loader = loader
        self.settings = settings
        self.folder = folder  # where its card can be read without loading it (if known)
        self.predictor: Predictor | None = None
        self.queue: InferenceQueue | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._done = threading.Event()  # the load is over: loaded, or failed
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()
        self._claimed = False
        self._thread: threading.Thread | None = None
        self._card: ModelCard | None = None
        self._weights_sha256: str | None = None

    @property
    def ready(self) -> bool:
        """True once the model is loaded and its queue's worker runs."""
        return self._ready.is_set()

    @property
    def started(self) -> bool:
        """True once its loading has begun (or is over)."""
        return self._claimed

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def start(self) -> None:
        """Load the model in a background thread (once; later calls do nothing)."""
        if self._claim():
            self._thread = threading.Thread(target=self._load, daemon=True,
                                            name=f"mri-tumor-load-{self.name}")
            self._thread.start()

    def load(self) -> None:
        """Load the model in this thread, unless its loading has already begun."""
        if self._claim():
            self._load()

    def _load(self) -> None:
        try:
            self._load_once()
        finally:
            self._finish()

    def _load_once(self) -> None:
        started = time.perf_counter()
        try:
            predictor = self.loader()
            queue = InferenceQueue(predictor, self.settings.queue_size, self.settings.max_batch)
            queue.start()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            logger.error("model %s failed to load: %s", self.name, self.load_error)
            return
        self.predictor, self.queue = predictor, queue
        self.weights_sha256()  # hashed here, in the background, not in a request
        logger.info("model %s loaded in %.1f s (%s backend); ready", self.name,
                    time.perf_counter() - started, backend_name(predictor))
        self._ready.set()

    def _finish(self) -> None:
        """The load is over (loaded or failed): wake every request waiting for it."""
        with self._lock:
            self._done.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that event loop has closed
                loop.call_soon_threadsafe(_settle, future)

    async def wait(self, timeout: float) -> None:
        """Wait (without blocking the event loop) until the load is over, loaded or failed,
        at most ``timeout`` seconds; returns at once when it is over already."""
        if self._done.is_set() or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done.is_set():
                return
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))

    def stop(self) -> None:
        """Wait for a load in progress, then stop the worker thread (after the queued work)."""
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.queue is not None:
            self.queue.stop()

    def check_ready(self) -> None:
        """Raise :class:`ModelNotReadyError` while the model loads, or after it failed to."""
        if self.ready:
            return
        if self.load_error:
            raise ModelNotReadyError(f"The model {self.name!r} failed to load "
                                     f"({self.load_error}); see the server log.")
        raise ModelNotReadyError(f"The model {self.name!r} is still loading; retry shortly.")

    def require_ready(self) -> tuple[Predictor, InferenceQueue]:
        """The predictor and queue; :class:`ModelNotReadyError` until the model is loaded."""
        self.check_ready()
        if self.predictor is None or self.queue is None:  # set before the ready flag
            raise ModelNotReadyError(f"The model {self.name!r} is still loading; retry "
                                     "shortly.")
        return self.predictor, self.queue

    def card(self) -> ModelCard:
        """The model's card: the loaded predictor's, else read from its folder (without
        loading the model); :class:`ModelNotReadyError` when neither is there."""
        if self.predictor is not None:
            return self.predictor.card
        if self.folder is None:
            self.check_ready()
            raise ModelNotReadyError(f"The model {self.name!r} is still loading; retry "
                                     "shortly.")
        if self._card is None:
            self._card = ModelCard.load(self.folder)
        return self._card

    def weights_sha256(self) -> str | None:
        """The SHA-256 of the model's weights file (:meth:`ModelCard.weights_sha256`, as
        lineage records and the PACS results name a model), hashed once; None when no model
        folder is known or its weights cannot be read."""
        if self._weights_sha256 is None:
            folder = self.folder
            if folder is None and self.predictor is not None:
                folder = getattr(self.predictor, "model_dir", None)
            if folder is None:
                return None
            try:
                self._weights_sha256 = ModelCard.weights_sha256(Path(folder))
            except OSError as error:
                logger.warning("model %s: its weights could not be hashed: %s", self.name,
                               type(error).__name__)
                return None
        return self._weights_sha256

    def identity(self, card: ModelCard) -> ModelIdentity:
        """What names this model in results (name, card version, weights hash), as in the
        PACS results."""
        return ModelIdentity(self.name, card.version, self.weights_sha256() or "")


@dataclass
class ModelEntry:
    """One model as ``GET /v1/models`` lists it."""

    name: str
    card: ModelCard
    default: bool  # the server's own model: the one used without ?model=
    shipped: bool  # selectable with ?model=NAME
    loaded: bool
    identity: ModelIdentity  # name, card version and weights hash, as the PACS results say


class Service:
    """Per-process state: settings, the server's own model, and the other shipped models
    (each loaded once, with its own predictor and queue).

    ``loader`` loads the own model, called ``name`` (``shipped``: it is that shipped model,
    so ``?model=name`` selects it too). ``others`` maps each other shipped model's name to
    its loader; those named in ``eager`` (already loaded, say) are set up at start-up, before
    the own model; the rest after it (``settings.preload_models``, the default) or on first
    use.
    """

    def __init__(self, settings: Settings, loader: Callable[[], Predictor],
                 name: str = "default", shipped: bool = True,
                 others: Mapping[str, Callable[[], Predictor]] | None = None,
                 folder: Path | None = None, eager: Collection[str] = ()) -> None:
        self.settings = settings
        self.own = ModelSlot(name, loader, settings, folder)
        self.own_shipped = shipped and name in SHIPPED_MODELS
        self.others = {other: ModelSlot(other, load, settings, SHIPPED_MODELS.get(other))
                       for other, load in (others or {}).items()}
        self.eager = [self.others[other] for other in eager]
        self._startup: threading.Thread | None = None
        self._stopping = False
        self._feedback_lock = threading.Lock()
        self._feedback_active = 0

    # -- the own model (readiness) ------------------------------------------------------------
    @property
    def name(self) -> str:
        """The server's own model's name (used without ``?model=``)."""
        return self.own.name

    @property
    def ready(self) -> bool:
        """True once every model loaded at start-up is loaded and its queue's worker runs."""
        return all(slot.ready for slot in self.startup_slots())

    def startup_slots(self) -> list[ModelSlot]:
        """The models loaded at start-up, which readiness waits for: every offered model
        (``preload_models``), else the own model and those given loaded already."""
        if self.settings.preload_models:
            return [self.own, *self.others.values()]
        return [self.own, *self.eager]

    @property
    def predictor(self) -> Predictor | None:
        """The own model's predictor, once loaded."""
        return self.own.predictor

    @property
    def queue(self) -> InferenceQueue | None:
        """The own model's queue, once loaded."""
        return self.own.queue

    @property
    def load_error(self) -> str | None:
        """Why the own model failed to load, if it did."""
        return self.own.load_error

    def start(self) -> None:
        """Load the own model in a background thread, then, with ``preload_models`` (the
        default), the other shipped models one after the other; /readyz answers 503 until
        they are all loaded."""
        def load_all() -> None:
            for slot in self.eager:
                slot.load()
            self.own.load()
            if self.settings.preload_models:
                for slot in self.others.values():
                    if self._stopping:
                        return
                    slot.load()

        self._startup = threading.Thread(target=load_all, name="mri-tumor-load", daemon=True)
        self._startup.start()

    def stop(self) -> None:
        """Stop every model's worker thread (after its queued work)."""
        self._stopping = True
        if self._startup is not None:
            self._startup.join(timeout=60)
        for slot in (self.own, *self.others.values()):
            slot.stop()

    def check_ready(self) -> None:
        """Raise :class:`ModelNotReadyError` while a model loaded at start-up loads, or if
        one failed to (the message names it, with the reason)."""
        for slot in self.startup_slots():
            slot.check_ready()

    @contextmanager
    def feedback_slot(self) -> Iterator[None]:
        """Admit one feedback request (``POST /v1/feedback``) for the ``with`` block: at
        most ``FEEDBACK_CONCURRENCY`` at once, each holding its upload in memory, so memory
        stays bounded; :class:`FeedbackBusyError` (503 + Retry-After) beyond that."""
        with self._feedback_lock:
            if self._feedback_active >= FEEDBACK_CONCURRENCY:
                raise FeedbackBusyError
            self._feedback_active += 1
        try:
            yield
        finally:
            with self._feedback_lock:
                self._feedback_active -= 1

    # -- any model by name --------------------------------------------------------------------
    def slot(self, model: str | None = None) -> ModelSlot:
        """The model ``?model=`` names (None: the own model); :class:`UnknownModelError`
        unless it is a shipped model's name."""
        if model is None:
            return self.own
        if model in self.others:
            return self.others[model]
        if self.own_shipped and model == self.own.name:
            return self.own
        raise UnknownModelError(model, self.own.name)

    def require_ready(self, model: str | None = None) -> tuple[Predictor, InferenceQueue]:
        """The predictor and queue of the model ``?model=`` names (None: the own model).

        A shipped model not loaded yet starts loading in the background; until it is loaded
        (or if it failed to load) this raises :class:`ModelNotReadyError`.
        """
        slot = self._started(model)
        return slot.require_ready()

    async def wait_ready(self, model: str | None = None) -> tuple[Predictor, InferenceQueue]:
        """As :meth:`require_ready`, but a model still loading is waited for first (up to
        ``settings.load_wait_s`` seconds) instead of refused at once."""
        slot = self._started(model)
        await slot.wait(self.settings.load_wait_s)
        return slot.require_ready()

    def _started(self, model: str | None) -> ModelSlot:
        slot = self.slot(model)
        if not slot.started:
            if self._stopping:
                raise ModelNotReadyError("The server is shutting down; retry shortly.")
            slot.start()
        return slot

    async def wait_card(self, model: str | None = None) -> tuple[str, ModelCard]:
        """As :meth:`card`, but the own model, while it loads, is waited for first (up to
        ``settings.load_wait_s`` seconds)."""
        slot = self.slot(model)
        if slot is self.own:
            await self._started(model).wait(self.settings.load_wait_s)
        return self.card(model)

    def card(self, model: str | None = None) -> tuple[str, ModelCard]:
        """The name and card of the model ``?model=`` names (None: the own model, once
        loaded); a shipped model's card is read without loading the model."""
        slot = self.slot(model)
        if slot is self.own:
            predictor, _ = self.own.require_ready()
            return slot.name, predictor.card
        return slot.name, slot.card()

    def models(self) -> list[ModelEntry]:
        """The own model (once loaded) and every other shipped model, the own one first;
        each with its identity (the weights are hashed once per model)."""
        card = self.card()[1]
        entries = [ModelEntry(self.own.name, card, default=True, shipped=self.own_shipped,
                              loaded=True, identity=self.own.identity(card))]
        for slot in self.others.values():
            try:
                card = slot.card()
            except (OSError, ValueError, ModelNotReadyError) as error:
                logger.warning("model %s left out of the list: %s", slot.name,
                               type(error).__name__)
                continue
            entries.append(ModelEntry(slot.name, card, default=False, shipped=True,
                                      loaded=slot.ready, identity=slot.identity(card)))
        return entries


def backend_name(predictor: Predictor) -> str:
    """The name of a predictor's backend ("onnx", "torch"), as logs show it."""
    return str(getattr(getattr(predictor, "backend", None), "name", None) or "unknown")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def server_model(settings: Settings) -> tuple[str, Path, bool]:
    """The server's own model, from ``settings.model_dir`` (a shipped model's name or a model
    folder; None: ``default``): its name, its folder, and whether it is a shipped model.

    Never raises: a folder that does not exist fails when it is loaded (and /readyz says so).
    """
    try:
        name, directory = resolve_model(settings.model_dir)
    except ValueError:
        directory = Path(settings.model_dir or "")
        return directory.name or str(directory), directory, False
    for shipped, folder in SHIPPED_MODELS.items():
        if _same_folder(directory, folder):
            return shipped, folder, True
    return name, directory, False


def _same_folder(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve()
    except OSError:
        return False


def model_loader(settings: Settings, model: str | Path) -> Callable[[], Predictor]:
    """Loads ``model`` (a shipped model's name, or a model folder) once, on the configured
    backend and threads."""
    def load() -> Predictor:
        if isinstance(model, Path) and not model.is_dir():
            raise FileNotFoundError(f"{model}: no such model folder")
        return Predictor.load(model, backend=settings.backend, threads=settings.threads)
    return load
