"""``POST /v1/feedback``: store a case whose class a user confirmed, for fine-tuning later
(only when ``MRI_TUMOR_SITE_DATA`` is set; ``mri_tumor.data.site`` does the storing)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, HTTPException, Request

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.schemas import (
    FEEDBACK_DESCRIPTION,
    FEEDBACK_ERROR_TEXT,
    FEEDBACK_REQUEST_BODY,
    SITE_DATA_OFF,
    FeedbackOut,
    error_responses,
)
from mri_tumor.api.uploads import check_declared_length, feedback_form
from mri_tumor.data.site import store_confirmed_case

router = APIRouter()
logger = logging.getLogger(__name__)
STORE_FAILED = "The image could not be stored in the site data; see the server log."


@router.post("/feedback", status_code=201, summary="Store a confirmed case (site data)",
             description=FEEDBACK_DESCRIPTION,
             openapi_extra={"requestBody": FEEDBACK_REQUEST_BODY},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503,
                                       texts=FEEDBACK_ERROR_TEXT))
async def feedback(request: Request, service: ServiceDep, model: ModelQuery = None
                   ) -> FeedbackOut:
    """Store the uploaded image under its confirmed class; see the description."""
    site_dir = service.settings.site_data
    if site_dir is None:
        raise HTTPException(404, SITE_DATA_OFF)
    _, card = await service.wait_card(model)  # 404 unknown model; 503 own one still loading
    limit = service.settings.max_upload_bytes
    check_declared_length(request, limit)
    with service.feedback_slot():  # 503 when too many are being stored at once
        name, data, label = await feedback_form(request, limit)
        try:
            case = await asyncio.to_thread(store_confirmed_case, data, label, site_dir,
                                           card.class_names, name=name)
        except ValueError as error:  # an unknown label, or an unreadable image
            raise HTTPException(422, str(error)) from None
        except OSError as error:  # the folder cannot be written (or a clashing file)
            logger.error("storing a confirmed case failed: %s (errno %s)",
                         type(error).__name__, error.errno)
            raise HTTPException(500, STORE_FAILED) from None
    return FeedbackOut(stored=case.relative, new=case.new)
