"""Server configuration: the ``MRI_TUMOR_*`` environment variables and shared constants."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from mri_tumor.data.reading import MAX_UPLOAD_MB, MIB
from mri_tumor.data.site import SITE_DATA_ENV
from mri_tumor.inference import BACKENDS, DEFAULT_BACKEND

ENV_PREFIX = "MRI_TUMOR_"
ENV_MODEL_DIR = "MRI_TUMOR_MODEL_DIR"
ENV_BACKEND = "MRI_TUMOR_BACKEND"
ENV_THREADS = "MRI_TUMOR_THREADS"
ENV_MAX_UPLOAD_MB = "MRI_TUMOR_MAX_UPLOAD_MB"
ENV_QUEUE_SIZE = "MRI_TUMOR_QUEUE_SIZE"
ENV_MAX_BATCH = "MRI_TUMOR_MAX_BATCH"
ENV_API_KEY = "MRI_TUMOR_API_KEY"
ENV_PRELOAD_MODELS = "MRI_TUMOR_PRELOAD_MODELS"
ENV_LOAD_WAIT_S = "MRI_TUMOR_LOAD_WAIT_S"
ENV_SITE_DATA = SITE_DATA_ENV  # MRI_TUMOR_SITE_DATA: where confirmed cases are stored

API_KEY_HEADER = "X-API-Key"
DISCLAIMER_HEADER = "X-Disclaimer"
QUEUE_FULL_RETRY_S = 1
LOADING_RETRY_S = 5
WORKER_HEALTHCHECK_S = 120
FEEDBACK_CONCURRENCY = 4  # feedback requests read and stored at once (each holds its upload)


class Settings(BaseSettings):
    """Server configuration. ``Settings()`` reads the ``MRI_TUMOR_*`` variables (keyword
    arguments win over them); :meth:`from_env` also reads them from a given mapping and
    turns a bad value into a one-line ValueError that names the variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="ignore", frozen=True)

    # The server's own model (used without ?model=): a shipped model's name (default, types)
    # or a model folder; None: default.
    model_dir: Path | None = None
    # The ONNX backend keeps torch out of the server process: less memory, faster start.
    backend: str = DEFAULT_BACKEND
    threads: int | None = Field(None, ge=1)  # per process (None: the predictor's default)
    max_upload_mb: float = Field(MAX_UPLOAD_MB, gt=0, allow_inf_nan=False)  # per request
    queue_size: int = Field(64, ge=0)  # files waiting or being predicted, over all requests
    max_batch: int = Field(16, ge=1)  # files taken into one predictor call
    api_key: str | None = None  # when set, /v1/* need a matching X-API-Key header
    # Load every offered model at start-up (the own one first), and be ready only once all
    # are loaded; False: the other shipped models load on first use, readiness is the own one.
    preload_models: bool = True
    # How long a request for a model still loading waits for it before 503 + Retry-After.
    load_wait_s: float = Field(60.0, ge=0, allow_inf_nan=False)
    # The site-data folder: POST /v1/feedback stores confirmed cases there (None: it is off).
    site_data: Path | None = None

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        name = value.strip().lower() or DEFAULT_BACKEND
        if name not in BACKENDS:
            raise ValueError(f"use {' or '.join(sorted(BACKENDS))}")
        return name

    @field_validator("site_data", mode="before")
    @classmethod
    def _folder_or_none(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            return Path(value).expanduser() if value else None
        return value

    @property
    def max_upload_bytes(self) -> int:
        """The per-request upload limit in bytes (1 MB = 1,048,576 bytes)."""
        return max(1, int(self.max_upload_mb * MIB))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: the process environment) alone; ValueError
        names a bad variable, in one line."""
        values = _EnvMapping(cls, os.environ if environ is None else environ)()
        # Every field as a keyword argument: no other source (os.environ) fills a gap.
        defaults = {name: info.get_default(call_default_factory=True)
                    for name, info in cls.model_fields.items()}
        try:
            return cls(**{**defaults, **values})
        except ValidationError as error:
            raise ValueError(_one_line(error, values)) from None


class _EnvMapping(EnvSettingsSource):
    """The settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value.strip() for name, value in self._environ.items()
                if name.upper().startswith(ENV_PREFIX) and value.strip()}


def _one_line(error: ValidationError, values: Mapping[str, object]) -> str:
    """``MRI_TUMOR_X='raw': reason`` for the first bad variable."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    reason = first["msg"].removeprefix("Value error, ")
    return f"{ENV_PREFIX}{field.upper()}={values.get(field)!r}: {reason}"
