"""``POST /v1/scans``: one answer per uploaded scan (NIfTI, the DICOM files of a series, a
zip of a study), with every slice's result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.routers.predict import predict_uploads
from mri_tumor.api.schemas import PREDICT_REQUEST_BODY, PredictionOut, ScansOut, error_responses
from mri_tumor.api.uploads import MAX_NAME_LENGTH
from mri_tumor.inference.scans import scan_summaries, study_summaries

router = APIRouter()


@router.post("/scans", summary="Answer per scan",
             description="Upload a NIfTI volume, the DICOM files of one or more series, or a "
                         "zip of a study (the same upload rules as /v1/predict). Each scan "
                         "gets one answer from its slices (the model card's scan_rule), or "
                         "status not_assessable with the reason. Research tool, not a "
                         "diagnosis.",
             openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
             # Grad-CAM overlays are for /v1/predict?gradcam=png only.
             response_model_exclude={"slices": {"__all__": {"gradcam_png"}}},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503))
async def scans(
    request: Request,
    response: Response,
    service: ServiceDep,
    filename: Annotated[str | None, Query(max_length=MAX_NAME_LENGTH,
                                          description="name for a raw-body upload")] = None,
    model: ModelQuery = None,
) -> ScansOut:
    """The scan and study answers of the uploads, with their slices."""
    predictor, answers = await predict_uploads(request, response, service, filename, model)
    results = [result for result, _ in answers]
    summaries = scan_summaries(results, predictor.card)
    return ScansOut(scans=summaries, studies=study_summaries(summaries),
                    slices=[PredictionOut.of(result) for result in results])
