"""The FastAPI application (:func:`create_app`) and ``mri-tumor serve`` (:func:`serve`)."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Security

from mri_tumor import __version__
from mri_tumor.api.docs import install_docs
from mri_tumor.api.errors import install_error_handling
from mri_tumor.api.protocol import PROTOCOL_PATH
from mri_tumor.api.routers import feedback, health, model, predict, scans, segment
from mri_tumor.api.schemas import APP_DESCRIPTION
from mri_tumor.api.security import require_api_key
from mri_tumor.api.service import Service, model_loader, server_model
from mri_tumor.api.settings import ENV_MODEL_DIR, ENV_THREADS, WORKER_HEALTHCHECK_S, Settings
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.inference import Predictor
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model


def create_app(settings: Settings | None = None, predictor: Predictor | None = None,
               loader: Callable[[], Predictor] | None = None,
               models: Mapping[str, Predictor | Callable[[], Predictor]] | None = None
               ) -> FastAPI:
    """The ASGI app. With no arguments (uvicorn's factory) it reads the ``MRI_TUMOR_*``
    environment variables and loads the server's model, then the other shipped models, once
    at startup, in the background (``MRI_TUMOR_PRELOAD_MODELS=0``: the others on first use).

    ``predictor`` uses an already loaded model as the server's model (named by its
    ``name``); ``loader`` replaces how the server's model is loaded. ``models`` gives other
    shipped models by name, each already loaded or as a function that loads it.
    """
    settings = settings or Settings.from_env()
    name, folder, shipped = server_model(settings)
    served: Path | None = folder
    if predictor is not None:
        loader = _already_loaded(predictor)
        name, served, shipped = predictor.name, None, predictor.name in SHIPPED_MODELS
    others = {other: model_loader(settings, other) for other in SHIPPED_MODELS
              if not (shipped and other == name)}
    eager = []  # given already loaded: set up at start-up
    for other, given in (models or {}).items():
        if other not in others:
            raise ValueError(f"{other!r} is not a shipped model other than the server's own "
                             f"({', '.join(others)})")
        if callable(given):
            others[other] = given
        else:
            others[other] = _already_loaded(given)
            eager.append(other)
    if loader is None:
        loader = model_loader(settings, name if shipped else folder)
    service = Service(settings, loader, name, shipped, others, served, eager)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="MRI tumour classifier API", version=__version__,
                  description=APP_DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.service = service
    app.include_router(health.router)
    for router in (predict.router, scans.router, segment.router, model.router,
                   feedback.router):
        app.include_router(router, prefix="/v1", dependencies=[Security(require_api_key)])
    install_docs(app)
    install_error_handling(app)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          model_dir: Path | str | None = None) -> int:
    """Run the API with uvicorn (``workers`` processes, each loading the model once).

    ``model_dir`` is the server's model: a shipped model's name or a model folder (default:
    ``MRI_TUMOR_MODEL_DIR``, else ``default``). Raises ValueError for bad settings or an
    unknown model and FileNotFoundError for a model folder without a card.
    """
    import uvicorn

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if not 0 < port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    name, directory = resolve_model(model_dir or os.environ.get(ENV_MODEL_DIR) or None)
    ModelCard.load(directory)  # a missing or damaged model folder stops here, with its reason
    # Worker processes rebuild the app from the environment (uvicorn's factory import string):
    # a shipped model by its name (so that results name it so), a folder by its full path.
    shipped = SHIPPED_MODELS.get(name) == directory
    os.environ[ENV_MODEL_DIR] = name if shipped else str(directory.resolve())
    if workers > 1 and not os.environ.get(ENV_THREADS):
        os.environ[ENV_THREADS] = str(max(1, (os.cpu_count() or 1) // workers))
    Settings.from_env()  # fail here, with a clear message, on a bad variable
    print(f"MRI tumour classifier API: http://{host}:{port}/docs  (model {name}; "
          f"{workers} worker(s); Ctrl+C to stop)\n{DISCLAIMER}", flush=True)
    # A worker imports torch before it can answer the supervisor's health check; on a busy
    # machine that takes longer than uvicorn's default 5 s, and it would restart workers
    # in a loop.
    # http=: a request the HTTP parser refuses (a non-numeric Content-Length) gets a JSON 400.
    uvicorn.run("mri_tumor.api:create_app", factory=True, host=host, port=port,
                workers=workers, access_log=False, log_config=_log_config(),
                server_header=False, timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
                http=PROTOCOL_PATH)
    return 0


def _log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mri_tumor"] = {"handlers": ["default"], "level": "INFO",
                                      "propagate": False}
    return config


def _already_loaded(predictor: Predictor) -> Callable[[], Predictor]:
    """A loader that hands over a predictor loaded already."""
    return lambda: predictor
