"""Process one study on a DICOMweb server, and keep processing new ones (``watch``).

One study: list its series (QIDO-RS); stop if this model's report series is already there;
skip series that are not MR, with the reason; retrieve the MR series (WADO-RS); classify every
image; store one Structured Report and one Secondary Capture series of overlays into the
study (STOW-RS). Nothing here prints: steps are logged on ``mri_tumor.pacs`` loggers, by
study key (a hash), never with a UID or anything from the patient module.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from mri_tumor.data.dicom import MODALITY_NAMES
from mri_tumor.inference import ERROR, OK, Predictor
from mri_tumor.inference.scans import scan_summaries
from mri_tumor.pacs.client import PacsError, PacsServer, study_key
from mri_tumor.pacs.results import (
    AnalysedImage,
    ModelIdentity,
    analyse,
    build_overlays,
    build_report,
    report_series_uid,
)
from mri_tumor.pacs.segmentation import (
    Outlining,
    SeriesOutline,
    outline_series,
    volume_group,
)
from mri_tumor.presentation import format_probability

logger = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    """What processing one study did."""

    key: str  # study_key() of its UID
    already_done: bool = False
    analysed: list[AnalysedImage] = field(default_factory=list)
    skipped_series: list[str] = field(default_factory=list)  # one reason per series
    to_store: list[Dataset] = field(default_factory=list)  # SR, overlays, segmentations
    outlines: list[SeriesOutline] = field(default_factory=list)  # with --segment
    stored: int = 0

    @property
    def unreadable(self) -> list[AnalysedImage]:
        """Instances that could not be read (damaged or undecodable pixels)."""
        return [item for item in self.analysed if item.result.status == ERROR]


def results_for(predictor: Predictor, datasets: list[Dataset], scope: str,
                model: ModelIdentity | None = None, outlining: Outlining | None = None
                ) -> tuple[list[AnalysedImage], list[Dataset], list[SeriesOutline]]:
    """Classify ``datasets`` (the MR instances of one study or series: ``scope`` is its UID)
    and build what goes back to the PACS: the report, the overlays and, with ``outlining``,
    a Segmentation per outlined FLAIR series (nothing when no instance could be analysed)."""
    model = model or ModelIdentity.of(predictor)
    analysed = analyse(predictor, datasets)
    if all(item.result.status == ERROR for item in analysed):
        return analysed, [], []
    outlines: list[SeriesOutline] = []
    if outlining is not None:
        outlines = outline_series(outlining, predictor, analysed, scope)
    drawn = [o for o in outlines if o.segmentation is not None and o.model is not None]
    segmentations = [o.segmentation for o in drawn if o.segmentation is not None]
    report = build_report(analysed, predictor, model, scope,
                          [volume_group(o, o.model, scope) for o in drawn
                           if o.model is not None], segmentations)
    return analysed, [report, *build_overlays(analysed, predictor, model, scope),
                      *segmentations], outlines


def skip_reason(modality: str) -> str | None:
    """Why a series of this modality is not classified, or None for MR."""
    if modality == "MR":
        return None
    meaning = MODALITY_NAMES.get(modality)
    shown = f"{modality} ({meaning})" if meaning else (modality or "not given")
    return f"modality {shown}, not MR"


def process_study(server: PacsServer, predictor: Predictor, study_uid: str, *,
                  dry_run: bool = False, model: ModelIdentity | None = None,
                  outlining: Outlining | None = None) -> StudyOutcome:
    """Classify a study's MR images and store the results into it (unless ``dry_run``).

    Raises ``PacsError`` (``StudyGoneError`` when the study disappears) for server failures;
    unreadable instances do not stop it: they appear in the report as unreadable.
    """
    model = model or ModelIdentity.of(predictor)
    outcome = StudyOutcome(study_key(study_uid))
    series = server.series(study_uid)
    if any(s.uid == report_series_uid(study_uid, model) for s in series):
        outcome.already_done = True
        return outcome
    datasets: list[Dataset] = []
    for info in sorted(series, key=lambda s: (not s.number.isdigit(), int(s.number)
                                              if s.number.isdigit() else 0, s.number)):
        reason = skip_reason(info.modality)
        if reason:
            outcome.skipped_series.append(f"series {info.number}: {reason}")
            continue
        datasets += sorted(server.retrieve(study_uid, info),
                           key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    try:
        outcome.analysed, outcome.to_store, outcome.outlines = results_for(
            predictor, datasets, study_uid, model, outlining)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        # highdicom refusing a source header it cannot copy; its text may quote header values.
        raise PacsError(f"study {outcome.key}: the DICOM results could not be built from its "
                        f"headers ({type(error).__name__})") from None
    if outcome.to_store and not dry_run:
        outcome.stored = server.store(study_uid, outcome.to_store)
    return outcome


def describe(outcome: StudyOutcome, predictor: Predictor, every_image: bool = False
             ) -> list[str]:
    """The outcome in lines for a console or log: counts, skipped series, unreadable
    instances and, with ``every_image``, each image's class. No patient data."""
    head = f"study {outcome.key}"
    if outcome.already_done:
        return [f"{head}: already processed by this model; nothing stored"]
    lines = [f"{head}: skipped {reason}" for reason in outcome.skipped_series]
    classified = [item for item in outcome.analysed if item.result.status == OK]
    refused = len(outcome.analysed) - len(classified) - len(outcome.unreadable)
    lines.append(f"{head}: {len(outcome.analysed)} MR image(s): {len(classified)} classified, "
                 f"{refused} refused as not brain MRI, {len(outcome.unreadable)} unreadable")
    for item in outcome.unreadable:
        lines.append(f"{head}: {item.result.message}")
    card = predictor.card
    if every_image:
        for item in outcome.analysed:
            where = item.where
            if item.result.status == OK and item.result.label is not None:
                lines.append(f"{head}: {where}: {card.display_name(item.result.label)} "
                             f"({format_probability(item.result.confidence)})")
            else:
                lines.append(f"{head}: {where}: {item.result.status}")
    numbers = {item.result.series: item.series_number for item in outcome.analysed}
    for summary in scan_summaries([item.result for item in outcome.analysed], card):
        refusals = (f", {summary['refused']} refused as not brain MRI" if summary["refused"]
                    else "")
        stack = f"series {numbers.get(summary['series'], '?')} ({summary['slices']} slices"
        if summary["status"] != OK:
            lines.append(f"{head}: {stack}{refusals}): {summary['message']}")
            continue
        lines.append(f"{head}: {stack}{refusals}): {card.display_name(summary['label'])} "
                     f"(scan-level probability {format_probability(summary['probability'])})")
    for outline in outcome.outlines:
        lines.append(f"{head}: series {outline.series_number}: {outline.message}")
    segmentations = sum(o.segmentation is not None for o in outcome.outlines)
    overlays = len(outcome.to_store) - 1 - segmentations
    outlined = f", {segmentations} segmentation(s)" if segmentations else ""
    if not outcome.to_store:
        lines.append(f"{head}: nothing to store")
    elif outcome.stored:
        lines.append(f"{head}: stored {outcome.stored} object(s): 1 structured report, "
                     f"{overlays} overlay image(s){outlined}, marked unverified")
    else:
        lines.append(f"{head}: would store 1 structured report and {overlays} overlay "
                     f"image(s){outlined} (dry run: nothing stored)")
    return lines


# -- watch ------------------------------------------------------------------------------------
@dataclass
class WatchState:
    """What ``watch`` remembers across restarts: studies done (by key, per model) and studies
    to retry (attempts, when next). Saved as JSON, written atomically."""

    path: Path
    done: dict[str, list[str]] = field(default_factory=dict)  # key -> weights hashes
    retry: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> WatchState:
        """The state at ``path``; empty when the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, dict(data.get("done", {})), dict(data.get("retry", {})))
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: not a readable watch state file ({error}); move it "
                             "away to start afresh") from None

    def save(self) -> None:
        """Write the state (a temporary file renamed over the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"done": self.done, "retry": self.retry}, indent=1))
        tmp.replace(self.path)

    def is_done(self, key: str, model: ModelIdentity) -> bool:
        return model.weights_sha256 in self.done.get(key, [])

    def is_due(self, key: str, now: float) -> bool:
        return self.retry.get(key, {}).get("next_at", 0.0) <= now

    def mark_done(self, key: str, model: ModelIdentity) -> None:
        self.done.setdefault(key, []).append(model.weights_sha256)
        self.retry.pop(key, None)

    def mark_failed(self, key: str, now: float, first_delay: float, max_delay: float) -> float:
        """Count a failure; returns the delay before the next try (doubling each time)."""
        attempts = int(self.retry.get(key, {}).get("attempts", 0)) + 1
        delay = min(first_delay * 2 ** (attempts - 1), max_delay)
        self.retry[key] = {"attempts": attempts, "next_at": now + delay}
        return delay


def watch(server: PacsServer, predictor: Predictor, state: WatchState, *, interval: float,
          stop: threading.Event, retry_delay: float = 30.0, max_retry_delay: float = 3600.0,
          on_outcome: Callable[[StudyOutcome], None] | None = None,
          outlining: Outlining | None = None) -> None:
    """Process every MR study not yet done by this model, each once, until ``stop`` is set;
    poll every ``interval`` seconds. A failing study is retried after ``retry_delay`` seconds,
    doubling up to ``max_retry_delay``; the state is saved after every study."""
    model = ModelIdentity.of(predictor)
    while not stop.is_set():
        try:
            studies = server.mr_studies()
        except PacsError as error:
            logger.warning("%s; trying again in %g s", error, interval)
            stop.wait(interval)
            continue
        for study_uid in studies:
            key = study_key(study_uid)
            if stop.is_set():
                break
            if state.is_done(key, model) or not state.is_due(key, time.time()):
                continue
            try:
                outcome = process_study(server, predictor, study_uid, model=model,
                                        outlining=outlining)
            except PacsError as error:
                delay = state.mark_failed(key, time.time(), retry_delay, max_retry_delay)
                logger.warning("%s; will retry in %g s", error, delay)
            else:
                state.mark_done(key, model)
                if on_outcome is not None:
                    on_outcome(outcome)
            state.save()
        stop.wait(interval)
