"""The HTTP API (FastAPI on uvicorn) for clinical systems and PACS integration.

    mri-tumor serve --host 127.0.0.1 --port 8000 --workers 2

Endpoints: ``POST /v1/predict`` (multipart field ``files`` or one raw image body),
``GET /v1/model``, ``GET /healthz``, ``GET /readyz``; OpenAPI at ``/openapi.json`` and
``/docs``. Research tool, not a diagnosis: every prediction response carries the disclaimer.

Design: request handlers only read and check the upload, in memory and size-bounded (nothing
is written to disk). The work goes to one :class:`InferenceQueue` per process: a bounded
count of waiting files and one background thread that takes every waiting request (up to
``max_batch`` files), decodes the files and runs the predictor once for all their slices,
then resolves each request's future. A full queue answers 503 with ``Retry-After`` at once,
so memory stays bounded under any load. Logs never carry file contents, DICOM headers,
file names or request headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import logging
import math
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mri_tumor import __version__
from mri_tumor.card import DISCLAIMER, SHIPPED_MODEL_DIR, ModelCard
from mri_tumor.data.reading import ImageReadError, read_frames
from mri_tumor.inference import ERROR, Prediction, Predictor

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
ENV_MODEL_DIR = "MRI_TUMOR_MODEL_DIR"
ENV_BACKEND = "MRI_TUMOR_BACKEND"
ENV_THREADS = "MRI_TUMOR_THREADS"
ENV_MAX_UPLOAD_MB = "MRI_TUMOR_MAX_UPLOAD_MB"
ENV_QUEUE_SIZE = "MRI_TUMOR_QUEUE_SIZE"
ENV_MAX_BATCH = "MRI_TUMOR_MAX_BATCH"
ENV_API_KEY = "MRI_TUMOR_API_KEY"

API_KEY_HEADER = "X-API-Key"
DISCLAIMER_HEADER = "X-Disclaimer"
QUEUE_FULL_RETRY_S = 1
LOADING_RETRY_S = 5
WORKER_HEALTHCHECK_S = 120
MULTIPART = "multipart/form-data"
FILES_FIELD = "files"
MAX_NAME_LENGTH = 255
# Declared types accepted for an image; the decoder then goes by the bytes, so a JPEG sent as
# image/png still works. application/octet-stream is what most clients send for .dcm files.
IMAGE_MEDIA_TYPES = {
    "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG",
    "image/png": "PNG", "image/x-png": "PNG",
    "image/bmp": "BMP", "image/x-bmp": "BMP", "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF", "image/tif": "TIFF",
    "application/dicom": "DICOM",
    "application/octet-stream": "any of these, recognised by content",
}
ACCEPTED_TYPES_TEXT = ("image/jpeg, image/png, image/bmp, image/tiff, application/dicom or "
                       "application/octet-stream")


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Server configuration; :meth:`from_env` reads the ``MRI_TUMOR_*`` variables."""

    model_dir: Path | None = None  # None: the shipped model
    backend: str = "onnx"  # no torch in the server process: less memory, faster start
    threads: int | None = None  # inference threads per process (None: the predictor's default)
    max_upload_bytes: int = 20 * MIB  # per request, all files together
    queue_size: int = 64  # files waiting or being predicted, over all requests
    max_batch: int = 16  # files taken into one predictor call
    api_key: str | None = None  # when set, /v1/* need a matching X-API-Key header

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from environment variables; ValueError names a bad variable."""
        env = os.environ if environ is None else environ
        model_dir = env.get(ENV_MODEL_DIR) or None
        backend = env.get(ENV_BACKEND, "onnx").strip().lower() or "onnx"
        if backend not in ("torch", "onnx"):
            raise ValueError(f"{ENV_BACKEND}={backend!r}: use torch or onnx")
        upload_mb = _env_number(env, ENV_MAX_UPLOAD_MB, 20.0, float, minimum=0.0)
        if upload_mb <= 0:
            raise ValueError(f"{ENV_MAX_UPLOAD_MB} must be a positive number of megabytes")
        threads = env.get(ENV_THREADS)
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            backend=backend,
            threads=_env_number(env, ENV_THREADS, 0, int, minimum=1) if threads else None,
            max_upload_bytes=max(1, int(upload_mb * MIB)),
            queue_size=_env_number(env, ENV_QUEUE_SIZE, 64, int, minimum=0),
            max_batch=_env_number(env, ENV_MAX_BATCH, 16, int, minimum=1),
            api_key=env.get(ENV_API_KEY) or None,
        )


def _env_number(env: Any, name: str, default: Any, kind: type, minimum: float) -> Any:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}"
                         ) from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


# -- the inference queue ----------------------------------------------------------------------
@dataclass
class _Job:
    """One request's files, waiting for the worker thread."""

    files: list[tuple[str, bytes]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Prediction]]
    slots: int
    results: list[list[Prediction | None]] = field(default_factory=list)


class InferenceQueue:
    """A bounded queue of uploaded files and one worker thread that predicts them in batches.

    ``capacity`` counts files (waiting or being predicted) over all requests; requests
    reserve their slots before they are queued and the worker frees them when done.
    """

    def __init__(self, predictor: Predictor, capacity: int, max_batch: int) -> None:
        self.predictor = predictor
        self.capacity = capacity
        self.max_batch = max_batch
        self._reserved = 0
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mri-tumor-inference",
                                        daemon=True)

    @property
    def reserved(self) -> int:
        """Files currently admitted (waiting or being predicted)."""
        return self._reserved

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the worker finish what is queued, then stop it."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def try_reserve(self, count: int) -> bool:
        """Reserve room for ``count`` files; False when the queue is full."""
        with self._lock:
            if self._stopping or self._reserved + count > self.capacity:
                return False
            self._reserved += count
            return True

    def release(self, count: int) -> None:
        """Give back slots reserved by a request that was not queued after all."""
        with self._lock:
            self._reserved = max(0, self._reserved - count)

    async def predict(self, files: list[tuple[str, bytes]], slots: int) -> list[Prediction]:
        """Queue ``(name, bytes)`` files (their ``slots`` already reserved) and await the
        results: one per file, or one per frame of a multi-frame DICOM file, in order.

        The slots belong to the queue from here on; the worker frees them.
        """
        loop = asyncio.get_running_loop()
        job = _Job(files, loop, loop.create_future(), slots)
        with self._wakeup:
            if self._stopping:  # the worker may be gone: nobody would answer
                self._reserved = max(0, self._reserved - slots)
                raise HTTPException(503, "The server is shutting down; retry shortly.",
                                    headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})
            self._jobs.append(job)
            self._wakeup.notify()
        return await job.future

    # -- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._jobs and not self._stopping:
                    self._wakeup.wait()
                if not self._jobs:
                    return
                batch = [self._jobs.popleft()]
                count = len(batch[0].files)
                while self._jobs and count + len(self._jobs[0].files) <= self.max_batch:
                    count += len(self._jobs[0].files)
                    batch.append(self._jobs.popleft())
            try:
                self._process(batch)
            except BaseException as error:  # never let the worker die; fail just this batch
                logger.error("inference batch failed: %s\n%s", type(error).__name__,
                             "".join(traceback.format_tb(error.__traceback__)))
                for job in batch:
                    _resolve(job, error=RuntimeError("inference failed"))
            finally:
                for job in batch:
                    job.files = []  # drop the upload bytes now, not when the request ends
                    self.release(job.slots)

    def _process(self, batch: list[_Job]) -> None:
        pending: list[tuple[list[Prediction | None], int, Any]] = []  # (slots, index, frame)
        for job in batch:
            if job.future.cancelled():  # the client went away while it waited
                continue
            for name, data in job.files:
                per_file = self._decode(name, data, pending)
                job.results.append(per_file)
        for start in range(0, len(pending), self.max_batch):
            chunk = pending[start:start + self.max_batch]
            for (slots, index, _), prediction in zip(chunk, self._predict([f for *_, f in chunk]),
                                                     strict=True):
                slots[index] = prediction
        for job in batch:
            if not job.future.cancelled():
                _resolve(job, [p for per_file in job.results for p in per_file if p is not None])

    def _decode(self, name: str, data: bytes,
                pending: list[tuple[list[Prediction | None], int, Any]]
                ) -> list[Prediction | None]:
        try:
            frames = read_frames(data, name)
        except ImageReadError as error:
            return [Prediction(name, ERROR, message=str(error))]
        except Exception as error:  # any decoder failure is a bad file, never a server error
            logger.warning("decoding an upload failed: %s", type(error).__name__)
            return [Prediction(name, ERROR, message=f"{name}: cannot read this file")]
        if not frames:
            return [Prediction(name, ERROR, message=f"{name}: holds no image")]
        slots: list[Prediction | None] = [None] * len(frames)
        pending.extend((slots, index, frame) for index, frame in enumerate(frames))
        return slots

    def _predict(self, frames: Sequence[Any]) -> list[Prediction]:
        try:
            return self.predictor.predict_frames(frames)
        except Exception as error:
            if len(frames) == 1:
                logger.warning("prediction failed for one image: %s", type(error).__name__)
                return [Prediction(frames[0].name, ERROR,
                                   message=f"{frames[0].name}: this image could not be analysed")]
        # One bad frame must not fail the others: retry one by one.
        return [p for frame in frames for p in self._predict([frame])]


def _resolve(job: _Job, results: list[Prediction] | None = None,
             error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(results or [])

    with contextlib.suppress(RuntimeError):  # the event loop has closed (shutting down)
        job.loop.call_soon_threadsafe(settle)


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


# -- request reading --------------------------------------------------------------------------
def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise HTTPException(400, "The Content-Length header is not a number.") from None
    if length > limit:
        raise HTTPException(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return (f"The upload is larger than the {limit / MIB:g} MB limit per request "
            f"(set by {ENV_MAX_UPLOAD_MB}); send fewer or smaller files per request.")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body in memory, refusing with 413 as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, _too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)


def parse_multipart(body: bytes, content_type: str, max_parts: int
                    ) -> list[tuple[str | None, str | None, str, bytes]]:
    """Split a multipart/form-data body in memory.

    Returns ``(field name, file name, part media type, bytes)`` per part. Raises
    HTTPException 400 for a malformed body and 413 for more than ``max_parts`` parts.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "The multipart/form-data Content-Type has no boundary.")
    parts: list[_Part] = []
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise HTTPException(413, _too_many_files(max_parts))
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers.append((bytes(header_name).lower(), bytes(header_value)))
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.append(data[start:end])

    callbacks: Any = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                      "on_header_value": on_header_value, "on_header_end": on_header_end,
                      "on_part_data": on_part_data}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise HTTPException(400, f"Malformed multipart/form-data body ({type(error).__name__}); "
                                 f"send images in the form field '{FILES_FIELD}'.") from None
    if body.strip() and not parts:
        raise HTTPException(400, "Malformed multipart/form-data body: no part found; check "
                                 "the boundary.")
    out = []
    for part in parts:
        headers = dict(part.headers)
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        field_name = _decode_header(disposition.get(b"name"))
        file_name = _decode_header(disposition.get(b"filename"))
        media = _media_type(headers.get(b"content-type", b"").decode("latin-1"))
        out.append((field_name, file_name, media, b"".join(part.data)))
    return out


def _decode_header(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _too_many_files(limit: int) -> str:
    return (f"Too many files in one request: the limit is {limit} (the queue size, "
            f"{ENV_QUEUE_SIZE}); split the upload into several requests.")


def _check_media_type(media: str, name: str) -> None:
    if media and media not in IMAGE_MEDIA_TYPES:
        raise HTTPException(415, f"{name}: unsupported content type '{media}'; send "
                                 f"{ACCEPTED_TYPES_TEXT}.")


def _clean_name(name: str | None, fallback: str) -> str:
    name = (name or "").strip().replace("\x00", "")
    return name[:MAX_NAME_LENGTH] if name else fallback


async def _uploaded_files(request: Request, filename: str | None, limit: int, max_files: int
                          ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for each uploaded file, checked for type and size; in memory only."""
    content_type = request.headers.get("content-type")
    media = _media_type(content_type)
    if not media:
        raise HTTPException(415, "The request has no Content-Type: send multipart/form-data "
                                 f"with the field '{FILES_FIELD}', or one image as the body with "
                                 f"its type ({ACCEPTED_TYPES_TEXT}).")
    if media != MULTIPART:
        _check_media_type(media, "request body")
        body = await _read_body(request, limit)
        if not body:
            raise HTTPException(422, "The request body is empty: send an image.")
        default = "upload.dcm" if media == "application/dicom" else "upload"
        return [(_clean_name(filename, default), body)]

    body = await _read_body(request, limit)
    files: list[tuple[str, bytes]] = []
    for field_name, file_name, part_media, data in parse_multipart(body, content_type or "",
                                                                    max_parts=max_files):
        if field_name != FILES_FIELD:
            raise HTTPException(422, f"Unexpected form field '{_clean_name(field_name, '')}': "
                                     f"send images in the field '{FILES_FIELD}'.")
        name = _clean_name(file_name, f"file-{len(files)}")
        _check_media_type(part_media, name)
        files.append((name, data))
    if not files:
        raise HTTPException(422, f"No file in the request: send one or more images in the "
                                 f"multipart form field '{FILES_FIELD}'.")
    return files


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
    _check_declared_length(request, limit)
    if not queue.try_reserve(1):  # refuse before reading the body when the queue is full
        raise _queue_full()
    slots = 1
    try:
        files = await _uploaded_files(request, filename, limit, max(1, queue.capacity))
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


__all__ = ["InferenceQueue", "Settings", "create_app", "serve"]
