"""Classify retrieved MR instances and turn the results into DICOM objects for a PACS.

Two kinds of object are written back into the study, both marked as research results that
no clinician has verified:

- one **Structured Report** (Comprehensive SR, TID 1500 "Imaging Measurement Report" built
  with highdicom): per analysed image and per series the class, the calibrated probabilities,
  the guard's verdict, the model (name, version, weights hash) and references to the source
  instances; VerificationFlag UNVERIFIED and the research-use disclaimer as text;
- one **Secondary Capture** series: the Grad-CAM overlay of every classified image, derived
  from its source, with "not for diagnosis" burned into the pixels and the header.

Every UID is derived from the source's UIDs and the weights' hash, so writing the results of
the same model for the same images twice gives the same objects (a PACS stores them once),
and a later run can tell that a study was already done by looking for the report's series.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mri_tumor import __version__
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import Frame
from mri_tumor.inference import OK, REJECTED, Prediction, Predictor, decode
from mri_tumor.inference.decode import assemble_scans
from mri_tumor.inference.identity import ModelIdentity
from mri_tumor.inference.scans import scan_summaries
from mri_tumor.presentation import format_probability

MANUFACTURER = "mri-tumor"
# A private coding scheme ("99" prefix, PS3.16 8.2) for what has no standard code: the
# card's class names and the guard's verdicts.
SCHEME = "99MRITUMOR"
# How the report's numbers are written (their DS value): probabilities in percent with two
# decimals, the resolution of the model's probabilities (four decimals), and the guard's
# score with four decimals, as everywhere else. Without this a DS carries the binary
# rounding of 100 * p ("0.39000000000000" for 0.39 %).
PERCENT_DECIMALS = 2
SCORE_DECIMALS = 4
REPORT_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
REPORT_DESCRIPTION = "mri-tumor result: research, NOT FOR DIAGNOSIS"
OVERLAY_DESCRIPTION = "mri-tumor Grad-CAM: research, NOT FOR DIAGNOSIS"
# Frames classified per network call here; Grad-CAM then runs one image at a time.
CLASSIFY_BATCH = 32


@dataclass
class AnalysedImage:
    """One 2-D image of a retrieved MR instance and what the model made of it."""

    source: Dataset  # the instance as retrieved (header and pixels)
    frame: int | None  # 1-based frame number in a multi-frame instance, else None
    result: Prediction
    image: Image.Image | None = None  # the decoded grey frame (None when unreadable)
    decoded: Frame | None = None  # with the raw values and geometry, for stacking a series
    # An axial slice reformatted from a series acquired in another plane (a sagittal 3-D T1)
    # is cut across all of that series' instances: they are here (with their decoded frames,
    # not classified one by one), and ``source`` is the first of them. Empty otherwise.
    cut_from: tuple[AnalysedImage, ...] = ()

    @property
    def series_number(self) -> str:
        return str(self.source.get("SeriesNumber", "") or "?")

    @property
    def where(self) -> str:
        """How the image is named in messages (no UID, nothing from the patient module)."""
        if self.cut_from:
            return (f"series {self.series_number} axial slice {self.result.slice_index} "
                    "(reformatted)")
        return instance_label(self.source, self.frame)

    @property
    def instances(self) -> tuple[AnalysedImage, ...]:
        """The retrieved images this result was read from: itself, or those it was cut from."""
        return self.cut_from or (self,)


def instance_label(dataset: Dataset, frame: int | None = None) -> str:
    """How an instance is named in messages: series and instance numbers, never a UID or
    anything from the patient module."""
    series = dataset.get("SeriesNumber", "") or "?"
    number = dataset.get("InstanceNumber", "") or "?"
    label = f"series {series} image {number}"
    return label if frame is None else f"{label} frame {frame}"


def part10_bytes(dataset: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM file (what the one decode path reads)."""
    if not hasattr(dataset, "file_meta") or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta = meta
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# Patient and study attributes of Type 2 (present, possibly empty) that the report and the
# overlays copy from their source; some archives leave them out altogether.
COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def analyse(predictor: Predictor, datasets: Sequence[Dataset]) -> list[AnalysedImage]:
    """Decode every instance the one way the product does (header check, guard, multi-frame,
    the slices of a series stacked and windowed once as a volume: ``assemble_scans``) and
    classify its frames; unreadable instances give ``error`` results, never raise. Missing
    ``COPIED_TYPE_2`` attributes are added empty to the (retrieved, in-memory) datasets."""
    analysed: list[AnalysedImage] = []
    items: list[Prediction | Frame] = []  # one per analysed image, for the batching loop
    taken: set[str] = set()
    for dataset in datasets:
        for keyword in COPIED_TYPE_2:
            if keyword not in dataset:
                setattr(dataset, keyword, None)
        label = instance_label(dataset)
        if label in taken:  # two instances with one number: names must tell them apart
            label = f"{label} ({len(taken) + 1})"
        taken.add(label)
        try:
            data = part10_bytes(dataset)
        except Exception:  # a damaged header that pydicom cannot even write back
            data = b""
        decoded = decode(data, label, predictor.name)
        if isinstance(decoded, Prediction):
            analysed.append(AnalysedImage(dataset, None, decoded))
            items.append(decoded)
            continue
        multi = len(decoded) > 1 or "NumberOfFrames" in dataset
        for index, frame in enumerate(decoded):
            analysed.append(AnalysedImage(dataset, index + 1 if multi else None,
                                          Prediction(frame.name, OK), frame.image, frame))
            items.append(frame)
    analysed, items = _stacked(analysed, items)
    for item, result in zip(analysed, predictor.predict_items(items, CLASSIFY_BATCH),
                            strict=True):
        item.result = result
    return analysed


def _stacked(analysed: list[AnalysedImage], items: list[Prediction | Frame]
             ) -> tuple[list[AnalysedImage], list[Prediction | Frame]]:
    """The decoded instances with each series stacked as ``predict`` stacks it: a slice of
    the stack is the windowed axial image of its instance. A series acquired in another plane
    is read, as ``predict`` reads it, on the axial slices reformatted from it; each of them
    keeps the instances it was cut from (``cut_from``). Slices outside the head are left
    out."""
    place = {id(item): k for k, item in enumerate(items)}
    by_name = {a.decoded.name: a for a in analysed if a.decoded is not None}
    stacked = assemble_scans(items)
    reformatted = {f.series for f in stacked if isinstance(f, Frame) and id(f) not in place
                   and f.name not in by_name}
    out: list[AnalysedImage] = []
    out_items: list[Prediction | Frame] = []
    members: dict[str | None, tuple[AnalysedImage, ...]] = {}
    for item in stacked:
        if id(item) in place:  # not part of a stack: as decoded
            out.append(analysed[place[id(item)]])
            out_items.append(item)
        elif isinstance(item, Frame) and item.series in reformatted:
            if item.series not in members:
                members[item.series] = tuple(
                    analysed[k] for k, original in enumerate(items)
                    if isinstance(original, Frame) and original.series == item.series)
            cut_from = members[item.series]
            out.append(AnalysedImage(cut_from[0].source, None, Prediction(item.name, OK),
                                     item.image, None, cut_from))
            out_items.append(item)
        elif isinstance(item, Frame):
            source = by_name[item.name]
            out.append(AnalysedImage(source.source, source.frame, Prediction(item.name, OK),
                                     item.image, source.decoded))
            out_items.append(item)
    return out, out_items


def overlay_image(predictor: Predictor, item: AnalysedImage) -> np.ndarray:
    """The Grad-CAM overlay of a classified image as RGB pixels, with the class and "research
    tool, not for diagnosis" burned in so that no viewer can show it without them."""
    from mri_tumor.explain.gradcam import gradcam, overlay

    assert item.image is not None and item.result.label is not None
    index = predictor.class_names.index(item.result.label)
    picture = overlay(item.image, gradcam(predictor, item.image, index))
    draw = ImageDraw.Draw(picture)
    size = max(10, picture.height // 28)
    font = ImageFont.load_default(size=size)
    name = predictor.card.display_name(item.result.label)
    for text, top in (("RESEARCH TOOL - NOT FOR DIAGNOSIS", 0),
                      (f"{name} {format_probability(item.result.confidence)} (unverified)",
                       picture.height - size - 4)):
        draw.rectangle((0, top, picture.width, top + size + 4), fill=(0, 0, 0))
        draw.text((3, top + 1), text, fill=(255, 255, 0), font=font)
    return np.asarray(picture)


def result_uid(kind: str, scope: str, model: ModelIdentity, *parts: str) -> str:
    """A UID fixed by what it describes: the same model's results for the same source get
    the same UIDs, so storing them again changes nothing."""
    return str(generate_uid(entropy_srcs=[MANUFACTURER, kind, scope, model.weights_sha256,
                                          *parts]))


def report_series_uid(scope: str, model: ModelIdentity) -> str:
    """The series UID of the report for ``scope`` (a study's or a series' UID): what a later
    run looks for to know that this model already processed it."""
    return result_uid("report-series", scope, model)


# -- the Structured Report --------------------------------------------------------------------
@cache
def _codes() -> SimpleNamespace:
    """The coded concepts of the report (highdicom is imported on first use: it is slow to
    import and only the PACS commands need it)."""
    from highdicom.sr import CodedConcept

    return SimpleNamespace(
        finding=CodedConcept("121071", "DCM", "Finding"),
        percent=CodedConcept("%", "UCUM", "percent"),
        no_units=CodedConcept("1", "UCUM", "no units"),
        check=CodedConcept("MRICHECK", SCHEME, "Brain MRI check (out-of-distribution guard)"),
        accepted=CodedConcept("ACCEPTED", SCHEME, "Looks like a brain MRI slice"),
        refused=CodedConcept("REFUSED", SCHEME, "Not a brain MRI slice; no class given"),
        unreadable=CodedConcept("UNREADABLE", SCHEME, "Image could not be read"),
        guard_score=CodedConcept("OODSCORE", SCHEME, "Out-of-distribution score"),
        highest=CodedConcept("SCANTUMOURP", SCHEME, "Scan-level tumour probability"),
        sequence=CodedConcept("MRSEQUENCE", SCHEME, "MR sequence, as the model reads it"),
        resembles=CodedConcept("RESEMBLES", SCHEME, "Looks most like (refused image)"),
        comment=CodedConcept("121106", "DCM", "Comment"),
        qualitative=CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
        procedure=CodedConcept("24590-2", "LN", "MR Brain"),
    )


def percent(probability: float) -> float:
    """A probability as the report's number: percent, ``PERCENT_DECIMALS`` decimals."""
    return round(100.0 * float(probability), PERCENT_DECIMALS)


def class_code(card: ModelCard, class_name: str):
    """The coded concept of one of the card's classes (private scheme, the card's name)."""
    import highdicom as hd

    return hd.sr.CodedConcept(class_name, SCHEME, card.display_name(class_name))


def probability_code(card: ModelCard, class_name: str):
    """The concept of "calibrated probability of <class>"."""
    import highdicom as hd

    return hd.sr.CodedConcept(f"P-{class_name}", SCHEME,
                              f"Calibrated probability of {card.display_name(class_name)}")


def build_report(analysed: Sequence[AnalysedImage], predictor: Predictor,
                 model: ModelIdentity, scope: str, volume_groups: Sequence[Any] = (),
                 segmentations: Sequence[Dataset] = ()) -> Dataset:
    """The Comprehensive SR of ``analysed`` (one study or one series: ``scope`` is its UID),
    unverified, with a group per image and per series of two or more classified slices, then
    ``volume_groups`` (TID 1411, ``pacs.segmentation``) referencing ``segmentations``."""
    import highdicom as hd

    codes, card = _codes(), predictor.card
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"{MANUFACTURER} {model.name}", version=model.algorithm_version,
        parameters=[f"weights sha256 {model.weights_sha256}",
                    f"temperature {card.temperature:g}"])
    groups = []
    for item in analysed:
        if item.cut_from:  # no one source image: the series' group below carries it
            continue
        source = hd.sr.SourceImageForMeasurementGroup(
            item.source.SOPClassUID, item.source.SOPInstanceUID,
            [item.frame] if item.frame else None)
        result = item.result
        evaluations, measurements = [], []
        if result.status == OK:
            assert result.label is not None  # every classified image has one
            evaluations.append(hd.sr.QualitativeEvaluation(codes.finding,
                                                           class_code(card, result.label)))
            measurements += [hd.sr.Measurement(probability_code(card, name), percent(p),
                                               codes.percent)
                             for name, p in (result.probabilities or {}).items()]
            if result.sequence is not None:  # a model with a sequence head (``types``)
                evaluations.append(hd.sr.QualitativeEvaluation(
                    codes.sequence, hd.sr.CodedConcept(result.sequence, SCHEME,
                                                       f"{result.sequence} (model's reading)")))
        verdict = {OK: codes.accepted, REJECTED: codes.refused}.get(result.status,
                                                                     codes.unreadable)
        evaluations.append(hd.sr.QualitativeEvaluation(codes.check, verdict))
        if result.resembles is not None:  # a refusal by content, with the card's words
            phrase = (card.resemblance or {}).get("phrases", {}).get(result.resembles,
                                                                      result.resembles)
            evaluations.append(hd.sr.QualitativeEvaluation(
                codes.resembles, hd.sr.CodedConcept(result.resembles[:16].upper(), SCHEME,
                                                    phrase[:64])))
        if result.ood_score is not None and np.isfinite(result.ood_score):
            measurements.append(hd.sr.Measurement(
                codes.guard_score, round(float(result.ood_score), SCORE_DECIMALS),
                codes.no_units))
        identifier = instance_label(item.source, item.frame)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid("group", scope, model, item.source.SOPInstanceUID,
                               str(item.frame)),
                identifier=identifier[:64]),
            algorithm_id=algorithm, measurements=measurements or None,
            qualitative_evaluations=evaluations, source_images=[source]))

    by_key = {item.result.series: item for item in analysed if item.result.series}
    for summary in scan_summaries([a.result for a in analysed], card):
        if summary["status"] != OK or summary["series"] not in by_key:
            continue
        members = list({id(image): image for a in analysed
                        if a.result.series == summary["series"] and a.result.status == OK
                        for image in a.instances}.values())
        first = by_key[summary["series"]]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid("series-group", scope, model, first.source.SeriesInstanceUID),
                identifier=f"series {first.series_number} summary"),
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(codes.highest,
                                            percent(summary["tumour_probability"]),
                                            codes.percent)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                codes.finding, class_code(card, summary["label"]))],
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                a.source.SOPClassUID, a.source.SOPInstanceUID, [a.frame] if a.frame else None)
                for a in members])
        if summary.get("caution"):  # what was measured about this model on this sequence
            group[0].ContentSequence.append(hd.sr.TextContentItem(
                name=codes.comment, value=f"Caution: {summary['caution']}",
                relationship_type="CONTAINS"))
        groups.append(group)

    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", "", model), name=f"{MANUFACTURER} {model.name}"[:64],
            manufacturer_name=MANUFACTURER, model_name=model.name[:64])))
    content = hd.sr.MeasurementReport(observation_context=context,
                                      procedure_reported=codes.procedure,
                                      imaging_measurements=[*groups, *volume_groups])
    # TID 1500's document-level "Qualitative Evaluations" container carries the disclaimer.
    disclaimer = hd.sr.ContainerContentItem(name=codes.qualitative,
                                            relationship_type="CONTAINS")
    disclaimer.ContentSequence = DicomSequence([hd.sr.TextContentItem(
        name=codes.comment, value=f"UNVERIFIED. {DISCLAIMER}",
        relationship_type="CONTAINS")])
    content[0].ContentSequence.append(disclaimer)

    evidence = _unique_instances([*(image.source for item in analysed
                                    for image in item.instances), *segmentations])
    now = datetime.now()
    report = hd.sr.ComprehensiveSR(
        evidence=evidence, content=content[0],
        series_instance_uid=report_series_uid(scope, model),
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=result_uid("report", scope, model,
                                    *sorted(d.SOPInstanceUID for d in evidence)),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=REPORT_DESCRIPTION,
        content_date=now.date(), content_time=now.time(),
        manufacturer_model_name=model.name[:64], software_versions=__version__)
    date_series(report, now)
    scheme = Dataset()  # declares the private coding scheme (PS3.3 C.12.1.1.3)
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "mri-tumor model card classes and verdicts"
    scheme.CodingSchemeResponsibleOrganization = "mri-tumor project"
    report.CodingSchemeIdentificationSequence = [scheme]
    return report


def date_series(dataset: Dataset, now: datetime) -> None:
    """Series date and time (optional, but viewers group and sort series by them)."""
    dataset.SeriesDate = now.strftime("%Y%m%d")
    dataset.SeriesTime = now.strftime("%H%M%S")


def _unique_instances(datasets) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for dataset in datasets:
        seen.setdefault(dataset.SOPInstanceUID, dataset)
    return list(seen.values())


# -- the Secondary Capture overlays -----------------------------------------------------------
def build_overlays(analysed: Sequence[AnalysedImage], predictor: Predictor,
                   model: ModelIdentity, scope: str) -> list[Dataset]:
    """One Secondary Capture image per classified image of a source instance: its Grad-CAM
    overlay, derived from the source image and labelled as not for diagnosis (an axial slice
    reformatted from another plane gets none)."""
    import highdicom as hd

    series_uid = result_uid("overlay-series", scope, model)
    now = datetime.now()
    overlays: list[Dataset] = []
    # A reformatted slice is no one source image's: it gets no overlay derived from one.
    for number, item in enumerate((a for a in analysed
                                   if a.result.status == OK and not a.cut_from), start=1):
        source = item.source
        orientation = _orientation_letters(source)
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=overlay_image(predictor, item),
            photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=series_uid, series_number=OVERLAY_SERIES_NUMBER,
            sop_instance_uid=result_uid("overlay", scope, model, source.SOPInstanceUID,
                                        str(item.frame)),
            instance_number=number, manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian)
        if orientation is None:  # Type 2: empty when the source does not say
            capture["PatientOrientation"].value = None
        # Type 2C in General Series: the source's laterality, or empty (a brain is unpaired).
        capture.Laterality = source.get("Laterality", None)
        date_series(capture, now)
        capture.SeriesDescription = OVERLAY_DESCRIPTION
        capture.BurnedInAnnotation = "YES"
        assert item.result.label is not None  # only classified images get an overlay
        capture.ImageComments = (f"Grad-CAM of {predictor.card.display_name(item.result.label)}"
                                 f" ({model.name}). UNVERIFIED. {DISCLAIMER}")[:10240]
        capture.DerivationDescription = (f"Grad-CAM heat map of the class '{item.result.label}'"
                                         f" given by {MANUFACTURER} {model.name}, blended over "
                                         "the source image")
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if item.frame:
            reference.ReferencedFrameNumber = item.frame
        capture.SourceImageSequence = [reference]
        overlays.append(capture)
    return overlays


def _orientation_letters(dataset: Dataset) -> tuple[str, str] | None:
    """PatientOrientation (row, column direction) from ImageOrientationPatient: the patient
    axis each image direction runs along most (single letters; None when not given)."""
    try:
        cosines = [float(v) for v in dataset.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(cosines) != 6:
        return None
    letters = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        positive = vector[axis] > 0
        letters.append(("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis])
    return letters[0], letters[1]
