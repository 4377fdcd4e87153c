"""Response models (FastAPI validates every answer against them) and the OpenAPI prose."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mri_tumor.api.settings import ENV_API_KEY
from mri_tumor.api.uploads import FILES_FIELD, MULTIPART
from mri_tumor.card import DISCLAIMER
from mri_tumor.inference import ERROR, OK, REJECTED, Prediction

STATUSES = (OK, REJECTED, ERROR)
HEALTH_OK, HEALTH_READY = "ok", "ready"


def _known_status(value: str) -> str:
    if value not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    return value


class PredictionOut(BaseModel):
    """One result: per file, or per frame of a multi-frame DICOM file."""

    path: str = Field(description="the uploaded file name (plus #frame for multi-frame DICOM)")
    status: Annotated[str, AfterValidator(_known_status)] = Field(
        description=f'"{OK}", "{REJECTED}" (not a brain MRI slice) or "{ERROR}" '
                    "(unreadable file)", json_schema_extra={"enum": list(STATUSES)})
    label: str | None = Field(description="glioma, meningioma, notumor or pituitary")
    confidence: float | None = Field(description="calibrated probability of the label")
    probabilities: dict[str, float] | None
    ood_score: float | None = Field(description="higher = less like the training MRIs")
    message: str = Field(description="why a file was rejected or unreadable, or a "
                                     "low-confidence note")

    @classmethod
    def of(cls, prediction: Prediction) -> PredictionOut:
        """The public form of a predictor result (NaN and infinities come out as null)."""
        return cls.model_validate(prediction.to_dict())


class ModelCardOut(BaseModel):
    """The model card (every field of ``card.json``) plus the disclaimer."""

    model_config = ConfigDict(extra="allow")

    architecture: str
    class_names: list[str]
    image_size: int
    disclaimer: str = DISCLAIMER

    @classmethod
    def of(cls, card: dict[str, Any]) -> ModelCardOut:
        """The card's fields, with the disclaimer added."""
        return cls.model_validate({**card, "disclaimer": DISCLAIMER})


class ErrorOut(BaseModel):
    """Every error response."""

    detail: str


class HealthOut(BaseModel):
    """Liveness and readiness answers."""

    status: str


ERROR_TEXT = {
    400: "Malformed request",
    401: "Missing or wrong X-API-Key",
    413: "Upload above the size limit, or too many files",
    415: "Unsupported content type",
    422: "No readable image in the request (every file is corrupt or unreadable), "
         "or no file at all",
    503: "Model still loading, or the queue is full (see Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error status codes, each with :class:`ErrorOut`."""
    return {code: {"model": ErrorOut, "description": ERROR_TEXT[code]} for code in codes}


_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
PREDICT_REQUEST_BODY = {
    "required": True,
    "content": {
        MULTIPART: {"schema": {
            "type": "object", "required": [FILES_FIELD],
            "properties": {FILES_FIELD: {"type": "array", "items": _IMAGE_SCHEMA,
                                         "description": "one or more images"}}}},
        **{media: {"schema": _IMAGE_SCHEMA}
           for media in ("image/jpeg", "image/png", "image/bmp", "image/tiff",
                         "application/dicom", "application/octet-stream")},
    },
}

PREDICT_DESCRIPTION = f"""Classify one or more brain MRI slices.

Send images (JPEG, PNG, BMP, TIFF or DICOM) as the multipart form field `files` (several
allowed), or one image as the raw request body with its Content-Type (`?filename=` names it;
default "upload"). The answer is a list with one result per file, in upload order; a
multi-frame DICOM file gives one result per frame (`path` is `name#frame`).

Unreadable files: when *every* file of the request is unreadable the answer is 422; when at
least one is readable the answer is 200 and each unreadable file has `status: "{ERROR}"` with
its reason in `message`. Images that are not brain MRI slices get `status: "{REJECTED}"`.

**{DISCLAIMER}**"""

APP_DESCRIPTION = f"""Brain MRI tumour classifier (glioma, meningioma, pituitary, no tumour).

**{DISCLAIMER}**

`/v1/*` need the `X-API-Key` header when the server sets `{ENV_API_KEY}`; `/healthz` and
`/readyz` are always open. Documentation: `/docs` (Swagger UI) and `/redoc`, served by this
server (no outside resources)."""
