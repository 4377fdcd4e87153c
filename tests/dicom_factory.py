"""Build DICOM files with pydicom from ordinary images, for the tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

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
               instance: int = 1, preamble: bool = True, modality: str | None = "MR") -> Path:
    """Write ``pixels`` (H, W) or (frames, H, W) as a DICOM file with patient fields set
    (``PATIENT``), to a path or a binary buffer; ``modality`` None leaves the tag out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
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
    ds.save_as(path, enforce_file_format=preamble)
    return path  # type: ignore[return-value]
