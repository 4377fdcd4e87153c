"""Inference stage: one predictor that the CLI, the web app, the HTTP API and PACS all use.

    from mri_tumor import Predictor
    predictor = Predictor.load()            # the shipped model, loaded once
    results = predictor.predict(["a.jpg", "b.dcm", "scan.nii.gz"])

Each input gives one result per 2-D slice (a multi-frame DICOM file, a series or a volume
gives several), with a calibrated confidence, all class probabilities and an out-of-
distribution score. Inputs that do not look like brain MRI slices, or DICOM files whose
header says another modality (CT...), are ``rejected``; unreadable ones are ``error``.
``scans.scan_summaries`` turns the slices of each scan into one answer. Research tool, not a
diagnosis.

Modules: ``results`` (what an answer holds), ``decode`` (input -> frames), ``predictor`` (the
batching loop), ``backends`` (torch, ONNX Runtime), ``model_folder`` (model names, the served
network, the ONNX cache), ``export`` (ONNX files), ``scans`` (one answer per scan and study),
``registry`` (models kept under a name).
"""

from mri_tumor.inference.backends import BACKENDS, DEFAULT_BACKEND, OnnxBackend, TorchBackend
from mri_tumor.inference.decode import assemble_scans, decode
from mri_tumor.inference.model_folder import (
    SHIPPED_MODELS,
    ensure_onnx_file,
    load_served,
    resolve_model,
)
from mri_tumor.inference.predictor import Predictor, unsure_message
from mri_tumor.inference.results import (
    BLANK_MESSAGE,
    ERROR,
    NOT_MRI_MESSAGE,
    OK,
    REJECTED,
    RESULT_KEYS,
    SEQUENCE_KEYS,
    Prediction,
    Status,
)

__all__ = ["BACKENDS", "BLANK_MESSAGE", "DEFAULT_BACKEND", "ERROR", "NOT_MRI_MESSAGE", "OK",
           "REJECTED", "RESULT_KEYS", "SEQUENCE_KEYS", "SHIPPED_MODELS", "OnnxBackend",
           "Prediction", "Predictor", "Status", "TorchBackend", "assemble_scans", "decode",
           "ensure_onnx_file", "load_served", "resolve_model", "unsure_message"]
