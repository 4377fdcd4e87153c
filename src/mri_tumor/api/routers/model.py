"""``GET /v1/model``: a model's card; ``GET /v1/models``: the models this server offers."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.schemas import ModelCardOut, ModelsOut, ModelSummaryOut, error_responses
from mri_tumor.api.settings import DISCLAIMER_HEADER
from mri_tumor.card import DISCLAIMER

router = APIRouter()


@router.get("/model", summary="A model card", responses=error_responses(401, 404, 503))
async def model_card(response: Response, service: ServiceDep, model: ModelQuery = None
                     ) -> ModelCardOut:
    """The card (architecture, classes, preprocessing, metrics) of the server's model, or of
    the shipped model ``?model=`` names, and the disclaimer."""
    name, card = await service.wait_card(model)
    out = ModelCardOut.of(name, card.to_dict())
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return out


@router.get("/models", summary="The models this server offers",
            responses=error_responses(401, 503))
async def models(response: Response, service: ServiceDep) -> ModelsOut:
    """The server's model (``default: true``, used without ``?model=``) and every shipped
    model (selectable with ``?model=NAME``): classes, sequences, version, the SHA-256 of the
    weights and headline validation scores. Shipped models are listed from their cards,
    loaded or not."""
    await service.wait_card()  # the server's own model, while it loads (bounded)
    entries = await asyncio.to_thread(service.models)  # hashes a model's weights once
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return ModelsOut(default=service.name, models=[
        ModelSummaryOut.of(e.name, e.card, e.default, e.shipped, e.loaded, e.identity)
        for e in entries])
