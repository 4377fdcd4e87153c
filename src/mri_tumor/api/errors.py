"""Error handling: every error is ``{"detail": "one clear string"}``, never a traceback; and
the access-log middleware."""

from __future__ import annotations

import logging
import time
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mri_tumor.api.queue import QueueUnavailableError
from mri_tumor.api.service import ModelNotReadyError, UnknownModelError
from mri_tumor.api.settings import LOADING_RETRY_S, QUEUE_FULL_RETRY_S

logger = logging.getLogger(__name__)
INTERNAL_ERROR = "Internal server error; the request was not processed."


def install_error_handling(app: FastAPI) -> None:
    """Add the exception handlers and the guard middleware to ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueueUnavailableError, queue_unavailable)
    app.add_exception_handler(ModelNotReadyError, not_ready)
    app.add_exception_handler(UnknownModelError, unknown_model)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(GuardMiddleware)


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with the first few problems in one string (not FastAPI's list of objects)."""
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return JSONResponse({"detail": "Invalid request: " + "; ".join(problems)}, 422)


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """An HTTPException's status, headers and detail (always a string)."""
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else str(error.detail)
    return JSONResponse({"detail": detail}, error.status_code, headers=error.headers)


async def queue_unavailable(request: Request, error: Exception) -> JSONResponse:
    """503 with Retry-After: the queue is full or shutting down."""
    return JSONResponse({"detail": str(error)}, 503,
                        headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})


async def not_ready(request: Request, error: Exception) -> JSONResponse:
    """503 with Retry-After: the model is loading (or failed to load)."""
    return JSONResponse({"detail": str(error)}, 503,
                        headers={"Retry-After": str(LOADING_RETRY_S)})


async def unknown_model(request: Request, error: Exception) -> JSONResponse:
    """404: ``?model=`` names no shipped model; the detail names them, in one line."""
    return JSONResponse({"detail": str(error)}, 404)


async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """500 without details (this includes a response that failed its model's validation)."""
    log_unexpected(error)
    return JSONResponse({"detail": INTERNAL_ERROR}, 500)


def log_unexpected(error: BaseException) -> None:
    """Log an unexpected exception's type and stack."""
    # Not the message: the exception text could quote input data.
    logger.error("unexpected %s\n%s", type(error).__name__,
                 "".join(traceback.format_tb(error.__traceback__)))


class GuardMiddleware:
    """Access log without file names, query strings or headers; and a JSON 500 (never a
    traceback, never a dropped connection) for anything that escapes the handlers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request, noting its status for the access log."""
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
            log_unexpected(error)
            if status:  # the response has started: nothing more can be sent
                raise
            status = 500
            await JSONResponse({"detail": INTERNAL_ERROR}, 500)(scope, receive, send)
        finally:
            logger.info("%s %s %d %.1f ms", scope.get("method"), scope.get("path"), status,
                        (time.perf_counter() - started) * 1000)
