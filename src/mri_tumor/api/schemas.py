"""Response models (FastAPI validates every answer against them) and the OpenAPI prose."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mri_tumor.api.overlays import BURNED_IN, MAX_SIDE
from mri_tumor.api.settings import (
    ENV_API_KEY,
    ENV_LOAD_WAIT_S,
    ENV_PRELOAD_MODELS,
    ENV_SITE_DATA,
)
from mri_tumor.api.uploads import (
    FEEDBACK_FILE_FIELD,
    FEEDBACK_LABEL_FIELD,
    FILES_FIELD,
    MULTIPART,
)
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.inference import ERROR, OK, REJECTED, Prediction
from mri_tumor.inference.identity import ModelIdentity
from mri_tumor.inference.model_folder import SHIPPED_MODELS

STATUSES = (OK, REJECTED, ERROR)
HEALTH_OK, HEALTH_READY = "ok", "ready"
GRADCAM_PNG = "png"  # the one value ?gradcam= takes


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
    label: str | None = Field(description="one of the model's class names (GET /v1/models): "
                                          "glioma, meningioma, notumor or pituitary for the "
                                          "default model, a tumour type for types")
    confidence: float | None = Field(description="calibrated probability of the label")
    probabilities: dict[str, float] | None = Field(description="per class name of the model")
    ood_score: float | None = Field(description="higher = less like the training MRIs")
    message: str = Field(description="why a file was rejected or unreadable, or a "
                                     "low-confidence note")
    model: str = Field(description="the model that answered: a shipped model's name "
                                   f"({', '.join(SHIPPED_MODELS)}) or the server's model "
                                   "folder's name")
    # Only in results of a model with a sequence head (types) that gave a class; absent
    # otherwise (the predict route leaves unset fields out).
    sequence: str | None = Field(None, description="the MR sequence (T1, T1C+ or T2) of an "
                                 "\"ok\" result of a model with a sequence head (types); "
                                 "absent otherwise")
    sequence_probabilities: dict[str, float] | None = Field(
        None, description="calibrated probability per sequence name; present with sequence")
    slice_index: int | None = Field(None, description="the slice's place in its scan's axial "
                                    "stack, inferior to superior (NIfTI volumes and DICOM "
                                    "series); absent for single images")
    resembles: str | None = Field(None, description="in a result refused by its pixels, for "
                                  "a model whose card has a `resemblance` section: the kind "
                                  "of image it looks like most (a key of that section's "
                                  "`phrases`, e.g. head-ct); absent otherwise")
    # Only with POST /v1/predict?gradcam=png, and only in "ok" results; absent otherwise.
    gradcam_png: str | None = Field(
        None, description="with `POST /v1/predict?gradcam=png` only, in results with status "
        f"\"{OK}\": a base64-encoded PNG (RGB, longest side at most {MAX_SIDE} px) of the "
        "image in grey with the Grad-CAM heat map of the predicted class over it, "
        f"\"{BURNED_IN}\" burned in at the top and the disclaimer in its text chunk; null "
        "when it could not be made (see the server log); absent otherwise")

    @classmethod
    def of(cls, prediction: Prediction, gradcam_png: str | None = None,
           explained: bool = False) -> PredictionOut:
        """The public form of a predictor result (NaN and infinities come out as null); the
        sequence fields are set only when the result has them, ``gradcam_png`` only when
        ``explained`` (a Grad-CAM overlay was asked for) and the result gave a class."""
        fields = prediction.to_dict()
        if explained and prediction.status == OK and prediction.label is not None:
            fields["gradcam_png"] = gradcam_png
        return cls.model_validate(fields)


class ScansOut(BaseModel):
    """The answer per scan (a NIfTI volume, a DICOM series, a zip of a study) and per study,
    with every slice's result."""

    scans: list[dict[str, Any]] = Field(description=(
        "one per scan: source, series (an opaque key), status (\"ok\" or \"not_assessable\"), "
        "label (a class name, or null), probability (scan-level, of the label), "
        "tumour_probability, slices (read), refused, key_slices (slice_index values), "
        "disagree, disagreement (how, in words), message; caution and named_sequence when "
        "the scan's name or header names a sequence on which the model's scan answers are "
        "measured to be weak"))
    studies: list[dict[str, Any]] = Field(description=(
        "one per upload name holding several series: the answer of its series with the "
        "highest tumour probability, and how many agree"))
    slices: list[PredictionOut] = Field(description="every slice's result, with slice_index")
    disclaimer: str = DISCLAIMER


class OutlineOut(BaseModel):
    """The outline on one slice: polygons over the slice's display image."""

    slice_index: int | None = Field(description="the axial slice (as in /v1/scans' "
                                                "slice_index); null for a 2-D image")
    width: int = Field(description="width of the image the polygons are drawn on (px)")
    height: int = Field(description="its height (px)")
    polygons: list[list[list[float]]] = Field(description=(
        "closed polygons of [x, y] pixel coordinates (x right, y down) on the axial image "
        "as /v1/scans reads it (anterior up, the patient's right on the left)"))


class SegmentationOut(BaseModel):
    """One scan's or image's outline and measurements."""

    source: str
    scan: str
    status: str = Field(description="ok (tumour outlined), empty (none found), "
                                    "not_segmented (the reason in message), error")
    volume_ml: float | None = Field(description="outlined volume from the voxel size; "
                                                "null for an image without one")
    slices: list[int] = Field(description="axial slices the outline spans")
    voxels: int
    largest_axial_diameter_mm: float | None
    classifier: dict[str, Any] | None = Field(description="the classifier's answer that "
                                                          "decided whether to outline")
    message: str
    outlines: list[OutlineOut]


class SegmentOut(BaseModel):
    """Outlines per uploaded scan or image."""

    segmentations: list[SegmentationOut]
    disclaimer: str = DISCLAIMER


class ModelCardOut(BaseModel):
    """The model card (every field of ``card.json``) plus the disclaimer."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="the model's name, as results carry it in `model`")
    architecture: str
    class_names: list[str]
    image_size: int
    disclaimer: str = DISCLAIMER

    @classmethod
    def of(cls, name: str, card: dict[str, Any]) -> ModelCardOut:
        """The card's fields, with the model's name and the disclaimer added."""
        return cls.model_validate({**card, "name": name, "disclaimer": DISCLAIMER})


class ValidationSummaryOut(BaseModel):
    """Headline scores on the model's validation split (null where the card has none)."""

    accuracy: float | None = None
    macro_f1: float | None = None
    sequence_accuracy: float | None = Field(None, description="models with a sequence head")


class ModelSummaryOut(BaseModel):
    """One model this server offers."""

    name: str = Field(description="what ?model= takes (shipped models) and results carry "
                                  "in `model`")
    default: bool = Field(description="this server's model: the one used without ?model=")
    shipped: bool = Field(description="a model of the package, selectable with ?model=")
    loaded: bool = Field(description="loaded in this server process (every model loads at "
                                     f"start-up; with {ENV_PRELOAD_MODELS}=0 the other shipped "
                                     "models load on first use)")
    architecture: str
    class_names: list[str]
    display_names: dict[str, str] = Field(description="how each class is shown to people")
    sequence_names: list[str] = Field(description="the MR sequences a second head names "
                                                  "(empty: the model has none)")
    version: str = Field(description="the card's version (`version` in card.json)")
    weights_sha256: str | None = Field(description="SHA-256 (hex) of the model's weights file "
                                       "(model.safetensors): what tells two models apart, as "
                                       "in lineage records and the PACS results; null when "
                                       "the weights cannot be read")
    algorithm_version: str = Field(description="the model's version as the PACS Structured "
                                   "Report's algorithm identification gives it: `<package "
                                   "version> card <card version> weights <first 12 hex "
                                   "digits of weights_sha256>`; it differs between models")
    validation: ValidationSummaryOut

    @classmethod
    def of(cls, name: str, card: ModelCard, default: bool, shipped: bool,
           loaded: bool, identity: ModelIdentity | None = None) -> ModelSummaryOut:
        """The summary of a model from its card and its identity (name, card version and
        weights hash, as the PACS results name a model)."""
        scores = card.metrics.validation
        digest = identity.weights_sha256 if identity is not None else ""
        return cls(name=name, default=default, shipped=shipped, loaded=loaded,
                   architecture=card.architecture, class_names=list(card.class_names),
                   display_names={c: card.display_name(c) for c in card.class_names},
                   sequence_names=list(card.sequence_names), version=card.version,
                   weights_sha256=digest or None,
                   algorithm_version=(identity or ModelIdentity(name, card.version, "")
                                      ).algorithm_version,
                   validation=ValidationSummaryOut(
                       accuracy=getattr(scores, "accuracy", None),
                       macro_f1=getattr(scores, "macro_f1", None),
                       sequence_accuracy=getattr(scores, "sequence_accuracy", None)))


class ModelsOut(BaseModel):
    """The models this server offers."""

    default: str = Field(description="the name of the model used without ?model=")
    models: list[ModelSummaryOut]


class FeedbackOut(BaseModel):
    """A confirmed case, stored (or found already stored) in the site data."""

    stored: str = Field(description="where it is, inside the site-data folder: "
                                    "`<label>/<sha256 of the grey pixels>.png`")
    new: bool = Field(description="false: the same image (the same grey pixels) was already "
                                  "stored under this label; nothing was written")


class ErrorOut(BaseModel):
    """Every error response."""

    detail: str


class HealthOut(BaseModel):
    """Liveness and readiness answers."""

    status: str


ERROR_TEXT = {
    400: "Malformed request",
    401: "Missing or wrong X-API-Key",
    404: "Unknown model: ?model= names no shipped model",
    413: "Upload above the size limit, or too many files",
    415: "Unsupported content type",
    422: "No readable image in the request (every file is corrupt or unreadable), "
         "or no file at all",
    503: f"Model still loading (after waiting up to {ENV_LOAD_WAIT_S} seconds) or failed to "
         "load, or the queue is full (see Retry-After)",
}


def error_responses(*codes: int, texts: dict[int, str] | None = None
                    ) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error status codes, each with :class:`ErrorOut`
    (``texts``: an endpoint's own description of a code)."""
    texts = {**ERROR_TEXT, **(texts or {})}
    return {code: {"model": ErrorOut, "description": texts[code]} for code in codes}


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

`?model=` selects a shipped model by name: `default` (glioma, meningioma, notumor,
pituitary) or `types` (15 tumour types, and the MR sequence: T1, T1C+ or T2); without it the
server's own model answers (`GET /v1/models` lists them). Each result names its model in
`model`; results of the types model also carry `sequence` and `sequence_probabilities`. An
unknown name (or a path) is 404. Every model loads at start-up; a request for a model still
loading waits for it (up to `{ENV_LOAD_WAIT_S}` seconds, default 60; then 503 with
Retry-After).

`?gradcam=png` adds `gradcam_png` to each result with status "{OK}": a base64 PNG of the
image with the Grad-CAM heat map of the predicted class over it (which regions drove that
class's score), with "{BURNED_IN}" burned in. It costs about one more
model pass per image (the first request on a model also loads its torch network). Without the
parameter the answer has no `gradcam_png` key.

Unreadable files: when *every* file of the request is unreadable the answer is 422; when at
least one is readable the answer is 200 and each unreadable file has `status: "{ERROR}"` with
its reason in `message`. Images that are not brain MRI slices get `status: "{REJECTED}"`.

**{DISCLAIMER}**"""

GRADCAM_QUERY_DESCRIPTION = (f"`{GRADCAM_PNG}`: add `gradcam_png` (a base64 PNG of the Grad-CAM "
                             "overlay of the predicted class) to each result with status "
                             f"\"{OK}\"; without it, no overlay is made")

MODEL_QUERY_DESCRIPTION = (f"a shipped model by name ({', '.join(SHIPPED_MODELS)}); "
                           "without it, the server's model. Never a path.")

APP_DESCRIPTION = f"""Brain MRI tumour classifier. Two shipped models: `default` (glioma,
meningioma, pituitary, no tumour) and `types` (15 tumour types and the MR sequence); choose
with `?model=` (`GET /v1/models` lists them).

**{DISCLAIMER}**

`/v1/*` need the `X-API-Key` header when the server sets `{ENV_API_KEY}`; `/healthz` and
`/readyz` are always open. Documentation: `/docs` (Swagger UI) and `/redoc`, served by this
server (no outside resources)."""


SITE_DATA_OFF = (f"Collecting confirmed cases is off on this server: set {ENV_SITE_DATA} to a "
                 "folder to turn it on.")
FEEDBACK_ERROR_TEXT = {
    404: f"Collecting is off ({ENV_SITE_DATA} is not set), or ?model= names no shipped model",
    422: "Unknown label, unreadable image, or a missing field",
    503: "Model still loading, or too many cases being stored at once (see Retry-After)",
}
FEEDBACK_REQUEST_BODY = {
    "required": True,
    "content": {
        MULTIPART: {"schema": {
            "type": "object", "required": [FEEDBACK_FILE_FIELD, FEEDBACK_LABEL_FIELD],
            "properties": {
                FEEDBACK_FILE_FIELD: {**_IMAGE_SCHEMA, "description": "one image (JPEG, PNG, "
                                      "BMP, TIFF or DICOM; a multi-frame DICOM file: its "
                                      "first frame)"},
                FEEDBACK_LABEL_FIELD: {"type": "string", "description": "the class the image "
                                       "truly shows: one of the model's class names"}}}},
    },
}

FEEDBACK_DESCRIPTION = f"""Store a confirmed case: an image and the class a user confirmed
(or corrected) for it, kept in the server's site data for fine-tuning the model later.

Only when the server sets `{ENV_SITE_DATA}` to a folder; otherwise 404 and nothing is
written. Send multipart/form-data with the image in the field `{FEEDBACK_FILE_FIELD}` and its
class in the field `{FEEDBACK_LABEL_FIELD}`: a class name of the server's model, or of the
shipped model `?model=` names (`GET /v1/model` lists them). The image is decoded as for a
prediction (a multi-frame DICOM file: its first frame) and stored as an 8-bit grey PNG with
no metadata at all (no DICOM header field, no file name) as `<label>/<sha256>.png`, named by
its grey pixels: the same image sent twice is stored once (`new: false` the second time).
An unknown label or an unreadable image is 422 and nothing is written. The upload limit is
the one of `POST /v1/predict`."""
