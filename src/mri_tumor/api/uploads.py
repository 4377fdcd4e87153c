"""Reading uploads: raw bodies and multipart/form-data, in memory and size-bounded;
nothing is written to disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from mri_tumor.api.settings import ENV_MAX_UPLOAD_MB, ENV_QUEUE_SIZE
from mri_tumor.data.reading import MIB

MULTIPART = "multipart/form-data"
FILES_FIELD = "files"
MAX_NAME_LENGTH = 255
# POST /v1/feedback: one image and the class a user confirmed for it.
FEEDBACK_FILE_FIELD = "file"
FEEDBACK_LABEL_FIELD = "label"
FEEDBACK_MAX_PARTS = 8  # more parts than this is refused before they are looked at
MAX_LABEL_LENGTH = 200
# Declared types accepted for an image; the decoder then goes by the bytes, so a JPEG sent as
# image/png still works. application/octet-stream is what most clients send for .dcm files.
IMAGE_MEDIA_TYPES = {
    "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG",
    "image/png": "PNG", "image/x-png": "PNG",
    "image/bmp": "BMP", "image/x-bmp": "BMP", "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF", "image/tif": "TIFF",
    "application/dicom": "DICOM",
    # Whole scans: NIfTI volumes (.nii, .nii.gz) and zips of a study.
    "application/gzip": "NIfTI (.nii.gz)", "application/x-gzip": "NIfTI (.nii.gz)",
    "application/zip": "zip of a study", "application/x-zip-compressed": "zip of a study",
    "application/octet-stream": "any of these, recognised by content",
}
BAD_LENGTH_DETAIL = "The Content-Length header is not a number: send the body's size in bytes."
ACCEPTED_TYPES_TEXT = ("image/jpeg, image/png, image/bmp, image/tiff, application/dicom, "
                       "application/gzip (NIfTI), application/zip or application/octet-stream")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_declared_length(request: Request, limit: int) -> None:
    """413 at once when the Content-Length header declares more than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise HTTPException(400, BAD_LENGTH_DETAIL) from None
    if length > limit:
        raise HTTPException(413, too_large_detail(limit))


def too_large_detail(limit: int) -> str:
    """The 413 message: the limit in the unit and wording of every front end
    (:func:`mri_tumor.data.reading.too_large_message`)."""
    return (f"The upload is larger than the {limit / MIB:.4g} MB limit (1 MB = 1,048,576 "
            f"bytes) per request, set by {ENV_MAX_UPLOAD_MB}; send fewer or smaller files "
            "per request.")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body in memory, refusing with 413 as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, too_large_detail(limit))
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)


def parse_multipart(body: bytes, content_type: str, max_parts: int,
                    too_many: str | None = None
                    ) -> list[tuple[str | None, str | None, str, bytes]]:
    """Split a multipart/form-data body in memory.

    Returns ``(field name, file name, part media type, bytes)`` per part. Raises
    HTTPException 400 for a malformed body and 413 for more than ``max_parts`` parts (with
    ``too_many`` as its detail; default: the queue's limit on files).
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "The multipart/form-data Content-Type has no boundary.")
    parts: list[_Part] = []
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise HTTPException(413, too_many or _too_many_files(max_parts))
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers.append((bytes(header_name).lower(), bytes(header_value)))
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.append(data[start:end])

    callbacks: Any = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                      "on_header_value": on_header_value, "on_header_end": on_header_end,
                      "on_part_data": on_part_data}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise HTTPException(400, f"Malformed multipart/form-data body ({type(error).__name__}); "
                                 f"send images in the form field '{FILES_FIELD}'.") from None
    if body.strip() and not parts:
        raise HTTPException(400, "Malformed multipart/form-data body: no part found; check "
                                 "the boundary.")
    out = []
    for part in parts:
        headers = dict(part.headers)
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        field_name = _decode_header(disposition.get(b"name"))
        file_name = _decode_header(disposition.get(b"filename"))
        media = _media_type(headers.get(b"content-type", b"").decode("latin-1"))
        out.append((field_name, file_name, media, b"".join(part.data)))
    return out


def _decode_header(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _too_many_files(limit: int) -> str:
    return (f"Too many files in one request: the limit is {limit} (the queue size, "
            f"{ENV_QUEUE_SIZE}); split the upload into several requests.")


def _check_media_type(media: str, name: str) -> None:
    if media and media not in IMAGE_MEDIA_TYPES:
        raise HTTPException(415, f"{name}: unsupported content type '{media}'; send "
                                 f"{ACCEPTED_TYPES_TEXT}.")


def _clean_name(name: str | None, fallback: str) -> str:
    name = (name or "").strip().replace("\x00", "")
    return name[:MAX_NAME_LENGTH] if name else fallback


async def uploaded_files(request: Request, filename: str | None, limit: int, max_files: int,
                         extra: dict[str, tuple[str, bytes] | None] | None = None,
                         ) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for each uploaded file, checked for type and size; in memory only.
    With ``extra`` (the field names a route also accepts, each once, mapped to None), the
    file of such a field goes into it under its name instead."""
    content_type = request.headers.get("content-type")
    media = _media_type(content_type)
    if not media:
        raise HTTPException(415, "The request has no Content-Type: send multipart/form-data "
                                 f"with the field '{FILES_FIELD}', or one image as the body with "
                                 f"its type ({ACCEPTED_TYPES_TEXT}).")
    if media != MULTIPART:
        _check_media_type(media, "request body")
        body = await _read_body(request, limit)
        if not body:
            raise HTTPException(422, "The request body is empty: send an image.")
        default = "upload.dcm" if media == "application/dicom" else "upload"
        return [(_clean_name(filename, default), body)]

    body = await _read_body(request, limit)
    files: list[tuple[str, bytes]] = []
    for field_name, file_name, part_media, data in parse_multipart(body, content_type or "",
                                                                    max_parts=max_files):
        if field_name != FILES_FIELD and (extra is None or field_name not in extra):
            raise HTTPException(422, f"Unexpected form field '{_clean_name(field_name, '')}': "
                                     f"send images in the field '{FILES_FIELD}'.")
        name = _clean_name(file_name, f"file-{len(files)}")
        _check_media_type(part_media, name)
        if field_name == FILES_FIELD:
            files.append((name, data))
        elif extra is not None and field_name is not None:
            if extra[field_name] is not None:
                raise HTTPException(422, f"The form field '{field_name}' takes one file.")
            extra[field_name] = (name, data)
    if not files:
        raise HTTPException(422, f"No file in the request: send one or more images in the "
                                 f"multipart form field '{FILES_FIELD}'.")
    return files


async def feedback_form(request: Request, limit: int) -> tuple[str, bytes, str]:
    """``(file name, bytes, label)`` of a ``POST /v1/feedback`` request: multipart/form-data
    with one image in the field ``file`` and its class in the field ``label``; read in
    memory, refused past ``limit`` bytes (413). 415 for another content type or image
    type, 422 for a missing, repeated or unexpected field."""
    content_type = request.headers.get("content-type")
    fields = (f"the image in the field '{FEEDBACK_FILE_FIELD}' and its class in the field "
              f"'{FEEDBACK_LABEL_FIELD}'")
    if _media_type(content_type) != MULTIPART:
        raise HTTPException(415, f"Send multipart/form-data with {fields}.")
    body = await _read_body(request, limit)
    parts = parse_multipart(body, content_type or "", max_parts=FEEDBACK_MAX_PARTS,
                            too_many=f"Too many form fields: send {fields}, nothing else.")
    found: dict[str, tuple[str | None, str, bytes]] = {}
    for field_name, file_name, part_media, data in parts:
        if field_name not in (FEEDBACK_FILE_FIELD, FEEDBACK_LABEL_FIELD):
            raise HTTPException(422, f"Unexpected form field '{_clean_name(field_name, '')}': "
                                     f"send {fields}.")
        if field_name in found:
            raise HTTPException(422, f"The field '{field_name}' is there twice: send one "
                                     "image per request, with its class.")
        found[field_name] = (file_name, part_media, data)
    missing = [f"'{name}'" for name in (FEEDBACK_FILE_FIELD, FEEDBACK_LABEL_FIELD)
               if name not in found]
    if missing:
        raise HTTPException(422, f"Missing form field {' and '.join(missing)}: send {fields}.")
    file_name, part_media, data = found[FEEDBACK_FILE_FIELD]
    name = _clean_name(file_name, "upload")
    _check_media_type(part_media, name)
    raw_label = found[FEEDBACK_LABEL_FIELD][2]
    try:
        label = raw_label.decode("utf-8").strip()
    except UnicodeDecodeError:
        detail = f"The field '{FEEDBACK_LABEL_FIELD}' is not UTF-8 text."
        raise HTTPException(422, detail) from None
    if not label or len(label) > MAX_LABEL_LENGTH:
        raise HTTPException(422, f"The field '{FEEDBACK_LABEL_FIELD}' must name one of the "
                                 "model's classes (GET /v1/model lists them).")
    return name, data, label
