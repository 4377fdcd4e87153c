"""``GET /v1/model``: the model card."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mri_tumor.api.dependencies import ServiceDep
from mri_tumor.api.schemas import ModelCardOut, error_responses
from mri_tumor.api.settings import DISCLAIMER_HEADER
from mri_tumor.card import DISCLAIMER

router = APIRouter()


@router.get("/model", summary="The model card", responses=error_responses(401, 503))
async def model_card(response: Response, service: ServiceDep) -> ModelCardOut:
    """The model card (architecture, classes, preprocessing, metrics) and the disclaimer."""
    predictor, _ = service.require_ready()
    card = ModelCardOut.of(predictor.card.to_dict())
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return card
