"""``GET /v1/model``: a model's card; ``GET /v1/models``: the models this server offers."""

from __future__ import annotations

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
    name, card = service.card(model)
    out = ModelCardOut.of(name, card.to_dict())
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return out


@router.get("/models", summary="The models this server offers",
            responses=error_responses(401, 503))
async def models(response: Response, service: ServiceDep) -> ModelsOut:
    """The server's model (``default: true``, used without ``?model=``) and every shipped
    model (selectable with ``?model=NAME``): classes, sequences, version and headline
    validation scores. Shipped models are listed from their cards, loaded or not."""
    entries = service.models()
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return ModelsOut(default=service.name, models=[
        ModelSummaryOut.of(e.name, e.card, e.default, e.shipped, e.loaded) for e in entries])
