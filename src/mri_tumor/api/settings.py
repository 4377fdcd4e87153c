"""Server configuration: the ``MRI_TUMOR_*`` environment variables and shared constants."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
