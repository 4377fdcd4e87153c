"""The FastAPI application: the service state, the endpoints, error handlers and
``mri-tumor serve``."""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mri_tumor import __version__
from mri_tumor.api.queue import InferenceQueue
from mri_tumor.api.settings import (
    API_KEY_HEADER,
    DISCLAIMER_HEADER,
    ENV_API_KEY,
    ENV_MODEL_DIR,
    ENV_THREADS,
    LOADING_RETRY_S,
    QUEUE_FULL_RETRY_S,
    WORKER_HEALTHCHECK_S,
    Settings,
)
from mri_tumor.api.uploads import (
    FILES_FIELD,
    MAX_NAME_LENGTH,
    MULTIPART,
    check_declared_length,
    uploaded_files,
)
from mri_tumor.card import DISCLAIMER, SHIPPED_MODEL_DIR, ModelCard
from mri_tumor.inference import ERROR, Prediction, Predictor

logger = logging.getLogger(__name__)


# -- the service: model loading and readiness -------------------------------------------------
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

    def require_ready(self) -> tuple[Predictor, InferenceQueue]:
        """The predictor and queue, or 503 while the model is loading (or failed to)."""
        if not self.ready or self.predictor is None or self.queue is None:
            raise HTTPException(503, _not_ready_detail(self.load_error),
                                headers={"Retry-After": str(LOADING_RETRY_S)})
        return self.predictor, self.queue


def _not_ready_detail(load_error: str | None) -> str:
    if load_error:
        return f"The model failed to load ({load_error}); see the server log."
    return "The model is still loading; retry shortly."


def default_loader(settings: Settings) -> Callable[[], Predictor]:
    """Loads the configured model folder (default: the shipped model) once."""
    def load() -> Predictor:
        directory = settings.model_dir or SHIPPED_MODEL_DIR
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{directory}: no such model folder")
        return Predictor.load(directory, backend=settings.backend, threads=settings.threads)
    return load




def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- schema models (for the OpenAPI document) -------------------------------------------------
class PredictionOut(BaseModel):
    """One result: per file, or per frame of a multi-frame DICOM file."""

    path: str = Field(description="the uploaded file name (plus #frame for multi-frame DICOM)")
    status: str = Field(description='"ok", "rejected" (not a brain MRI slice) or "error" '
                                    "(unreadable file)")
    label: str | None = Field(description="glioma, meningioma, notumor or pituitary")
    confidence: float | None = Field(description="calibrated probability of the label")
    probabilities: dict[str, float] | None
    ood_score: float | None = Field(description="higher = less like the training MRIs")
    message: str = Field(description="why a file was rejected or unreadable, or a "
                                     "low-confidence note")


class ErrorOut(BaseModel):
    """Every error response."""

    detail: str


class HealthOut(BaseModel):
    """Liveness and readiness answers."""

    status: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed request", 401: "Missing or wrong X-API-Key",
            413: "Upload above the size limit, or too many files",
            415: "Unsupported content type",
            422: "No readable image in the request (every file is corrupt or unreadable), "
                 "or no file at all",
            503: "Model still loading, or the queue is full (see Retry-After)"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
PREDICT_REQUEST_BODY = {
    "required": True,
    "content": {
        MULTIPART: {"schema": {
            "type": "object", "required": [FILES_FIELD],
            "properties": {FILES_FIELD: {"type": "array", "items": _IMAGE_SCHEMA,
                                         "description": "one or more images"}}}},
        **{media: {"schema": _IMAGE_SCHEMA}
           for media in ("image/jpeg", "image/png", "image/bmp", "image/tiff",
                         "application/dicom", "application/octet-stream")},
    },
}

PREDICT_DESCRIPTION = f"""Classify one or more brain MRI slices.

Send images (JPEG, PNG, BMP, TIFF or DICOM) as the multipart form field `files` (several
allowed), or one image as the raw request body with its Content-Type (`?filename=` names it;
default "upload"). The answer is a list with one result per file, in upload order; a
multi-frame DICOM file gives one result per frame (`path` is `name#frame`).

Unreadable files: when *every* file of the request is unreadable the answer is 422; when at
least one is readable the answer is 200 and each unreadable file has `status: "error"` with
its reason in `message`. Images that are not brain MRI slices get `status: "rejected"`.

**{DISCLAIMER}**"""

APP_DESCRIPTION = f"""Brain MRI tumour classifier (glioma, meningioma, pituitary, no tumour).

**{DISCLAIMER}**

`/v1/*` need the `X-API-Key` header when the server sets `{ENV_API_KEY}`; `/healthz` and
`/readyz` are always open."""


# -- the application --------------------------------------------------------------------------
api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description=f"required when the server sets {ENV_API_KEY}")


def require_api_key(request: Request,
                    key: Annotated[str | None, Security(api_key_scheme)] = None) -> None:
    """401 unless the server has no key or the request carries the matching one."""
    expected = _service(request).settings.api_key
    if expected is None:
        return
    if key is None:
        raise HTTPException(401, f"Missing {API_KEY_HEADER} header: this server requires an "
                                 "API key.", headers={"WWW-Authenticate": API_KEY_HEADER})
    if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape")):
        raise HTTPException(401, f"Wrong {API_KEY_HEADER}.",
                            headers={"WWW-Authenticate": API_KEY_HEADER})


def _service(request: Request) -> Service:
    return request.app.state.service


v1 = APIRouter(prefix="/v1", dependencies=[Security(require_api_key)])


@v1.post("/predict", summary="Classify MRI slices", description=PREDICT_DESCRIPTION,
         response_model=list[PredictionOut], openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
         responses=_errors(400, 401, 413, 415, 422, 503))
async def predict(
    request: Request,
    filename: Annotated[str | None, Query(max_length=MAX_NAME_LENGTH,
                                          description="name for a raw-body upload")] = None,
) -> JSONResponse:
    """Classify the uploaded images; see the description for the rules."""
    service = _service(request)
    _, queue = service.require_ready()
    limit = service.settings.max_upload_bytes
    check_declared_length(request, limit)
    if not queue.try_reserve(1):  # refuse before reading the body when the queue is full
        raise _queue_full()
    slots = 1
    try:
        files = await uploaded_files(request, filename, limit, max(1, queue.capacity))
        if len(files) > 1:
            if not queue.try_reserve(len(files) - 1):
                raise _queue_full()
            slots = len(files)
    except BaseException:
        queue.release(slots)
        raise
    results = await queue.predict(files, slots)
    if all(result.status == ERROR for result in results):
        raise HTTPException(422, _unreadable_detail(results))
    return JSONResponse([_finite(result.to_dict()) for result in results],
                        headers={DISCLAIMER_HEADER: DISCLAIMER})


def _queue_full() -> HTTPException:
    return HTTPException(503, "The server is busy (its queue of images is full); retry shortly.",
                         headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})


def _unreadable_detail(results: list[Prediction], shown: int = 5) -> str:
    reasons = [result.message for result in results[:shown]]
    more = f"; and {len(results) - shown} more" if len(results) > shown else ""
    return "No readable image in the request: " + "; ".join(reasons) + more


@v1.get("/model", summary="The model card", responses=_errors(401, 503))
async def model_card(request: Request) -> JSONResponse:
    """The model card (architecture, classes, preprocessing, metrics) and the disclaimer."""
    predictor, _ = _service(request).require_ready()
    card = copy.deepcopy(predictor.card.to_dict())
    return JSONResponse(_finite({**card, "disclaimer": DISCLAIMER}),
                        headers={DISCLAIMER_HEADER: DISCLAIMER})


def create_app(settings: Settings | None = None, predictor: Predictor | None = None,
               loader: Callable[[], Predictor] | None = None) -> FastAPI:
    """The ASGI app. With no arguments (uvicorn's factory) it reads the ``MRI_TUMOR_*``
    environment variables and loads the model once at startup, in the background.

    ``predictor`` uses an already loaded model; ``loader`` replaces how it is loaded.
    """
    settings = settings or Settings.from_env()
    if predictor is not None:
        loaded = predictor
        loader = lambda: loaded  # noqa: E731
    service = Service(settings, loader or default_loader(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="MRI tumour classifier API", version=__version__,
                  description=APP_DESCRIPTION, lifespan=lifespan)
    app.state.service = service

    @app.get("/healthz", summary="Liveness: the process is up", response_model=HealthOut)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded",
             response_model=HealthOut, responses=_errors(503))
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"detail": _not_ready_detail(service.load_error)}, 503,
                                headers={"Retry-After": str(LOADING_RETRY_S)})
        return JSONResponse({"status": "ready"})

    app.include_router(v1)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(GuardMiddleware)
    return app


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return JSONResponse({"detail": "Invalid request: " + "; ".join(problems)}, 422)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else str(error.detail)
    return JSONResponse({"detail": detail}, error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    _log_unexpected(error)
    return JSONResponse({"detail": "Internal server error; the request was not processed."},
                        500)


def _log_unexpected(error: BaseException) -> None:
    # Type and stack only: the exception text could quote input data.
    logger.error("unexpected %s\n%s", type(error).__name__,
                 "".join(traceback.format_tb(error.__traceback__)))


class GuardMiddleware:
    """Access log without file names, query strings or headers; and a JSON 500 (never a
    traceback, never a dropped connection) for anything that escapes the handlers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:
            _log_unexpected(error)
            if status:  # the response has started: nothing more can be sent
                raise
            status = 500
            response = JSONResponse(
                {"detail": "Internal server error; the request was not processed."}, 500)
            await response(scope, receive, send)
        finally:
            logger.info("%s %s %d %.1f ms", scope.get("method"), scope.get("path"), status,
                        (time.perf_counter() - started) * 1000)


# -- the ``mri-tumor serve`` command ----------------------------------------------------------
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          model_dir: Path | str | None = None) -> int:
    """Run the API with uvicorn (``workers`` processes, each loading the model once).

    Raises ValueError for bad settings and FileNotFoundError for a missing model folder.
    """
    import uvicorn

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if not 0 < port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    directory = Path(model_dir) if model_dir else Path(os.environ.get(ENV_MODEL_DIR)
                                                           or SHIPPED_MODEL_DIR)
    ModelCard.load(directory)  # a missing or damaged model folder stops here, with its reason
    # Worker processes rebuild the app from the environment (uvicorn's factory import string).
    os.environ[ENV_MODEL_DIR] = str(directory.resolve())
    if workers > 1 and not os.environ.get(ENV_THREADS):
        os.environ[ENV_THREADS] = str(max(1, (os.cpu_count() or 1) // workers))
    Settings.from_env()  # fail here, with a clear message, on a bad variable
    print(f"MRI tumour classifier API: http://{host}:{port}/docs  ({workers} worker(s); "
          f"Ctrl+C to stop)\n{DISCLAIMER}", flush=True)
    # A worker imports torch before it can answer the supervisor's health check; on a busy
    # machine that takes longer than uvicorn's default 5 s, and it would restart workers
    # in a loop.
    uvicorn.run("mri_tumor.api:create_app", factory=True, host=host, port=port,
                workers=workers, access_log=False, log_config=_log_config(),
                server_header=False, timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)
    return 0


def _log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mri_tumor"] = {"handlers": ["default"], "level": "INFO",
                                      "propagate": False}
    return config
