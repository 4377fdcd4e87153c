"""DICOM slices -> 8-bit grayscale images, as a radiologist's viewer would show them.

Order of operations (DICOM PS3.3 C.11): stored values -> modality LUT (rescale slope and
intercept) -> VOI LUT or window centre/width -> MONOCHROME1 inversion -> 8 bits.
Patient identifiers are never read into messages: only the transfer syntax, modality and
frame numbers are ever reported. A file whose header Modality is set and is not MR (a CT
slice, an ultrasound...) is refused before its pixels are decoded.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mri_tumor.data.base import MAX_PIXELS, ImageReadError, NotMRIError, scale_to_uint8
from mri_tumor.data.volume import sequence_named

# All frames together; a compressed multi-frame file can be small on disk and huge decoded.
MAX_DICOM_PIXELS = 4 * MAX_PIXELS
# What common DICOM Modality codes (PS3.3 C.7.3.1.1.1) mean, for the refusal message.
MODALITY_NAMES = {
    "CT": "computed tomography", "CR": "computed radiography", "DX": "digital radiography",
    "US": "ultrasound", "PT": "positron emission tomography", "NM": "nuclear medicine",
    "MG": "mammography", "XA": "X-ray angiography", "RF": "radiofluoroscopy",
    "IO": "intra-oral radiography", "PX": "panoramic X-ray", "ES": "endoscopy",
    "XC": "external-camera photography", "SM": "slide microscopy",
    "OP": "ophthalmic photography", "SC": "secondary capture", "OT": "other",
}


@dataclass
class DicomFrame:
    image: Image.Image  # 8-bit grayscale
    frame: int | None  # 0-based frame number in a multi-frame file, None for single frames
    series: str  # opaque key of the series (a hash, never the UID itself)
    instance: int | None  # InstanceNumber, for ordering slices of a series
    modality: str
    values: np.ndarray | None = None  # raw (modality-LUT) values of a grey single frame
    geometry: dict | None = None  # position, orientation, spacing, and the sequence the
    # header names (for stacking a series)


def read_dicom(data: bytes, name: str, force: bool = False,
               any_modality: bool = False) -> list[DicomFrame]:
    """Decode every frame of a DICOM file into display-ready grayscale images.

    ``force`` reads files without the preamble (only when the name says .dcm).
    Raises ImageReadError naming the transfer syntax when no decoder can read the pixels,
    NotMRIError when the header's Modality is set and is not MR (unless ``any_modality``,
    for benchmarks that show non-MR pixels to the out-of-distribution guard).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError):
        raise ImageReadError(f"{name}: not a readable DICOM file") from None
    modality = modality_code(dataset)
    series_uid = str(dataset.get("SeriesInstanceUID", "")) or hashlib.sha1(data[:4096]).hexdigest()
    series = hashlib.sha256(series_uid.encode()).hexdigest()[:12]
    if not any_modality:
        try:
            check_modality(modality, name)
            check_body_part(dataset, name, modality)
        except NotMRIError as error:
            error.series = series
            raise
    if "PixelData" not in dataset:
        raise ImageReadError(f"{name}: DICOM file holds no image (no pixel data)")
    declared = (int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.get("Rows", 0) or 0)
                * int(dataset.get("Columns", 0) or 0))
    if declared > MAX_DICOM_PIXELS:
        raise ImageReadError(f"{name}: DICOM file declares {declared // 1_000_000} megapixels "
                             f"of image data, more than the {MAX_DICOM_PIXELS // 1_000_000} "
                             "megapixel limit")
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", str(syntax) if syntax else "unknown")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types; all mean "cannot decode"
        text = str(error).lower()
        if "missing" in text or "plugin" in text or "decoder" in text or "not supported" in text:
            raise ImageReadError(f"{name}: DICOM transfer syntax '{syntax_name}' cannot be "
                                 "decoded here (no decoder installed for it)") from None
        raise ImageReadError(f"{name}: DICOM pixel data is damaged or truncated "
                             f"(transfer syntax '{syntax_name}')") from None

    frames_count = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames_count == 1:
        pixels = pixels[None]
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    instance = dataset.get("InstanceNumber")

    geometry = _geometry(dataset) if frames_count == 1 and samples == 1 else None
    if geometry is not None:
        # Only the sequence this names is kept, never the description's text.
        described = " ".join(str(dataset.get(k, "") or "") for k in
                             ("SeriesDescription", "ProtocolName", "SequenceName"))
        geometry["sequence"] = sequence_named(described, bool(dataset.get("ContrastBolusAgent")))
    frames = []
    for index, frame in enumerate(pixels):
        values = None
        if samples > 1:
            image = _colour_frame(frame, photometric, dataset)
        else:
            image = Image.fromarray(_display_values(frame, dataset, photometric))
            if geometry is not None:
                values = _raw_values(frame, dataset, photometric)
        frames.append(DicomFrame(image, index if frames_count > 1 else None, series,
                                 int(instance) if instance not in (None, "") else None, modality,
                                 values, geometry))
    return frames


def _geometry(dataset) -> dict | None:
    """Where a slice lies (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), or
    None when the header does not say."""
    try:
        position = tuple(float(v) for v in dataset.ImagePositionPatient)
        orientation = tuple(float(v) for v in dataset.ImageOrientationPatient)
        spacing = tuple(float(v) for v in dataset.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    if len(position) != 3 or len(orientation) != 6 or len(spacing) != 2 or min(spacing) <= 0:
        return None
    return {"position": position, "orientation": orientation, "spacing": spacing}


def _raw_values(frame: np.ndarray, dataset, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(frame, dataset).astype(np.float32)
    return values.max() + values.min() - values if photometric == "MONOCHROME1" else values


def modality_code(dataset) -> str:
    """The header's Modality code, "" when absent or empty; only letters, digits and
    separators, at most 16 (its VR's limit), so that it is safe to show in one line."""
    try:
        value = dataset.get("Modality", "")
    except Exception:  # a malformed element: treat as absent, like a file without the tag
        return ""
    return re.sub(r"[^A-Za-z0-9_ ]", "", str(value or "")).strip()[:16]


# Codes that say nothing about how the pixels were acquired: an MR slice saved as a secondary
# capture or converted from JPEG (dcmtk's img2dcm writes OT) carries them. Such files go on to
# the content-based guard instead of being refused by the header.
UNSPECIFIC_MODALITIES = {"OT", "SC"}


def check_modality(code: str, name: str) -> None:
    """Raise NotMRIError, naming the modality, unless ``code`` is MR, empty or unspecific
    (OT, SC: judged by content)."""
    if not code or code.upper() == "MR" or code.upper() in UNSPECIFIC_MODALITIES:
        return
    meaning = MODALITY_NAMES.get(code.upper())
    shown = f"{code} ({meaning})" if meaning else code
    raise NotMRIError(f"{name}: DICOM Modality is {shown}, not MR; this model reads brain MRI "
                      "only, so no tumour class is given.", code)


# Body parts a header may name that are not the brain (BodyPartExamined codes of PS3.16 Annex L
# and the words protocols use in series and study descriptions), each with the name shown.
OTHER_BODY_PARTS = {
    "SPINE": "spine", "CSPINE": "cervical spine", "TSPINE": "thoracic spine",
    "LSPINE": "lumbar spine", "SSPINE": "sacral spine", "LUMBAR": "lumbar spine",
    "CERVICAL": "cervical spine", "THORACIC": "thoracic spine", "SACRUM": "sacrum",
    "CHEST": "chest", "THORAX": "chest", "LUNG": "lung", "BREAST": "breast", "HEART": "heart",
    "CARDIAC": "heart", "ABDOMEN": "abdomen", "LIVER": "liver", "KIDNEY": "kidney",
    "PANCREAS": "pancreas", "PELVIS": "pelvis", "PROSTATE": "prostate", "UTERUS": "uterus",
    "SHOULDER": "shoulder", "ELBOW": "elbow", "WRIST": "wrist", "HAND": "hand", "HIP": "hip",
    "KNEE": "knee", "ANKLE": "ankle", "FOOT": "foot", "ARM": "arm", "LEG": "leg",
    "EXTREMITY": "extremity", "THIGH": "thigh",
}
# Words that put the brain in view: a description naming one of these and another part
# ("BRAIN C-SPINE") is left to the content.
BRAIN_WORDS = {"BRAIN", "HEAD", "HEADNECK", "SKULL", "CEREBRUM", "CRANIUM", "NEURO", "ORBIT",
               "PITUITARY", "SELLA", "IAC", "STROKE", "CEREBRAL", "HEADANDNECK"}


def _words(text: str) -> set[str]:
    """The words of a header text, upper case, with "L-SPINE" read as LSPINE."""
    joined = re.sub(r"\b([CTLS])[-_ ]SPINE\b", r"\1SPINE", text.upper())
    return set(re.findall(r"[A-Z]+", joined))


def check_body_part(dataset, name: str, modality: str = "") -> None:
    """Raise NotMRIError, naming the part and the attribute that says so, when the header
    names a body part that is not the brain: BodyPartExamined, else the series or study
    description. Only the known part's name is shown, never the header's own text; a header
    that names no part, or the brain as well, leaves the decision to the content."""
    for keyword in ("BodyPartExamined", "SeriesDescription", "StudyDescription"):
        try:
            words = _words(str(dataset.get(keyword, "") or ""))
        except Exception:  # a malformed element: as if absent
            continue
        if words & BRAIN_WORDS:
            return
        if found := sorted(words & OTHER_BODY_PARTS.keys()):
            part = OTHER_BODY_PARTS[found[0]]
            kind = "MRI" if modality.upper() == "MR" else "image"
            raise NotMRIError(f"{name}: the DICOM header ({keyword}) says this {kind} shows the "
                              f"{part}, not the brain; this model reads brain MRI only, so no "
                              "tumour class is given.", modality or "")


def _display_values(frame: np.ndarray, dataset, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(frame, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset).astype(np.float64)
        out = scale_to_uint8(values)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        out = window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth))
    else:
        out = scale_to_uint8(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI windowing (DICOM PS3.3 C.11.2.1.2.1) to 8 bits."""
    width = max(float(width), 1.0)
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _first(value) -> float:
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def _colour_frame(frame: np.ndarray, photometric: str, dataset) -> Image.Image:
    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        frame = convert_color_space(frame, photometric, "RGB")
    return Image.fromarray(scale_to_uint8(frame), "RGB").convert("L")
