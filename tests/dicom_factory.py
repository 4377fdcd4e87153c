"""Build DICOM files with pydicom from ordinary images, for the tests."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PATIENT = {"PatientName": "Doe^Jane^Sensitive", "PatientID": "PID-7731-SECRET",
           "PatientBirthDate": "19610214"}


def dicom_bytes(pixels: np.ndarray, **options: object) -> bytes:
    """``make_dicom`` into memory: the bytes of a Part 10 file (with preamble)."""
    buffer = io.BytesIO()
    make_dicom(pixels, buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def make_dicom(pixels: np.ndarray, path: Path | io.BytesIO, *, bits: int = 16,
               photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0,
               window: tuple[float, float] | None = None, series_uid: str | None = None,
               instance: int = 1, preamble: bool = True, modality: str | None = "MR",
               study_uid: str | None = None, sop_class: str = MRImageStorage,
               attributes: Mapping[str, object] | None = None) -> Path:
    """Write ``pixels`` (H, W) or (frames, H, W) as a DICOM file with patient fields set
    (``PATIENT``), to a path or a binary buffer; ``modality`` None leaves the tag out.
    ``attributes`` (keyword -> value) are set last, over the defaults."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.InstanceNumber = instance
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    frames = pixels if pixels.ndim == 3 else None
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames is not None:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    for key, value in (attributes or {}).items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)
    return path  # type: ignore[return-value]


# Study-level identifiers besides ``PATIENT`` that ``make_mr_study`` sets: like the patient
# fields, none of them should ever appear in what the product writes.
STUDY_IDENTIFIERS = {"AccessionNumber": "ACC-5521-SECRET",
                     "ReferringPhysicianName": "Referrer^Robert^Sensitive"}
STUDY_DATE, STUDY_TIME = "20240315", "101500"
# Sequence parameters of the MR series, in order: description, (TR, TE) in ms.
MR_SERIES = [("T1 axial", (500.0, 15.0)), ("T2 axial", (4000.0, 100.0)),
             ("T1C+ axial", (550.0, 12.0)), ("FLAIR axial", (9000.0, 120.0))]
SLICE_THICKNESS, SLICE_GAP = 5.0, 1.0


def _plane(rows: int, columns: int, slice_index: int, field_of_view: float = 220.0
           ) -> dict[str, object]:
    """Image Plane attributes of an axial slice centred on the isocentre."""
    spacing = round(field_of_view / max(rows, columns), 6)
    return {"PixelSpacing": [spacing, spacing], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "ImagePositionPatient": [-spacing * columns / 2, -spacing * rows / 2,
                                     slice_index * (SLICE_THICKNESS + SLICE_GAP)],
            "SliceThickness": SLICE_THICKNESS,
            "SliceLocation": slice_index * (SLICE_THICKNESS + SLICE_GAP)}


def _series(number: int, description: str, modality: str) -> dict[str, object]:
    """Series-level attributes shared by every image of one series."""
    return {"SeriesNumber": number, "SeriesDescription": description,
            "SeriesDate": STUDY_DATE,
            "SeriesTime": f"{10 + number // 60:02d}{number % 60:02d}00",
            "FrameOfReferenceUID": generate_uid(), "PositionReferenceIndicator": "",
            "BodyPartExamined": "HEAD", "PatientPosition": "HFS",
            "Manufacturer": "ACME Medical", "ManufacturerModelName": "Test Scanner",
            "InstitutionName": "Test Hospital", "StationName": "SCANNER1",
            "ProtocolName": f"BRAIN {description}", "Modality": modality}


def _head_disc(size: int = 64) -> np.ndarray:
    """A synthetic axial CT head in Hounsfield units: air, a skull ring, brain inside."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(x / 0.8, y) / (size / 2)  # a little narrower than long
    hu = np.full((size, size), -1000.0)
    hu[radius < 0.9] = 1000.0  # bone
    hu[radius < 0.8] = 35.0  # brain
    hu[np.hypot(x, y + size / 8) < size / 16] = 5.0  # a ventricle
    return hu


def make_mr_study(images: list[Path], *, study_uid: str | None = None, series_count: int = 1,
                  ct_slice: bool = False) -> list[bytes]:
    """One brain MR study as DICOM Part 10 files (MR Image Storage), one per image.

    Each image (a JPEG fixture, read as 8-bit grey) becomes a 16-bit slice whose window
    (128/256) shows exactly the grey values; the images are split in order across
    ``series_count`` series (descriptions "T1 axial", "T2 axial"...; InstanceNumber 1..n
    in each), all in one study (``study_uid``, or a new one) carrying ``PATIENT`` and
    ``STUDY_IDENTIFIERS``. ``ct_slice`` adds one CT Image Storage slice (a 64 x 64 head,
    RescaleIntercept -1024) in a series of its own, last."""
    study_uid = study_uid or generate_uid()
    study = {"StudyDate": STUDY_DATE, "StudyTime": STUDY_TIME, "StudyID": "1",
             "StudyDescription": "MRI BRAIN", "PatientSex": "F", **STUDY_IDENTIFIERS}
    files: list[bytes] = []
    for number, chunk in enumerate(np.array_split(np.arange(len(images)), series_count), 1):
        description, (repetition, echo) = MR_SERIES[(number - 1) % len(MR_SERIES)]
        series = {**study, **_series(number, description, "MR"),
                  "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "ScanningSequence": "SE",
                  "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "2D",
                  "RepetitionTime": repetition, "EchoTime": echo, "EchoTrainLength": 1,
                  "MagneticFieldStrength": 1.5, "ImagingFrequency": 63.87,
                  "ImagedNucleus": "1H"}
        series_uid = generate_uid()
        for instance, index in enumerate(chunk, 1):
            with Image.open(images[index]) as image:
                pixels = np.asarray(image.convert("L"))
            files.append(dicom_bytes(
                pixels, bits=16, window=(128.0, 256.0), series_uid=series_uid,
                instance=instance, study_uid=study_uid, attributes={
                    **series, **_plane(*pixels.shape, instance - 1),
                    "AcquisitionNumber": 1, "ContentDate": STUDY_DATE,
                    "ContentTime": series["SeriesTime"]}))
    if ct_slice:
        hu = _head_disc()
        files.append(dicom_bytes(
            hu + 1024, bits=16, intercept=-1024.0, window=(40.0, 80.0), modality="CT",
            sop_class=CTImageStorage, study_uid=study_uid, attributes={
                **study, **_series(series_count + 1, "CT head", "CT"), **_plane(*hu.shape, 0),
                "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "BitsStored": 12,
                "HighBit": 11, "RescaleType": "HU", "KVP": 120.0, "AcquisitionNumber": 1,
                "ContentDate": STUDY_DATE, "ContentTime": STUDY_TIME}))
    return files
