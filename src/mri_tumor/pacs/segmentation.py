"""Outline the tumour on a study's FLAIR series and write the outline back as a DICOM
Segmentation (highdicom), measured in the report.

Per MR series whose header names the segmentation model's sequence (``card.sequence``,
FLAIR): stack its slices (``data.volume``, the path of ``mri-tumor segment``), let the
classifier answer on the stack and outline what it calls a tumour (``inference.outlining``).
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

import numpy as np
from pydicom.dataset import Dataset

from mri_tumor import __version__
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.volume import dicom_series_volume
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


def segmenter_identity(segmenter: Segmenter, folder: Path | None) -> ModelIdentity:
    """The segmentation model's name, card version and weights hash."""
    from mri_tumor.inference.segmentation import SHIPPED_SEGMENTER

    directory = folder or SHIPPED_SEGMENTER
    return ModelIdentity("segment", segmenter.card.version,
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


def outline_series(outliner: Outliner, analysed: Sequence[AnalysedImage],
                   model: ModelIdentity, scope: str) -> list[SeriesOutline]:
    """Outline every MR series of ``analysed`` that is of the segmenter's sequence; one
    ``SeriesOutline`` per single-frame series, in the order met."""
    sequence = outliner.segmenter.card.sequence
    # The classifier's scan answers, as the report gives them: the gate of each outline.
    answers = {summary["series"]: classifier_answer(summary) for summary in scan_summaries(
        [item.result for item in analysed], outliner.predictor.card)} \
        if outliner.predictor is not None else {}
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
        if not names_sequence(first, sequence):
            outlines.append(SeriesOutline(number, series_uid, f"not outlined: the header does "
                                          f"not name it {sequence}, the outline model's "
                                          "sequence"))
            continue
        slices = [(item.decoded.values, item.decoded.geometry, str(item.source.SOPInstanceUID))
                  for item in members if item.decoded is not None
                  and item.decoded.values is not None and item.decoded.geometry is not None]
        volume = dicom_series_volume(slices, f"series {number}", series_uid)
        if volume is None:
            outlines.append(SeriesOutline(number, series_uid, "not outlined: its images do "
                                          "not stack into one volume (three or more slices of "
                                          "one geometry)"))
            continue
        key = members[0].decoded.series if members[0].decoded is not None else None
        result = outliner.outline_volume(volume, f"series {number}", answer=answers.get(key))
        outline = SeriesOutline(number, series_uid, result.message, result.measurement)
        if result.status == OUTLINED and result.volume_mask is not None:
            by_uid = {str(item.source.SOPInstanceUID): item.source for item in members}
            assert volume.slice_names is not None  # a DICOM series' volume names its slices
            sources = [by_uid[uid] for uid in volume.slice_names]
            # The mask lies on the volume's voxels (column, row, slice in stack order).
            frames = np.stack([result.volume_mask.mask[:, :, k].T
                               for k in range(len(sources))]).astype(np.uint8)
            try:
                outline.segmentation = build_segmentation(sources, frames, outliner.segmenter,
                                                          model, scope)
            except (ValueError, TypeError, AttributeError, KeyError) as error:
                # highdicom refusing a source header; its text may quote header values.
                outline.measurement = None
                outline.message = (f"not outlined: the DICOM Segmentation could not be built "
                                   f"from its headers ({type(error).__name__})")
        outlines.append(outline)
    return outlines


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
