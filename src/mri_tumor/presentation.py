"""How results read, shared by the front ends (CLI, web app, PACS): the table, CSV and JSON of
the CLI, probabilities and sequences in words, a scan's answer in a line. No model logic."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mri_tumor.card import ModelCard
from mri_tumor.inference.results import REJECTED, format_probability

if TYPE_CHECKING:  # torch is imported only when a model is needed (fast `mri-tumor app` start)
    from mri_tumor.inference import Prediction


def _blank_if_none(value: object) -> object:
    return "" if value is None else value


def result_class_names(results: Sequence[Prediction]) -> list[str]:
    """The class names found in the results' probabilities, in their order (for callers that
    have no model card at hand; the card's ``class_names`` are the reference)."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.probabilities or {}))
    return list(names)


def result_sequence_names(results: Sequence[Prediction]) -> list[str]:
    """The MR sequence names found in the results' sequence probabilities, in their order
    (empty when no result names a sequence; the card's ``sequence_names`` are the
    reference)."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.sequence_probabilities or {}))
    return list(names)


def csv_columns(class_names: Sequence[str], sequence_names: Sequence[str] = ()) -> list[str]:
    """The header of ``predict --csv`` (and of the app's download): one ``p_<key>`` column
    per class, named as in ``evaluate``'s ``predictions.csv``; for a model with a sequence
    head (``sequence_names``) also ``sequence`` and one ``p_sequence_<key>`` column per
    sequence. A key is the name with no spaces or punctuation (``evaluation.columns``:
    ``p_carcinoma_metastasis``, ``p_sequence_T1Cplus``); the cells keep the names as they are."""
    # Imported when a CSV is written: the evaluation package's face loads numpy and scipy
    # (not torch), which the app's start does not pay for.
    from mri_tumor.columns import probability_columns, sequence_columns

    sequence = (["sequence", *sequence_columns(sequence_names)] if sequence_names else [])
    return ["path", "status", "label", "confidence", *probability_columns(class_names),
            *sequence, "ood_score", "message"]


def format_sequence(result: Prediction) -> str:
    """A result's MR sequence with its probability, as the front ends show it ("T1C+
    (87.0%)"); "" when it names none."""
    if result.sequence is None:
        return ""
    probability = (result.sequence_probabilities or {}).get(result.sequence)
    if probability is None:
        return result.sequence
    return f"{result.sequence} ({format_probability(probability)})"


def given_source(source: str, given: Sequence[Path | str] | None) -> str:
    """The path the user gave that holds ``source`` (a scan's file or folder), as typed."""
    for path in given or ():
        if Path(source) == Path(path) or Path(path) in Path(source).parents:
            return str(path)
    return source


def format_results(results: Sequence[Prediction], mode: str = "table",
                   card: ModelCard | None = None,
                   given: Sequence[Path | str] | None = None) -> str:
    """Render results as a table, JSON Lines or CSV; DICOM series get summary lines.

    ``card``, the model's card (``predictor.card``), gives the CSV's ``p_<class>`` columns
    (its ``class_names``, in their order), its sequence columns (``sequence_names``: a model
    with a sequence head) and the normal class of the series summaries; without it the
    classes and sequences found in the results are used. The table shows the MR sequence
    next to the prediction when a result names one.
    """
    from mri_tumor.inference.scans import scan_summaries, study_summaries

    summaries = scan_summaries(results, card)
    for summary in summaries:
        summary["source"] = given_source(summary["source"], given)
    studies = study_summaries(summaries)
    if mode == "json":
        lines = [json.dumps(r.to_dict()) for r in results]
        lines += [json.dumps({"series_summary": s}) for s in summaries]
        lines += [json.dumps({"study_summary": study}) for study in studies]
        return "\n".join(lines) + ("\n" if lines else "")
    if mode == "csv":
        names = list(card.class_names) if card else result_class_names(results)
        sequences = list(card.sequence_names) if card else result_sequence_names(results)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(csv_columns(names, sequences))
        for r in results:
            probabilities = r.probabilities or {}
            sequence_cells = []
            if sequences:
                sequence_probabilities = r.sequence_probabilities or {}
                sequence_cells = [r.sequence or "", *(
                    _blank_if_none(sequence_probabilities.get(name)) for name in sequences)]
            writer.writerow([r.path, r.status, r.label or "", _blank_if_none(r.confidence),
                             *(_blank_if_none(probabilities.get(name)) for name in names),
                             *sequence_cells, _blank_if_none(r.ood_score), r.message])
        return buffer.getvalue()
    with_sequence = any(r.sequence is not None for r in results)
    header = ("FILE", "STATUS", "PREDICTION", "CONFIDENCE",
              *(("SEQUENCE",) if with_sequence else ()))
    rows: list[tuple[tuple[str, ...], str]] = [(header, "NOTE")]
    for r, more in _header_refusals_grouped(results):
        note = r.message.removeprefix(f"{r.path}: ")  # the FILE column already names it
        if more:
            files = "file" if more == 1 else "files"
            note += f" (and {more} more {files} of this series, refused alike)"
        cells = (r.path, r.status, r.display_label or "-",
                 format_probability(r.confidence) or "-",
                 *((format_sequence(r) or "-",) if with_sequence else ()))
        rows.append((cells, note))
    widths = [min(max(len(cells[i]) for cells, _ in rows), 60) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
           + ("  " + note if note else "") for cells, note in rows]
    out.extend(scan_line(s, card) for s in summaries)
    out.extend(f"study {study['source']}: {study['message']}" for study in studies)
    return "\n".join(out) + "\n"


def _header_refusals_grouped(results: Sequence[Prediction]) -> list[tuple[Prediction, int]]:
    """The results for the table, each with how many later files of its series its row
    stands for: the files of one series that the DICOM header refused (a CT series, say)
    get one row, not one per file. JSON and CSV keep a line per file."""
    rows: list[tuple[Prediction, int]] = []
    row_of_series: dict[str, int] = {}
    for r in results:
        series = r.series if r.by_header and r.status == REJECTED else None
        if series and series in row_of_series:
            first, more = rows[row_of_series[series]]
            rows[row_of_series[series]] = (first, more + 1)
            continue
        if series:
            row_of_series[series] = len(rows)
        rows.append((r, 0))
    return rows


def scan_line(summary: dict, card: ModelCard | None) -> str:
    """One scan's answer in words, for the table and the logs."""
    refused = f", {summary['refused']} refused as not brain MRI" if summary["refused"] else ""
    head = f"scan {summary['source']} ({summary['slices']} slices read{refused})"
    if summary["status"] != "ok":
        return f"{head}: {summary['message']}"
    label = card.display_name(summary["label"]) if card else summary["label"]
    keys = ", ".join(str(k) for k in summary["key_slices"])
    disagree = "; slices disagree" if summary["disagree"] else ""
    caution = f". Caution: {summary['caution']}" if summary.get("caution") else ""
    return (f"{head}: {label}, scan-level probability "
            f"{format_probability(summary['probability'])} (key slices {keys}{disagree})"
            f"{caution}")
