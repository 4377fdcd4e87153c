"""``mri-tumor segment`` without the command line: read the inputs into volumes and slices,
ask the classifier first, outline what it calls a tumour, write each mask on the input's own
geometry and say what was measured.

A volume (NIfTI, or a DICOM series of three or more slices) gets ``<name>.mask.nii.gz``
with the input's affine (voxel for voxel the input's grid); a 2-D slice image gets
``<name>.mask.png`` of its size. A scan the classifier refuses, finds not assessable or
answers with the normal class gets an empty mask and the reason; with ``classifier=None``
every input is outlined.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor.data.reading import Frame, ImageReadError, NotMRIError, read_frames, series_volumes
from mri_tumor.data.volume import (
    Volume,
    axial_stack,
    is_nifti_name,
    looks_like_nifti_bytes,
    on_same_grid,
    read_nifti,
    resample_onto,
)
from mri_tumor.inference.results import format_probability
from mri_tumor.inference.scans import scan_summaries
from mri_tumor.inference.segmentation import Measurement, Segmenter, VolumeMask

logger = logging.getLogger(__name__)

OK, EMPTY, NOT_SEGMENTED, ERROR = "ok", "empty", "not_segmented", "error"


@dataclass
class SegmentationResult:
    """One input's outline: ``status`` ok (tumour outlined), empty (outlined, none found),
    not_segmented (the classifier's answer or the header says why), error (unreadable)."""

    source: str  # the path the user gave
    name: str  # the scan or image as read (a series' folder, a file)
    status: str
    message: str
    mask: str | None = None  # the mask file written
    measurement: Measurement | None = None
    classifier: dict[str, Any] | None = None  # the scan answer the decision rested on
    volume_mask: VolumeMask | None = None  # for front ends that draw it (not serialised)
    image_mask: np.ndarray | None = None
    image: Any = None  # the 2-D slice outlined (a PIL image), for front ends

    def to_dict(self) -> dict[str, Any]:
        """The JSON line of ``mri-tumor segment --json``."""
        m = self.measurement
        return {"segmentation": {
            "source": self.source, "scan": self.name, "status": self.status,
            "mask": self.mask, "volume_ml": m.volume_ml if m else None,
            "slices": m.slices if m else [], "voxels": m.voxels if m else 0,
            "largest_axial_diameter_mm": m.largest_axial_diameter_mm if m else None,
            "classifier": self.classifier, "message": self.message}}


def _mask_name(name: str, suffix: str, taken: set[str]) -> str:
    base = Path(name.split("#")[0]).name or "scan"
    for ending in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".zip",
                   ".tif", ".tiff", ".bmp"):
        if base.lower().endswith(ending):
            base = base[: -len(ending)]
            break
    candidate, n = f"{base}{suffix}", 2
    while candidate in taken:
        candidate, n = f"{base}-{n}{suffix}", n + 1
    taken.add(candidate)
    return candidate


def _given(path: Path, given: Sequence[Path]) -> str:
    """The path the user typed that holds ``path`` (itself, or a folder above it)."""
    for root in given:
        if path == root or root in path.parents:
            return str(root)
    return str(path)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def classifier_answer(summary: dict[str, Any]) -> dict[str, Any]:
    """The parts of a scan summary (``scans.scan_summaries``) an outline rests on."""
    return {key: summary.get(key) for key in ("status", "label", "probability", "message",
                                              "caution")}


class Outliner:
    """Reads inputs, asks the classifier (``predictor``; None: outline everything) and the
    segmenter, and writes the masks into ``out``."""

    def __init__(self, segmenter: Segmenter, predictor: Any | None, out: Path | None,
                 companions: dict[str, Volume] | None = None) -> None:
        """``companions``: for a model that reads further sequences (``card.companions``),
        their volumes by sequence name, of the same session as the (one) volume outlined
        (resampled onto its grid when on another)."""
        self.segmenter = segmenter
        self.predictor = predictor
        self.out = Path(out) if out is not None else None  # None: masks kept in memory only
        self._taken: set[str] = set()
        self.companions = dict(companions or {})
        self.resampled: list[str] = []  # the companions of the last volume moved onto its grid
        wanted = segmenter.card.companions
        if not self.companions:
            segmenter.check_single_sequence()
        elif unknown := sorted(set(self.companions) - set(wanted)):
            raise ValueError(f"this segmentation model reads {', '.join(segmenter.sequences)}"
                             f"; it has no use for {', '.join(unknown)}")

    def run(self, files: Sequence[Path], given: Sequence[Path]) -> list[SegmentationResult]:
        """Outline every input file (folders already expanded); one result per volume,
        DICOM series or slice image, in the order given."""
        return self.run_inputs([(str(path), path, _given(path, given)) for path in files])

    def run_inputs(self, inputs: Sequence[tuple[str, Path | bytes, str]]
                   ) -> list[SegmentationResult]:
        """``run`` for ``(name, path or bytes, source)`` inputs (uploads, say)."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        results: list[SegmentationResult] = []
        frames: list[tuple[Frame, str]] = []
        refused: dict[str, str] = {}  # series key -> the header's refusal
        for name, given, source in inputs:
            try:
                data = given.read_bytes() if isinstance(given, Path) else given
                if is_nifti_name(name) or looks_like_nifti_bytes(data):
                    results.append(self.outline_volume(read_nifti(data, name), source))
                    continue
                try:
                    read = read_frames(data, name)
                except NotMRIError as error:  # keep the geometry for an empty mask
                    read = read_frames(data, name, any_modality=True)
                    for frame in read:
                        refused[frame.series or name] = str(error).split(": ", 1)[-1]
                    if not any(f.series for f in read):
                        results.append(SegmentationResult(source, name, NOT_SEGMENTED,
                                                          f"not segmented: {error}"))
                        continue
                frames.extend((frame, source) for frame in read)
            except (ImageReadError, OSError) as error:
                message = str(error) if isinstance(error, ImageReadError) \
                    else f"{name}: cannot read this file"
                results.append(SegmentationResult(source, name, ERROR, message))
        volumes = series_volumes([frame for frame, _ in frames])
        done: set[str] = set()
        for frame, source in frames:
            series = frame.series
            if series in volumes:
                if series not in done:
                    done.add(series)
                    results.append(self.outline_volume(volumes[series], source,
                                                       refused.get(series)))
            elif (frame.series or frame.name) in refused:
                results.append(SegmentationResult(
                    source, frame.name, NOT_SEGMENTED,
                    f"not segmented: {refused[frame.series or frame.name]}"))
            else:
                results.append(self._image(frame, source))
        return results

    def _target(self, name: str, suffix: str) -> Path | None:
        return self.out / _mask_name(name, suffix, self._taken) if self.out else None

    def outline_volume(self, volume: Volume, source: str, refusal: str | None = None,
                       answer: dict[str, Any] | None = None) -> SegmentationResult:
        """One volume: ask the classifier (on the volume's axial stack) unless its
        ``answer`` (``classifier_answer``) is known already, outline what it calls a tumour,
        write the mask (an empty one, with the reason, otherwise)."""
        import nibabel as nib

        stack = axial_stack(volume)
        try:
            companions = self._companion_stacks(volume, stack)
        except ValueError as error:
            return SegmentationResult(source, volume.name, ERROR, str(error))
        reason = None
        if refusal:
            reason = f"not an MR series ({refusal})"
        elif answer is not None:
            reason = self.skip_reason(answer)
        elif self.predictor is not None:
            frames = [Frame(f"{volume.name}#{k}", stack.picture(stack.windowed[:, :, k]),
                            volume.series, None, int(k), volume.name, volume.note,
                            volume.named_sequence)
                      for k in np.flatnonzero(stack.inside)]
            summaries = scan_summaries(self.predictor.predict_items(frames), self.predictor.card)
            if summaries:
                answer = classifier_answer(summaries[0])
                reason = self.skip_reason(answer)
        target = self._target(volume.name, ".mask.nii.gz")
        if reason:
            if target is not None:
                empty = np.zeros(volume.data.shape, dtype=np.uint8)
                nib.save(nib.Nifti1Image(empty, volume.affine), target)
            return SegmentationResult(source, volume.name, NOT_SEGMENTED,
                                      f"not segmented: {reason}; the mask is empty",
                                      _text(target), Measurement(0, 0.0), answer)
        outlined = self.segmenter.segment_volume(stack, companions)
        if target is not None:
            nib.save(nib.Nifti1Image(outlined.mask.astype(np.uint8), volume.affine), target)
        return self._outlined(source, volume.name, _text(target), outlined.measurement, answer,
                              volume_mask=outlined)

    def _companion_stacks(self, volume: Volume, stack: Any) -> list[Any]:
        """The companions' axial stacks in the card's order (None where not given), cut
        like ``stack``; one on another voxel grid is first resampled onto the volume's
        (``resample_onto``: ValueError when it does not cover the same head)."""
        stacks = []
        self.resampled = []
        for sequence in self.segmenter.card.companions:
            other = self.companions.get(sequence)
            if other is not None and not on_same_grid(other, volume):
                other = resample_onto(other, volume)
                self.resampled.append(sequence)
            stacks.append(axial_stack(other, like=stack) if other is not None else None)
        return stacks

    def _image(self, frame: Frame, source: str) -> SegmentationResult:
        from PIL import Image

        if self.segmenter.card.companions:
            return SegmentationResult(source, frame.name, ERROR,
                                      f"{frame.name}: this segmentation model reads "
                                      f"{', '.join(self.segmenter.sequences)} volumes, not a "
                                      "slice image")
        reason, answer = None, None
        if self.predictor is not None:
            result = self.predictor.predict_items([frame])[0]
            answer = {"status": "ok" if result.status == "ok" else "not_assessable",
                      "label": result.label, "probability": result.confidence,
                      "message": result.message}
            reason = (f"the classifier refused the image ({result.message})"
                      if result.status != "ok" else self.skip_reason(answer))
        target = self._target(frame.name, ".mask.png")
        mask = (np.zeros((frame.image.height, frame.image.width), dtype=bool) if reason
                else self.segmenter.segment_image(frame.image))
        if target is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(target)
        measurement = Measurement(int(mask.sum()), None, [0] if mask.any() else [])
        if reason:
            return SegmentationResult(source, frame.name, NOT_SEGMENTED,
                                      f"not segmented: {reason}; the mask is empty",
                                      _text(target), measurement, answer)
        return self._outlined(source, frame.name, _text(target), measurement, answer,
                              image_mask=mask, image=frame.image)

    def skip_reason(self, answer: dict[str, Any]) -> str | None:
        """Why the classifier's answer means no outline (None: outline it)."""
        if answer["status"] != "ok":
            return f"the classifier could not assess it ({answer['message']})"
        card = self.predictor.card if self.predictor is not None else None
        if card is not None and answer["label"] == card.normal_class:
            reason = (f"the classifier's answer is {card.display_name(answer['label'])} "
                      f"({format_probability(answer['probability'])})")
            if answer.get("caution"):  # the classifier is known to miss tumours here
                reason += (f"; caution: {answer['caution']}; to outline it anyway, skip the "
                           "classifier (segment --no-classifier, or outline_all in the API)")
            return reason
        return None

    def _outlined(self, source: str, name: str, target: str | None, measurement: Measurement,
                  answer: dict[str, Any] | None, **drawn: Any) -> SegmentationResult:
        card = self.segmenter.card
        if not measurement.voxels:
            message = "no tumour outlined"
        elif measurement.volume_ml is not None:
            message = (f"tumour outlined: {measurement.volume_ml:.1f} mL over "
                       f"{len(measurement.slices)} slices, largest axial diameter "
                       f"{measurement.largest_axial_diameter_mm:.0f} mm")
        else:
            message = f"tumour outlined: {measurement.voxels} pixels (no pixel size known)"
        if answer and answer.get("label") not in (None, *card.classes_seen):
            message += (f"; the outline model saw {card.sequence} of "
                        f"{', '.join(card.classes_seen)} only: an outline of a "
                        f"{answer['label']} is less reliable")
        if self.companions:
            moved = (f"; {', '.join(self.resampled)} resampled onto its grid"
                     if self.resampled else "")
            message += f" (read with {', '.join(sorted(self.companions))}{moved})"
        status = OK if measurement.voxels else EMPTY
        return SegmentationResult(source, name, status, message, target, measurement, answer,
                                  **drawn)
