"""Decode any image a user has (8/16-bit, grayscale, RGB, RGBA, palette, DICOM) into 8-bit
grayscale frames."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mri_tumor.data.base import (  # re-exported: the readers' shared limits and errors
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_MB,
    MIB,
    ImageReadError,
    NotMRIError,
    scale_to_uint8,
    too_large_message,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
ImageSource = str | Path | bytes | Image.Image | np.ndarray
# A zip of a study: at most this many files and this many bytes unpacked.
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_BYTES = 1024 * 1024 * 1024


@dataclass
class Frame:
    """One 2-D slice decoded from an input; a multi-frame DICOM file gives several."""

    name: str  # the input's name, plus "#<frame>" for frames of a multi-frame file
    image: Image.Image  # 8-bit grayscale
    series: str | None = None  # opaque DICOM series (or volume) key, None for images
    instance: int | None = None  # DICOM InstanceNumber
    slice_index: int | None = None  # position in its scan's axial stack (volumes, series)
    scan: str | None = None  # the scan it belongs to, as the user named it (volumes, series)
    note: str = ""  # about the scan (e.g. slices missing), said once in its summary
    named_sequence: str = ""  # the MR sequence the scan's file name or header names
    # A DICOM slice's raw values and geometry, kept until its series is stacked.
    values: np.ndarray | None = field(default=None, repr=False)
    geometry: dict | None = field(default=None, repr=False)


def read_frames(source: ImageSource, name: str | None = None,
                any_modality: bool = False) -> list[Frame]:
    """Decode any input (ordinary image or DICOM, by content) into grayscale frames.

    ``name`` labels the input in messages (default: its path, or "upload").
    Raises ImageReadError with a one-line reason for bad inputs, NotMRIError (a subclass)
    for a DICOM file whose Modality is not MR (unless ``any_modality``: for fitting and
    measuring the guard on non-MR pixels).
    """
    if isinstance(source, Image.Image | np.ndarray):
        return [Frame(name or "image", read_image(source))]
    data, label, suffix = _load_bytes(source, name)
    from mri_tumor.data.volume import is_nifti_name, looks_like_nifti_bytes

    if is_nifti_name(label) or looks_like_nifti_bytes(data):
        return volume_frames(data, label)
    if data[:4] == b"PK\x03\x04" or suffix == ".zip":
        return zip_frames(data, label)
    if looks_like_dicom_bytes(data) or suffix in DICOM_EXTENSIONS:
        from mri_tumor.data.dicom import read_dicom

        frames = read_dicom(data, label, force=not looks_like_dicom_bytes(data),
                            any_modality=any_modality)
        return [Frame(label if f.frame is None else f"{label}#{f.frame}", f.image, f.series,
                      f.instance, values=f.values, geometry=f.geometry) for f in frames]
    return [Frame(label, to_grayscale(_decode_bytes(data, label)))]


def volume_frames(data: bytes, name: str) -> list[Frame]:
    """A NIfTI file's axial slices as frames of one scan (``data.volume``)."""
    from mri_tumor.data.volume import axial_slices, read_nifti

    volume = read_nifti(data, name)
    return [Frame(f"{name}#{index}", image, volume.series, None, index, name, volume.note,
                  volume.named_sequence)
            for index, image, _ in axial_slices(volume)]


def zip_frames(data: bytes, name: str) -> list[Frame]:
    """Every image, DICOM file and NIfTI volume inside a zip archive (a study exported from
    a viewer), named ``<zip>/<member>``; members that are not images are passed over. A zip
    whose DICOM files all say another modality raises that NotMRIError once."""
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()
                   and not m.filename.startswith("__MACOSX/")
                   and not Path(m.filename).name.startswith(".")]
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ImageReadError(f"{name}: not a readable zip archive") from None
    if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
        raise ImageReadError(f"{name}: zip archive holds more than {MAX_ZIP_MEMBERS} files or "
                             f"{MAX_ZIP_BYTES // MIB} MB")
    frames: list[Frame] = []
    refusal: NotMRIError | None = None
    for member in sorted(members, key=lambda m: m.filename):
        label = f"{name}/{member.filename}"
        try:
            frames.extend(read_frames(archive.read(member), label))
        except NotMRIError as error:
            refusal = refusal or error
        except (ImageReadError, OSError, zipfile.BadZipFile, ValueError):
            continue
    if not frames:
        if refusal is not None:
            raise NotMRIError(f"{name}: {refusal}".replace(f"{name}: {name}/", f"{name}/"),
                              refusal.modality, refusal.series)
        raise ImageReadError(f"{name}: zip archive holds no readable image, DICOM or NIfTI file")
    return frames


def series_volumes(items: Sequence[Any]) -> dict[str, Any]:
    """Series key -> its ``data.volume.Volume``, for each DICOM series among the decoded
    inputs whose single-slice frames (three or more, one geometry) stack into one; named by
    the series' common folder."""
    from mri_tumor.data.volume import dicom_series_volume

    by_series: dict[str, list[Frame]] = {}
    for item in items:
        if isinstance(item, Frame) and item.series and item.values is not None \
                and item.geometry is not None:
            by_series.setdefault(item.series, []).append(item)
    volumes = {}
    for series, members in by_series.items():
        scan = _common_folder([f.name for f in members])
        volume = dicom_series_volume([(f.values, f.geometry, f.name) for f in members
                                      if f.values is not None and f.geometry is not None],
                                     scan, series)
        if volume is not None:
            volumes[series] = volume
    return volumes


def upload_volumes(uploads: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Series key -> its ``data.volume.Volume`` for each NIfTI file and each DICOM series
    (loose files or inside a zip) among uploaded ``(name, bytes)``; anything else, and what
    cannot be read, is passed over (the scan's own reading reports it)."""
    from mri_tumor.data.volume import is_nifti_name, looks_like_nifti_bytes, read_nifti

    volumes: dict[str, Any] = {}
    frames: list[Frame] = []
    for name, data in uploads:
        try:
            if is_nifti_name(name) or looks_like_nifti_bytes(data):
                volume = read_nifti(data, name)
                volumes[volume.series] = volume
            else:
                frames.extend(read_frames(data, name))
        except ImageReadError:
            continue
    volumes.update(series_volumes(frames))
    return volumes


def stack_series(items: Sequence[Any]) -> list[Any]:
    """Decoded inputs with each DICOM series of three or more single-slice frames that share
    a geometry replaced by its axial stack (``data.volume``): sorted along the slice normal,
    windowed once per series, reformatted when acquired in another plane, at the place of
    the series' first file. Everything else (other frames, and items that are not frames,
    such as the results of inputs that failed) stays as it is, in its order."""
    from mri_tumor.data.volume import axial_slices

    stacked: dict[str, list[Frame]] = {}
    for series, volume in series_volumes(items).items():
        stacked[series] = [
            Frame(native or f"{volume.name}#{index}", image, series, None, index, volume.name,
                  volume.note, volume.named_sequence)
            for index, image, native in axial_slices(volume)]
    out: list[Any] = []
    placed: set[str] = set()
    for item in items:
        item_series = item.series if isinstance(item, Frame) else None
        if item_series is None or item_series not in stacked:
            out.append(item)
        elif item_series not in placed:  # later files of the series are in the stack already
            out.extend(stacked[item_series])
            placed.add(item_series)
    return out


def _common_folder(names: list[str]) -> str:
    import os

    if len(names) == 1:
        return names[0]
    try:
        common = os.path.commonpath(names)
    except ValueError:
        return names[0]
    return common or names[0]


def read_image(source: ImageSource) -> Image.Image:
    """Decode ``source`` (path, bytes, PIL image or array) into an 8-bit grayscale PIL image.

    DICOM is read by content; a multi-frame DICOM file gives its first frame (use
    ``read_frames`` for all). Raises ImageReadError with a one-line reason for empty,
    truncated, oversized or unsupported inputs.
    """
    if isinstance(source, Image.Image):
        return to_grayscale(source)
    if isinstance(source, np.ndarray):
        return to_grayscale(_array_to_image(source))
    return read_frames(source)[0].image


def not_a_file_reason(path: Path) -> str:
    """Why a path is not a readable regular file."""
    if not path.exists():
        return "broken link" if path.is_symlink() else "no such file"
    if path.is_dir():
        return "is a folder, not an image"
    return "not a regular file (a pipe, socket or device)"


def looks_like_dicom_bytes(data: bytes) -> bool:
    """True when the bytes carry the DICOM preamble magic ("DICM" at offset 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _load_bytes(source: str | Path | bytes | bytearray | memoryview,
                name: str | None) -> tuple[bytes, str, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        label = name or "upload"
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():  # never open a pipe or device: reading it could block
            raise ImageReadError(f"{label}: {not_a_file_reason(path)}")
        size = path.stat().st_size
        from mri_tumor.data.volume import MAX_VOLUME_BYTES, is_nifti_name

        scan_file = is_nifti_name(label) or label.lower().endswith(".zip")
        if size > (MAX_VOLUME_BYTES if scan_file else MAX_UPLOAD_BYTES):
            raise ImageReadError(too_large_message(label, size))
        data = path.read_bytes()
    if not data:
        raise ImageReadError(f"{label}: empty file")
    return data, label, Path(label).suffix.lower()


def _decode_bytes(data: bytes, name: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageReadError(f"{name}: image is {width} x {height} pixels, larger than "
                                     f"the {MAX_PIXELS // 1_000_000} megapixel limit")
            image.load()
            return ImageOps.exif_transpose(image) or image
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not a supported image (expected JPEG, PNG, BMP, TIFF "
                             "or DICOM)") from None
    except Image.DecompressionBombError:
        raise ImageReadError(f"{name}: image is larger than the {MAX_PIXELS // 1_000_000} "
                             "megapixel limit") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{name}: damaged or truncated image ({error})") from None


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(scale_to_uint8(array))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(scale_to_uint8(array), "RGB" if array.shape[2] == 3 else "RGBA")
    raise ImageReadError(f"array of shape {array.shape} is not an image (expected HxW, HxWx3 "
                         "or HxWx4)")


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit grayscale ("L"). Transparent pixels become black background."""
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(scale_to_uint8(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


__all__ = ["DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_UPLOAD_BYTES",
           "MAX_UPLOAD_MB", "MIB", "Frame", "ImageReadError", "ImageSource", "NotMRIError",
           "looks_like_dicom_bytes", "not_a_file_reason", "read_frames", "read_image",
           "scale_to_uint8", "to_grayscale", "too_large_message"]
