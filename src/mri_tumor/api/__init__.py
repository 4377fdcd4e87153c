"""The HTTP API (FastAPI on uvicorn) for clinical systems and PACS integration.

    mri-tumor serve --host 127.0.0.1 --port 8000 --workers 2

Endpoints: ``POST /v1/predict`` (multipart field ``files`` or one raw image body;
``?model=default|types`` picks a shipped model; ``?gradcam=png`` adds Grad-CAM overlays),
``GET /v1/model`` (a card), ``GET /v1/models`` (the models offered, with their weights'
SHA-256), ``POST /v1/feedback`` (store a case whose class a
user confirmed, when ``MRI_TUMOR_SITE_DATA`` is set), ``GET /healthz``, ``GET /readyz``;
OpenAPI at ``/openapi.json``, with ``/docs`` and ``/redoc`` served from this package (no
CDN). Research tool, not a diagnosis: every prediction response carries the disclaimer.

Modules: ``settings`` (``MRI_TUMOR_*`` variables), ``service`` (the models: loading,
readiness, selection by name),
``queue`` (batched inference), ``uploads`` (reading requests), ``schemas`` (response models,
OpenAPI prose), ``overlays`` (Grad-CAM pictures), ``security`` (API key), ``routers/``
(endpoints), ``errors`` (handlers, middleware), ``protocol`` (the HTTP protocol: JSON for
requests the parser refuses), ``docs`` (self-hosted Swagger UI and ReDoc), ``server`` (app
and ``serve``).

Design: request handlers only read and check the upload, in memory and size-bounded (nothing
is written to disk, except the confirmed cases ``POST /v1/feedback`` stores in the site data).
The work goes to one :class:`InferenceQueue` per loaded model: a bounded count of waiting
files and one background thread that takes every waiting request (up to ``max_batch``
files), decodes the files and runs the predictor once for all their slices, then resolves
each request's future. A full queue answers 503 with ``Retry-After``
at once, so memory stays bounded under any load (at most ``queue_size`` files per model).
Every offered model (the server's own, then the other shipped ones) loads in the background
at start-up, and readiness waits for all of them; a request for a model still loading waits
for it (``MRI_TUMOR_LOAD_WAIT_S``), then gets 503 + ``Retry-After``. ``?model=``
takes shipped names only, never a path. Logs never carry file contents, DICOM headers, file
names, query strings or request headers.
"""

from __future__ import annotations

from mri_tumor.api.server import create_app, serve
from mri_tumor.api.settings import DISCLAIMER_HEADER, Settings
from mri_tumor.data.reading import MIB

__all__ = ["DISCLAIMER_HEADER", "MIB", "Settings", "create_app", "serve"]
