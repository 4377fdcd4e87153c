"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness): always open, no API key."""

from __future__ import annotations

from fastapi import APIRouter

from mri_tumor.api.dependencies import ServiceDep
from mri_tumor.api.schemas import HEALTH_OK, HEALTH_READY, HealthOut, error_responses

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> HealthOut:
    """200 as long as the process answers, model loaded or not."""
    return HealthOut(status=HEALTH_OK)


@router.get("/readyz", summary="Readiness: 200 once the model is loaded",
            responses=error_responses(503))
async def readyz(service: ServiceDep) -> HealthOut:
    """200 once the model is loaded; 503 with Retry-After while it loads or if it failed."""
    service.check_ready()
    return HealthOut(status=HEALTH_READY)
