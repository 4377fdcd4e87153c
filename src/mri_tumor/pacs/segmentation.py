"""Outline the tumour on a study's FLAIR series and write the outline back as a DICOM
Segmentation (highdicom), measured in the report.

Per MR series whose header names the segmentation model's sequence (``card.sequence``,
FLAIR): stack its slices (``data.volume``, the path of ``mri-tumor segment``), let the
classifier answer on the stack and outline what it calls a tumour (``inference.outlining``).
Where the study also holds a T1 or T1C+ series in the FLAIR's frame of reference, the
FLAIR + T1 + T1C+ model reads them with it (resampled onto the FLAIR's grid).
A series with an outline gets one DICOM Segmentation: BINARY, one segment "FLAIR
abnormality" (SCT Neoplasm), algorithm type AUTOMATIC, its frames referencing the source
images, labelled research output that no clinician has verified. The report then carries the
volume and the largest axial diameter as a TID 1411 measurement group referencing that
segment (``pacs.results.build_report``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from mri_tumor import __version__
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.volume import Volume, dicom_series_volume
from mri_tumor.inference.identity import ModelIdentity
from mri_tumor.inference.outlining import OK as OUTLINED
from mri_tumor.inference.outlining import Outliner, classifier_answer
from mri_tumor.inference.scans import scan_summaries
from mri_tumor.inference.segmentation import Measurement, Segmenter
from mri_tumor.pacs.results import MANUFACTURER, AnalysedImage, date_series, result_uid

SEGMENTATION_SERIES_NUMBER = 9903
SEGMENTATION_DESCRIPTION = "mri-tumor tumour outline: research, NOT FOR DIAGNOSIS"
# An inversion-recovery series with an inversion time this long (ms) is FLAIR-like even
# when its description does not say so (STIR uses about 150 ms).
FLAIR_MIN_INVERSION_MS = 1500.0


@dataclass
class SeriesOutline:
    """What outlining one series did: a Segmentation and its measurement, or the reason
    there is none."""

    series_number: str
    series_uid: str
    message: str
    measurement: Measurement | None = None
    segmentation: Dataset | None = None
    model: ModelIdentity | None = None  # the segmentation model that drew it


@dataclass
class Outlining:
    """What ``--segment`` adds: the segmentation models and their identities. ``multi``
    (a model with ``card.companions``) reads a FLAIR series together with the study's T1 and
    T1C+ series where the study has one of them in the FLAIR's frame of reference;
    ``single`` (FLAIR alone) reads the others."""

    single: tuple[Segmenter, ModelIdentity] | None
    multi: tuple[Segmenter, ModelIdentity] | None = None

    @classmethod
    def load(cls, folder: Path | None = None) -> Outlining:
        """The model in ``folder`` (as ``single`` or ``multi``, by its card), or the two
        shipped ones."""
        from mri_tumor.inference.segmentation import SHIPPED_MULTI_SEGMENTER

        if folder is None:
            return cls(_loaded(None), _loaded(SHIPPED_MULTI_SEGMENTER))
        pair = _loaded(folder)
        return cls(None, pair) if pair[0].card.companions else cls(pair)


def _loaded(folder: Path | None) -> tuple[Segmenter, ModelIdentity]:
    segmenter = Segmenter.load(folder)
    return segmenter, segmenter_identity(segmenter, folder)


def segmenter_identity(segmenter: Segmenter, folder: Path | None) -> ModelIdentity:
    """The segmentation model's name (its folder's), card version and weights hash."""
    from mri_tumor.inference.segmentation import SHIPPED_SEGMENTER

    directory = Path(folder or SHIPPED_SEGMENTER)
    return ModelIdentity(directory.name, segmenter.card.version,
                         ModelCard.weights_sha256(directory))


def names_sequence(dataset: Dataset, sequence: str) -> bool:
    """Whether the series header says it is ``sequence`` (its description, protocol or
    sequence name; for FLAIR also a long inversion time)."""
    text = " ".join(str(dataset.get(keyword, "") or "")
                    for keyword in ("SeriesDescription", "ProtocolName", "SequenceName"))
    if re.search(rf"(?<![a-z]){re.escape(sequence.lower())}", text.lower()):
        return True
    if sequence.upper() == "FLAIR":
        try:
            inversion = float(dataset.get("InversionTime", 0) or 0)
        except (TypeError, ValueError):
            inversion = 0.0
        return inversion >= FLAIR_MIN_INVERSION_MS
    return False


# What in a T1 series' header says that a contrast agent was given (T1C+).
CONTRAST_WORDS = re.compile(r"post|gad|contrast|(?<![a-z])(gd|ce)(?![a-z])|\+\s*c(?![a-z])"
                            r"|(?<![a-z])c\s*\+")


def header_sequence(dataset: Dataset) -> str | None:
    """The sequence a series header names, of those the outline models read: FLAIR, T1C+
    (a T1 with ContrastBolusAgent, or "post", "+C", "Gd" ... in its description), T1, or
    None."""
    if names_sequence(dataset, "FLAIR"):
        return "FLAIR"
    if not names_sequence(dataset, "T1"):
        return None
    text = " ".join(str(dataset.get(keyword, "") or "")
                    for keyword in ("SeriesDescription", "ProtocolName", "SequenceName"))
    agent = str(dataset.get("ContrastBolusAgent", "") or "").strip()
    return "T1C+" if agent or CONTRAST_WORDS.search(text.lower()) else "T1"


def outline_series(outlining: Outlining, predictor: Any | None,
                   analysed: Sequence[AnalysedImage], scope: str) -> list[SeriesOutline]:
    """Outline every MR series of ``analysed`` whose header names FLAIR; one
    ``SeriesOutline`` per single-frame series, in the order met."""
    # The classifier's scan answers, as the report gives them: the gate of each outline.
    answers = {summary["series"]: classifier_answer(summary) for summary in scan_summaries(
        [item.result for item in analysed], predictor.card)} if predictor is not None else {}
    by_series: dict[str, list[AnalysedImage]] = {}
    seen: set[int] = set()
    for image in (image for item in analysed for image in item.instances):
        if image.frame is None and image.decoded is not None and id(image) not in seen:
            seen.add(id(image))
            by_series.setdefault(str(image.source.SeriesInstanceUID), []).append(image)
    outlines = []
    for series_uid, members in by_series.items():
        first = members[0].source
        number = str(first.get("SeriesNumber", "") or "?")
        if header_sequence(first) != "FLAIR":
            outlines.append(SeriesOutline(number, series_uid, "not outlined: the header does "
                                          "not name it FLAIR, the outline model's sequence"))
            continue
        volume = _series_volume(members)
        if volume is None:
            outlines.append(SeriesOutline(number, series_uid, "not outlined: its images do "
                                          "not stack into one volume (three or more slices of "
                                          "one geometry)"))
            continue
        companions = _companions(outlining, by_series, first)
        if outlining.multi is not None and (companions or outlining.single is None):
            if not companions:
                outlines.append(SeriesOutline(number, series_uid, "not outlined: the outline "
                                              "model reads FLAIR with T1 or T1C+, and the "
                                              "study has neither in this series' frame of "
                                              "reference"))
                continue
            segmenter, identity = outlining.multi
        else:
            assert outlining.single is not None
            segmenter, identity = outlining.single
        outliner = Outliner(segmenter, predictor, None, companions)
        key = members[0].decoded.series if members[0].decoded is not None else None
        result = outliner.outline_volume(volume, f"series {number}", answer=answers.get(key))
        outline = SeriesOutline(number, series_uid, result.message, result.measurement,
                                model=identity)
        if result.status == OUTLINED and result.volume_mask is not None:
            by_uid = {str(item.source.SOPInstanceUID): item.source for item in members}
            assert volume.slice_names is not None  # a DICOM series' volume names its slices
            sources = [by_uid[uid] for uid in volume.slice_names]
            # The mask lies on the volume's voxels (column, row, slice in stack order).
            frames = np.stack([result.volume_mask.mask[:, :, k].T
                               for k in range(len(sources))]).astype(np.uint8)
            try:
                outline.segmentation = build_segmentation(sources, frames, segmenter,
                                                          identity, scope)
            except (ValueError, TypeError, AttributeError, KeyError) as error:
                # highdicom refusing a source header; its text may quote header values.
                outline.measurement = None
                outline.message = (f"not outlined: the DICOM Segmentation could not be built "
                                   f"from its headers ({type(error).__name__})")
        outlines.append(outline)
    return outlines


def _series_volume(members: Sequence[AnalysedImage]) -> Volume | None:
    """The volume of one series' single-frame images (None when they do not stack)."""
    first = members[0].source
    slices = [(item.decoded.values, item.decoded.geometry, str(item.source.SOPInstanceUID))
              for item in members if item.decoded is not None
              and item.decoded.values is not None and item.decoded.geometry is not None]
    return dicom_series_volume(slices, f"series {first.get('SeriesNumber', '') or '?'}",
                               str(first.SeriesInstanceUID))


def _companions(outlining: Outlining, by_series: dict[str, list[AnalysedImage]],
                flair: Dataset) -> dict[str, Volume]:
    """For the multi-sequence model: the first series of each companion sequence (T1, T1C+)
    whose header names it, in the FLAIR series' frame of reference, as volumes."""
    if outlining.multi is None:
        return {}
    wanted = outlining.multi[0].card.companions
    frame = str(flair.get("FrameOfReferenceUID", "") or "")
    found: dict[str, Volume] = {}
    for members in by_series.values():
        header = members[0].source
        sequence = header_sequence(header)
        if (not frame or sequence not in wanted or sequence in found
                or str(header.get("FrameOfReferenceUID", "") or "") != frame):
            continue
        volume = _series_volume(members)
        if volume is not None:
            found[sequence] = volume
    return found


def build_segmentation(sources: Sequence[Dataset], frames: np.ndarray, segmenter: Segmenter,
                       model: ModelIdentity, scope: str) -> Dataset:
    """The DICOM Segmentation of one series: ``frames`` (slices, rows, columns) of 0/1, one
    per source image in ``sources``' order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    card = segmenter.card
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{MANUFACTURER} {model.name}", family=codes.cid7162.ArtificialIntelligence,
        version=model.algorithm_version[:64],
        parameters={"threshold": f"{card.threshold:g}",
                    "weights sha256": model.weights_sha256[:64]})
    series_uid = str(sources[0].SeriesInstanceUID)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"{card.sequence} abnormality",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=result_uid("segment", scope, model, series_uid),
        tracking_id=f"tumour outline of series {sources[0].get('SeriesNumber', '?')}")
    segmentation = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=result_uid("segmentation-series", scope, model, series_uid),
        series_number=SEGMENTATION_SERIES_NUMBER,
        sop_instance_uid=result_uid("segmentation", scope, model, series_uid),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=model.name[:64],
        software_versions=__version__, device_serial_number=model.weights_sha256[:16] or "0",
        content_label="TUMOUR", content_description=f"UNVERIFIED research output. "
                                                    f"{DISCLAIMER}"[:64],
        series_description=SEGMENTATION_DESCRIPTION)
    date_series(segmentation, datetime.now())
    return segmentation


def volume_group(outline: SeriesOutline, model: ModelIdentity, scope: str):
    """The report's TID 1411 group of an outlined series: volume (mL) and largest axial
    diameter (mm) of the tumour, referencing segment 1 of its Segmentation."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segmentation, measurement = outline.segmentation, outline.measurement
    assert segmentation is not None and measurement is not None
    algorithm = hd.sr.AlgorithmIdentification(name=f"{MANUFACTURER} {model.name}",
                                              version=model.algorithm_version[:64])
    measurements = []
    if measurement.volume_ml is not None:
        measurements.append(hd.sr.Measurement(
            codes.SCT.Volume, round(measurement.volume_ml, 2),
            hd.sr.CodedConcept("ml", "UCUM", "milliliter"), algorithm_id=algorithm))
    if measurement.largest_axial_diameter_mm is not None:
        measurements.append(hd.sr.Measurement(
            codes.SCT.Diameter, round(measurement.largest_axial_diameter_mm, 1),
            hd.sr.CodedConcept("mm", "UCUM", "millimeter"), algorithm_id=algorithm))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid("volume-group", scope, model, outline.series_uid),
            identifier=f"tumour outline of series {outline.series_number}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID, segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(outline.series_uid)),
        finding_type=codes.SCT.Neoplasm, algorithm_id=algorithm,
        measurements=measurements or None)
