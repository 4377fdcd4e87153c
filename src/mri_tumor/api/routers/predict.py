"""``POST /v1/predict``: classify uploaded MRI slices."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.overlays import gradcam_png
from mri_tumor.api.schemas import (
    GRADCAM_PNG,
    GRADCAM_QUERY_DESCRIPTION,
    PREDICT_DESCRIPTION,
    PREDICT_REQUEST_BODY,
    PredictionOut,
    error_responses,
)
from mri_tumor.api.settings import DISCLAIMER_HEADER
from mri_tumor.api.uploads import MAX_NAME_LENGTH, check_declared_length, uploaded_files
from mri_tumor.card import DISCLAIMER
from mri_tumor.inference import ERROR, Prediction, Predictor

router = APIRouter()


@router.post("/predict", summary="Classify MRI slices", description=PREDICT_DESCRIPTION,
             openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
             # Results carry the sequence fields only when their model has a sequence head.
             response_model_exclude_unset=True,
             responses=error_responses(400, 401, 404, 413, 415, 422, 503))
async def predict(
    request: Request,
    response: Response,
    service: ServiceDep,
    filename: Annotated[str | None, Query(max_length=MAX_NAME_LENGTH,
                                          description="name for a raw-body upload")] = None,
    model: ModelQuery = None,
    gradcam: Annotated[Literal["png"] | None,
                       Query(description=GRADCAM_QUERY_DESCRIPTION)] = None,
) -> list[PredictionOut]:
    """Classify the uploaded images; see the description for the rules."""
    explained = gradcam == GRADCAM_PNG
    _, answers = await predict_uploads(request, response, service, filename, model,
                                       explained)
    return [PredictionOut.of(result, picture, explained) for result, picture in answers]


async def predict_uploads(request: Request, response: Response, service: ServiceDep,
                          filename: str | None, model: str | None, gradcam: bool = False
                          ) -> tuple[Predictor, list[tuple[Prediction, Any]]]:
    """The uploads of a request through the model's queue: its predictor and every result,
    each with its Grad-CAM overlay when ``gradcam`` (else None) (422 when no file was
    readable; the disclaimer header set). Shared by ``/v1/predict`` and ``/v1/scans``.

    A model still loading is waited for (``MRI_TUMOR_LOAD_WAIT_S``), then 503."""
    predictor, queue = await service.wait_ready(model)  # 404 unknown model, 503 loading
    limit = service.settings.max_upload_bytes
    check_declared_length(request, limit)
    queue.reserve(1)  # refuse before reading the body when the queue is full
    slots = 1
    try:
        files = await uploaded_files(request, filename, limit, max(1, queue.capacity))
        if len(files) > 1:
            queue.reserve(len(files) - 1)
            slots = len(files)
    except BaseException:
        queue.release(slots)
        raise
    explain = partial(gradcam_png, predictor) if gradcam else None
    answers = await queue.predict_explained(files, slots, explain)
    results = [result for result, _ in answers]
    if all(result.status == ERROR for result in results):
        raise HTTPException(422, _unreadable_detail(results))
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return predictor, answers


def _unreadable_detail(results: list[Prediction], shown: int = 5) -> str:
    reasons = [result.message for result in results[:shown]]
    more = f"; and {len(results) - shown} more" if len(results) > shown else ""
    return "No readable image in the request: " + "; ".join(reasons) + more
