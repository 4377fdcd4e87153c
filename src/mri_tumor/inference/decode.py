"""The one decode path: an input (path, bytes, array, PIL image) -> its grey frames, or the
result that says why there are none; DICOM series stacked into scans."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mri_tumor.data.reading import (
    Frame,
    ImageReadError,
    ImageSource,
    NotMRIError,
    read_frames,
    stack_series,
)
from mri_tumor.inference.results import ERROR, REJECTED, Prediction, Status

logger = logging.getLogger(__name__)


def decode(source: ImageSource, name: str, model: str | None = None) -> list[Frame] | Prediction:
    """The one way an input becomes model frames: its 2-D grey frames, or the result that
    says why there are none (``rejected`` for a DICOM file whose header says CT, US...;
    ``error`` for anything unreadable), naming ``model``. Never raises for a bad input."""
    def failed(status: Status, message: str) -> Prediction:
        return Prediction(name, status, message=message, model=model)

    try:
        frames = read_frames(source, name)
    except NotMRIError as error:
        refused = failed(REJECTED, str(error))
        refused.by_header = True
        if error.series:  # the files of one series get one refusal for the series
            refused.series = error.series
            refused.scan = str(Path(name).parent) if isinstance(source, str | Path) else name
        return refused
    except ImageReadError as error:
        return failed(ERROR, str(error))
    except MemoryError:
        return failed(ERROR, f"{name}: too large to read in the memory available")
    except OSError as error:
        return failed(ERROR, f"{name}: cannot read this file "
                             f"({error.strerror or type(error).__name__})")
    except Exception as error:  # any decoder failure is a bad file, never a crash
        logger.warning("decoding an input failed: %s", type(error).__name__)
        return failed(ERROR, f"{name}: cannot read this file")
    if not frames:
        return failed(ERROR, f"{name}: holds no image")
    return frames


def assemble_scans(items: Sequence[Prediction | Frame]) -> list[Prediction | Frame]:
    """Decoded inputs in order, with the slices of each DICOM series stacked into one axial
    scan (``data.reading.stack_series``); failed inputs stay where they were."""
    return stack_series(items)


def default_name(source: object, index: int) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return f"input-{index}"
