"""Site data: images whose label a user confirmed (or corrected), kept for fine-tuning.

When ``MRI_TUMOR_SITE_DATA=DIR`` is set, the app and the API let users confirm the class of
an analysed image; :func:`store_confirmed_case` then stores it as

    DIR/<label>/<sha256>.png

an 8-bit grey PNG of the pixels the model reads (a DICOM file is decoded as for a
prediction, its first frame unless told otherwise) and nothing else: no DICOM header field,
no text, EXIF or colour-profile chunk, no file name. The name is the SHA-256 of the grey
pixels and the image size, so the same image confirmed twice is stored once, whatever file
format it came in; an existing file is never overwritten. The layout is the one-folder-per-
class layout that training reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mri_tumor.data.reading import ImageReadError, ImageSource, read_frames

SITE_DATA_ENV = "MRI_TUMOR_SITE_DATA"
SITE_SUFFIX = ".png"


@dataclass(frozen=True)
class StoredCase:
    """Where a confirmed image is stored, and whether this call stored it."""

    path: Path  # site_dir/<label>/<sha256>.png
    label: str
    new: bool  # False: the same image was already stored under this label
    # Other classes under which the same image is stored too (an earlier, other answer).
    also_labelled: tuple[str, ...] = ()

    @property
    def relative(self) -> str:
        """``<label>/<sha256>.png``: the path inside the site-data folder."""
        return f"{self.label}/{self.path.name}"


def site_data_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The site-data folder that ``MRI_TUMOR_SITE_DATA`` names (in ``environ``, default the
    process environment); None when the variable is unset or empty: collecting is off."""
    value = (os.environ if environ is None else environ).get(SITE_DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def check_label(label: str, class_names: Sequence[str]) -> str:
    """``label`` when it is one of ``class_names`` (and a plain folder name); else a
    ValueError, in one line, that names the classes."""
    if label not in class_names:
        shown = label if len(label) <= 80 else label[:80] + "..."
        raise ValueError(f"Unknown class {shown!r}: use one of the model's classes "
                         f"({', '.join(class_names)}).")
    if (not label or label in (".", "..") or any(c in label for c in "/\\\x00")
            or label != label.strip()):
        raise ValueError(f"The class {label!r} cannot be a folder name; it cannot be stored.")
    return label


def pixel_digest(image: Image.Image) -> str:
    """The SHA-256 (hex) of an 8-bit grey image's size and pixels: the stored file's name."""
    grey = image if image.mode == "L" else image.convert("L")
    digest = hashlib.sha256(f"{grey.width}x{grey.height}\n".encode())
    digest.update(grey.tobytes())
    return digest.hexdigest()


def store_confirmed_case(source: ImageSource, label: str, site_dir: Path | str,
                         class_names: Sequence[str], *, frame: int = 0,
                         name: str | None = None) -> StoredCase:
    """Store the image ``source`` (path, bytes, PIL image or array; any image or DICOM) as
    a confirmed case of class ``label`` under ``site_dir/<label>/``.

    The input is decoded as for a prediction (``mri_tumor.data.reading``; ``frame``: which
    frame of a multi-frame DICOM file, default the first) and written as an 8-bit grey PNG
    without any metadata, named by :func:`pixel_digest`. The same image twice is stored once
    (``new`` False the second time); an existing file is never overwritten.

    Raises ValueError (one line, naming the classes) for a label not in ``class_names``,
    before anything is read; ImageReadError (a ValueError, one line) for an unreadable input
    (``name`` labels it in the message, default as the readers do); FileExistsError if a
    different file already has the name; OSError if the folder cannot be written.
    """
    check_label(label, class_names)
    grey = _decode(source, frame, name)
    digest = pixel_digest(grey)
    site = Path(site_dir)
    folder = site / label
    target = folder / f"{digest}{SITE_SUFFIX}"
    folder.mkdir(parents=True, exist_ok=True)
    new = _write_once(grey, target)
    also = tuple(other for other in class_names if other != label
                 and (site / other / target.name).is_file())
    return StoredCase(target, label, new, also)


def _decode(source: ImageSource, frame: int, name: str | None) -> Image.Image:
    """The input's frame as a fresh 8-bit grey image that carries nothing but its pixels."""
    try:
        frames = read_frames(source, name)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{name or 'upload'}: too large to read in the memory "
                             "available") from None
    except Exception:  # any decoder failure is an unreadable file, never a crash
        raise ImageReadError(f"{name or 'upload'}: cannot read this file") from None
    if not 0 <= frame < len(frames):
        raise ImageReadError(f"{name or 'upload'}: has no frame {frame} "
                             f"({len(frames)} frame(s))")
    pixels = np.asarray(frames[frame].image.convert("L"), dtype=np.uint8)
    # Rebuilt from the pixel array: no ``info`` (DICOM, EXIF, ICC or text) can travel along.
    return Image.fromarray(np.ascontiguousarray(pixels))  # 2-D uint8: mode "L"


def _png_bytes(grey: Image.Image) -> bytes:
    """A plain grey PNG: IHDR, IDAT and IEND only."""
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _write_once(grey: Image.Image, target: Path) -> bool:
    """Write ``grey`` to ``target`` unless it is there already; True when written.

    The file is written under a temporary name and then linked into place, which fails when
    the name exists: two writers at once store it once, and a reader never sees half a file.
    """
    if target.exists():
        _check_same(target, grey)
        return False
    handle, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(_png_bytes(grey))
        try:
            os.link(temporary, target)
        except FileExistsError:
            _check_same(target, grey)
            return False
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                with open(target, "xb") as file:
                    file.write(Path(temporary).read_bytes())
            except FileExistsError:
                _check_same(target, grey)
                return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _check_same(target: Path, grey: Image.Image) -> None:
    """FileExistsError unless ``target`` holds these very pixels."""
    try:
        with Image.open(target) as stored:
            same = (stored.mode == "L" and stored.size == grey.size
                    and stored.tobytes() == grey.tobytes())
    except (OSError, ValueError, SyntaxError):
        same = False
    if not same:
        raise FileExistsError(f"{target}: a different file already has this name; "
                              "it was left as it is")


__all__ = ["SITE_DATA_ENV", "StoredCase", "check_label", "pixel_digest", "site_data_dir",
           "store_confirmed_case"]
