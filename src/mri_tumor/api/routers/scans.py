"""``POST /v1/scans``: one answer per uploaded scan (NIfTI, the DICOM files of a series, a
zip of a study), with every slice's result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.routers.predict import _unreadable_detail
from mri_tumor.api.schemas import PREDICT_REQUEST_BODY, PredictionOut, ScansOut, error_responses
from mri_tumor.api.settings import DISCLAIMER_HEADER
from mri_tumor.api.uploads import MAX_NAME_LENGTH, check_declared_length, uploaded_files
from mri_tumor.card import DISCLAIMER
from mri_tumor.inference import ERROR
from mri_tumor.scans import scan_summaries, study_summary

router = APIRouter()


@router.post("/scans", summary="Answer per scan",
             description="Upload a NIfTI volume, the DICOM files of one or more series, or a "
                         "zip of a study (the same upload rules as /v1/predict). Each scan "
                         "gets one answer from its slices (the model card's scan_rule), or "
                         "status not_assessable with the reason. Research tool, not a "
                         "diagnosis.",
             openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
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
    predictor, queue = service.require_ready(model)
    limit = service.settings.max_upload_bytes
    check_declared_length(request, limit)
    queue.reserve(1)
    slots = 1
    try:
        files = await uploaded_files(request, filename, limit, max(1, queue.capacity))
        if len(files) > 1:
            queue.reserve(len(files) - 1)
            slots = len(files)
    except BaseException:
        queue.release(slots)
        raise
    results = await queue.predict(files, slots)
    if all(result.status == ERROR for result in results):
        raise HTTPException(422, _unreadable_detail(results))
    summaries = scan_summaries(results, predictor.card)
    studies = []
    for source in dict.fromkeys(s["source"] for s in summaries):
        study = study_summary([s for s in summaries if s["source"] == source])
        if study:
            studies.append({"source": source, **study})
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return ScansOut(scans=summaries, studies=studies,
                    slices=[PredictionOut.of(result) for result in results])
