"""``POST /v1/segment``: outline the tumour in an uploaded scan or image and measure it."""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from mri_tumor.api.dependencies import ModelQuery, ServiceDep
from mri_tumor.api.schemas import (
    PREDICT_REQUEST_BODY,
    OutlineOut,
    SegmentationOut,
    SegmentOut,
    error_responses,
)
from mri_tumor.api.settings import DISCLAIMER_HEADER
from mri_tumor.api.uploads import MAX_NAME_LENGTH, check_declared_length, uploaded_files
from mri_tumor.card import DISCLAIMER
from mri_tumor.data.base import ImageReadError
from mri_tumor.data.volume import Volume, is_nifti_name, read_nifti
from mri_tumor.inference.outlining import ERROR, Outliner, SegmentationResult
from mri_tumor.inference.segmentation import Segmenter, outline_polygons

router = APIRouter()
_loaded: dict[str, Segmenter] = {}
_loading = threading.Lock()
# One outline at a time: a 3-D outline takes the CPU for a few seconds.
_running = asyncio.Lock()
MAX_SEGMENT_FILES = 2000  # the files of one study


# Form fields of the co-registered sequences the FLAIR + T1 + T1C+ model reads, by sequence.
COMPANION_FIELDS = {"t1": "T1", "t1c": "T1C+"}


def shipped_segmenter(multi: bool = False) -> Segmenter:
    """The shipped segmentation model (``multi``: the FLAIR + T1 + T1C+ one), loaded on
    first use."""
    from mri_tumor.inference.segmentation import SHIPPED_MULTI_SEGMENTER

    key = "multi" if multi else "shipped"
    with _loading:
        if key not in _loaded:
            _loaded[key] = Segmenter.load(SHIPPED_MULTI_SEGMENTER if multi else None)
        return _loaded[key]


def companion_volumes(files: list[tuple[str, bytes]],
                      extra: dict[str, tuple[str, bytes] | None]) -> dict[str, Volume]:
    """The uploaded T1 / T1C+ NIfTI volumes by sequence (empty when none was sent); 422 when
    they are sent beside anything but one FLAIR NIfTI volume, or cannot be read."""
    given = {field: upload for field, upload in extra.items() if upload is not None}
    if not given:
        return {}
    if len(files) != 1 or not is_nifti_name(files[0][0]):
        raise HTTPException(422, "t1 and t1c go with one FLAIR volume as NIfTI in the field "
                                 f"'files' (got {len(files)} file(s)).")
    volumes = {}
    for field, (name, data) in given.items():
        try:
            volumes[COMPANION_FIELDS[field]] = read_nifti(data, name)
        except (ImageReadError, ValueError) as error:
            raise HTTPException(422, f"{field}: {error}") from None
    return volumes


def outlines_of(result: SegmentationResult) -> list[OutlineOut]:
    """The result's outline per slice, as polygons over the display images."""
    if result.volume_mask is not None:
        side = result.volume_mask.stack.side
        return [OutlineOut(slice_index=k, width=side, height=side,
                           polygons=outline_polygons(result.volume_mask.display_mask(k)))
                for k in (result.measurement.slices if result.measurement else [])]
    if result.image_mask is not None and result.image_mask.any():
        height, width = result.image_mask.shape
        return [OutlineOut(slice_index=None, width=width, height=height,
                           polygons=outline_polygons(result.image_mask))]
    return []


def _out(result: SegmentationResult) -> SegmentationOut:
    fields: dict[str, Any] = result.to_dict()["segmentation"]
    fields.pop("mask")
    return SegmentationOut(**fields, outlines=outlines_of(result))


@router.post("/segment", summary="Outline and measure the tumour",
             description="Upload a NIfTI volume, the DICOM files of a series, a zip of a "
                         "study or slice images (the upload rules of /v1/predict). The "
                         "classifier answers each scan first; a scan it refuses or calls no "
                         "tumour is not outlined (status not_segmented, with the reason). "
                         "Otherwise the FLAIR-trained outline model gives the outline per "
                         "slice as polygons over the axial images, the volume in mL, the "
                         "slices it spans and its largest axial diameter. With one FLAIR "
                         "volume (NIfTI) in 'files', the multipart fields 't1' and 't1c' may "
                         "carry NIfTI volumes of the same session: the FLAIR + T1 + T1C+ model "
                         "then reads them (resampled onto the FLAIR's grid). Research tool, "
                         "not a diagnosis; the outline is unverified.",
             openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
             responses=error_responses(400, 401, 404, 413, 415, 422, 503))
async def segment(
    request: Request,
    response: Response,
    service: ServiceDep,
    filename: Annotated[str | None, Query(max_length=MAX_NAME_LENGTH,
                                          description="name for a raw-body upload")] = None,
    model: ModelQuery = None,
    outline_all: Annotated[bool, Query(description="outline every upload, whatever the "
                                                   "classifier answers (as segment "
                                                   "--no-classifier)")] = False,
) -> SegmentOut:
    """Outlines of the uploads."""
    predictor, _ = await service.wait_ready(model)
    limit = service.settings.max_upload_bytes
    check_declared_length(request, limit)
    extra: dict[str, tuple[str, bytes] | None] = dict.fromkeys(COMPANION_FIELDS)
    files = await uploaded_files(request, filename, limit, MAX_SEGMENT_FILES, extra)
    companions = companion_volumes(files, extra)
    async with _running:
        segmenter = await asyncio.to_thread(shipped_segmenter, bool(companions))
        outliner = Outliner(segmenter, None if outline_all else predictor, None, companions)
        results = await asyncio.to_thread(
            outliner.run_inputs, [(name, data, name) for name, data in files])
    if results and all(r.status == ERROR for r in results):
        raise HTTPException(422, "No readable scan or image in the request: "
                                 + "; ".join(r.message for r in results[:5]))
    response.headers[DISCLAIMER_HEADER] = DISCLAIMER
    return SegmentOut(segmentations=[_out(r) for r in results])
