"""What the predictor answers: one ``Prediction`` per 2-D slice, with its status, calibrated
confidence, probabilities and out-of-distribution score. Research tool, not a diagnosis."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """What became of an input: classified, refused as not a brain MRI, or unreadable."""

    OK = "ok"
    REJECTED = "rejected"  # not a brain MRI slice (by its pixels or its DICOM header)
    ERROR = "error"  # unreadable


OK, REJECTED, ERROR = Status.OK, Status.REJECTED, Status.ERROR


RESULT_KEYS = ("path", "status", "label", "confidence", "probabilities", "ood_score", "message",
               "model")


# Results of a model with a sequence head also carry these.
SEQUENCE_KEYS = ("sequence", "sequence_probabilities")


NOT_MRI_MESSAGE = ("This does not look like a brain MRI slice (judged by its pixels: the "
                   "out-of-distribution guard); no tumour class is given.")
# Added to a verdict whose guard score lies in the card's borderline band.
BORDERLINE_REFUSED = ("Borderline: the guard's score is just above its threshold, so a resized "
                      "or re-saved copy of this image may be accepted.")
BORDERLINE_ACCEPTED = ("Borderline: the guard's score is just below its threshold for \"not a "
                       "brain MRI\"; check that this is a brain MRI slice.")


BLANK_MESSAGE = ("This image is blank (almost one grey level), so it does not look like a brain "
                 "MRI slice; no tumour class is given.")


@dataclass
class Prediction:
    """The result for one image (or one frame of a multi-frame DICOM file)."""

    path: str
    status: Status
    label: str | None = None
    confidence: float | None = None  # calibrated probability of ``label``
    probabilities: dict[str, float] | None = None
    ood_score: float | None = None  # higher = less like the training MRIs
    message: str = ""
    series: str | None = field(default=None, repr=False)  # opaque DICOM series key
    instance: int | None = field(default=None, repr=False)
    display_label: str | None = field(default=None, repr=False)  # ``label`` as the card shows it
    model: str | None = None  # the name of the model that gave it
    sequence: str | None = None  # MR sequence (models with a sequence head)
    sequence_probabilities: dict[str, float] | None = None
    slice_index: int | None = None  # position in its scan's axial stack (volumes, series)
    scan: str | None = field(default=None, repr=False)  # the scan, as the user named it
    note: str = field(default="", repr=False)  # about the scan, for its summary
    named_sequence: str = field(default="", repr=False)  # what the scan's name or header says
    by_header: bool = field(default=False, repr=False)  # refused by its DICOM header
    resembles: str | None = None  # a content refusal: the kind of image it looks like most

    def to_dict(self) -> dict[str, Any]:
        """The public result: ``RESULT_KEYS``, plus ``SEQUENCE_KEYS`` when it names a
        sequence (what the CLI and API emit)."""
        keys = RESULT_KEYS + (SEQUENCE_KEYS if self.sequence is not None else ())
        if self.slice_index is not None:
            keys += ("slice_index",)
        if self.resembles is not None:
            keys += ("resembles",)
        return {key: getattr(self, key) for key in keys}


def format_probability(p: float | None) -> str:
    """A probability as every front end shows it: a percentage with one decimal, never
    "100.0%" or "0.0%" (the model is never certain): "> 99.9%" and "< 0.1%" instead. None
    (no probability: a rejected or unreadable input) gives ""."""
    if p is None:
        return ""
    text = f"{p:.1%}"
    if text == "100.0%" or p > 1:
        return "> 99.9%"
    if text in ("0.0%", "-0.0%") or p < 0:
        return "< 0.1%"
    return text
