"""The web app: upload brain MRI slices, see the predicted class, how sure the model is, where
it looked (Grad-CAM) and what the class means. Research tool, not a diagnosis.

Start it with ``mri-tumor app [--port N] [--model NAME_OR_DIR]``, which runs
``streamlit run app.py -- --model NAME_OR_DIR``. The page lists the shipped models
(``mri_tumor.card.SHIPPED_MODELS``) and the ``--model`` folder in a selector; everything it
shows about classes (names, explanations, the MR sequence) comes from the selected model's
card. The page only calls the predictor and ``mri_tumor.explain``; no model logic lives here.

With ``MRI_TUMOR_SITE_DATA=DIR`` set, each result with an image also offers "Add to site
data": the user confirms or corrects its class and the image is stored under ``DIR`` for
fine-tuning (``mri_tumor.data.site``). Without it nothing of the kind is shown or written.

Modules that import torch (inference, explain, data) are imported inside the functions that
use them: importing torch takes seconds, and this way the title and the uploader are on the
screen while the model loads on a fresh server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st
from PIL import Image

from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB, too_large_message
from mri_tumor.data.site import site_data_dir, store_confirmed_case
from mri_tumor.data.volume import MIN_VOLUME_SLICES
from mri_tumor.inference.model_folder import SHIPPED_MODELS, resolve_model
from mri_tumor.presentation import format_probability, format_sequence

if TYPE_CHECKING:
    from mri_tumor.inference import Prediction, Predictor

DISPLAY_SIZE = 640  # longest side of the copy that is shown (and heat-mapped) on the page
FRAME_BATCH = 32
SAMPLES_DIR = Path(__file__).parents[1] / "samples"
NOT_MRI_TEXT = "This does not look like a brain MRI slice."
UPLOAD_HELP = (f"JPG, PNG, BMP, TIFF, DICOM (.dcm), NIfTI (.nii, .nii.gz) or a zip of a study, "
               f"up to {MAX_UPLOAD_MB} MB each. Select several files at once; the DICOM files "
               "of one series, a NIfTI volume or a zip become one answer per scan.")
RESULT_NAMES = {"ok": None, "rejected": "Not a brain MRI", "error": "Unreadable"}
NOTE_LINE_CHARS = 50  # about what one line of the table's (large) Note column holds
NOTE_MAX_LINES = 4  # a longer note is cut in the table (it is in full on its result card)
DEFAULT_MODEL = "default"  # the shipped model the selector starts on without --model
MAX_LISTED_CLASSES = 6  # the page's intro names the classes of a model with at most this many

logger = logging.getLogger(__name__)


@dataclass
class AnalysedImage:
    """One result on the page: the prediction, the picture shown and its heat map."""

    prediction: Prediction
    image: Image.Image | None = None  # display copy (grayscale); None when unreadable
    heatmap: np.ndarray | None = None  # Grad-CAM of the predicted class, at the copy's size
    frame: int = 0  # which frame of its file (a multi-frame DICOM file gives several)
    # The uploaded file's bytes, for "Add to site data"; set by the page, never cached.
    data: bytes | None = field(default=None, repr=False)


# -- processing: (name, bytes) uploads -> results. Used by the page and by the tests. ------
def analyse_upload(predictor: Predictor, name: str, data: bytes) -> list[AnalysedImage]:
    """Analyse one uploaded file: one result per 2-D frame, or one ``error`` result saying
    why the file cannot be read (``rejected`` for a DICOM file whose header says CT, US...).
    Never raises."""
    from mri_tumor.inference import ERROR, Prediction, decode

    if len(data) > MAX_UPLOAD_BYTES:
        return [AnalysedImage(Prediction(name, ERROR,
                                         message=too_large_message(name, len(data))))]
    decoded = decode(data, name, predictor.name)
    if isinstance(decoded, Prediction):
        return [AnalysedImage(decoded)]
    try:
        predictions = predictor.predict_items(decoded, FRAME_BATCH)
        results = [_with_pictures(predictor, frame.image, prediction, index) for index,
                   (frame, prediction) in enumerate(zip(decoded, predictions, strict=True))]
    except MemoryError:
        return [AnalysedImage(Prediction(name, ERROR, message=(
            f"{name}: too large to analyse in the memory available")))]
    except Exception as error:  # a page must show a message, never a traceback
        logger.warning("analysis failed for an upload: %s", type(error).__name__)
        return [AnalysedImage(Prediction(name, ERROR, message=(
            f"{name}: could not be analysed ({type(error).__name__})")))]
    return results


def _with_pictures(predictor: Predictor, image: Image.Image, prediction: Prediction,
                   frame: int = 0) -> AnalysedImage:
    from mri_tumor.explain.gradcam import gradcam
    from mri_tumor.inference import OK

    shown = image.copy()
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)
    heatmap = None
    if prediction.status == OK and prediction.label is not None:
        heatmap = gradcam(predictor, image, predictor.class_names.index(prediction.label),
                          size=shown.size)
    return AnalysedImage(prediction, shown, heatmap, frame)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 image``, ``2 images``: a count with its noun (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def results_rows(items: Sequence[AnalysedImage], card: ModelCard) -> list[dict]:
    """The results table: one row per upload (or DICOM frame), a probability column per class
    of the model's card, and for a model with a sequence head a Sequence column (the MR
    sequence with its probability, as on the result cards). Probabilities are the texts of
    ``format_probability`` (as on the result cards), empty where there is none (a rejected
    or unreadable input); the note leaves out the file name, which the File column shows."""
    rows = []
    for item in items:
        p = item.prediction
        row: dict[str, object] = {
            "File": p.path,
            "Result": RESULT_NAMES.get(p.status) or p.display_label,
            "Confidence": format_probability(p.confidence),
        }
        if card.sequence_names:
            row["Sequence"] = format_sequence(p)
        row["Note"] = p.message.removeprefix(f"{p.path}: ")
        for name in card.class_names:
            row[card.display_name(name)] = format_probability((p.probabilities or {}).get(name))
        rows.append(row)
    return rows


def note_row_height(notes: Sequence[str]) -> int | None:
    """The table's row height (px) that shows the longest note on wrapped lines (Streamlit
    wraps text only in rows taller than 4rem, 64 px); None (the default) when all fit on one."""
    lines = min(NOTE_MAX_LINES, max((math.ceil(len(n) / NOTE_LINE_CHARS) for n in notes),
                                    default=1))
    return None if lines <= 1 else max(65, 20 + 20 * lines)


def results_csv(items: Sequence[AnalysedImage], card: ModelCard) -> str:
    """CSV of all results (the columns of ``mri-tumor predict --csv``: one ``p_<class>``
    column per class of the model's card; ``sequence`` and ``p_sequence_<name>`` columns for
    a model with a sequence head), one row per item."""
    from mri_tumor.presentation import format_results

    return format_results([item.prediction for item in items], "csv", card)


def model_description(card: ModelCard) -> str:
    """What a model names, in a few words, from its card: ``4 classes``, ``15 tumour types +
    MR sequence``."""
    count = len(card.class_names)
    text = (f"{count} tumour types" if card.label_scheme == "types"
            else plural(count, "class", "classes"))
    return text + (" + MR sequence" if card.sequence_names else "")


@dataclass
class ModelChoice:
    """One entry of the page's model selector."""

    label: str  # "default: 4 classes"
    card: ModelCard | None  # None: its card cannot be read (the page says why on loading)


def model_choices(given: str | None) -> dict[str, ModelChoice]:
    """The selector's entries by the value the predictor is loaded from: the shipped models
    by name, then the ``--model`` folder (``given``) when it is not a shipped model's name.
    Each is labelled with its name and what it names (``model_description``)."""
    keys = list(SHIPPED_MODELS)
    if given and given not in SHIPPED_MODELS:
        keys.append(given)
    choices = {}
    for key in keys:
        try:
            name, directory = resolve_model(key)
            card = ModelCard.load(directory)
        except (OSError, ValueError):
            choices[key] = ModelChoice(key if key not in SHIPPED_MODELS else
                                       f"{key}: not available", None)
            continue
        choices[key] = ModelChoice(f"{name}: {model_description(card)}", card)
    return choices


def page_intro(card: ModelCard | None) -> str:
    """The sentence under the title: what the selected model names (from its card)."""
    if card is None:
        what = "Sorts brain MRI slices into the classes of the selected model"
    elif len(card.class_names) <= MAX_LISTED_CLASSES:
        names = [f"**{_plain(card.display_name(name))}**" for name in card.class_names]
        what = ("Sorts brain MRI slices into " + ", ".join(names[:-1])
                + (" or " if len(names) > 1 else "") + names[-1])
    else:
        kind = "tumour type" if card.label_scheme == "types" else "class"
        what = (f"Names the {kind} of brain MRI slices (one of {len(card.class_names)}, "
                "listed in the sidebar)")
    if card is not None and card.sequence_names:
        sequences = [_plain(name) for name in card.sequence_names]
        what += (" and their MR sequence (" + ", ".join(sequences[:-1])
                 + (" or " if len(sequences) > 1 else "") + sequences[-1] + ")")
    return what + ", says how sure it is, and shows where in the image it looked."


# -- page ----------------------------------------------------------------------------------
def _model_dir_from_argv(argv: Sequence[str]) -> str | None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model")
    known, _ = parser.parse_known_args(list(argv))
    return known.model


@st.cache_resource(show_spinner="Loading the model…")
def _predictor(model: str) -> Predictor:
    # Cached per model (a shipped model's name or a folder), shared by every browser tab.
    from mri_tumor.inference import Predictor

    return Predictor.load(model)


def _select_model(choices: dict[str, ModelChoice], given: str | None) -> str:
    keys = list(choices)
    start = given if given in choices else DEFAULT_MODEL
    return st.sidebar.selectbox(
        "Model", keys, index=keys.index(start) if start in keys else 0,
        format_func=lambda key: choices[key].label, key="model",
        help="The shipped models by name (and the one given with --model). Each names its "
             "own classes; the sidebar below describes the selected one.")


@st.cache_resource(max_entries=64, ttl=3600, show_spinner=False)
def _analyse_cached(_predictor: Predictor, model_key: str, name: str,
                    data: bytes) -> list[AnalysedImage]:
    # Keyed on the file's name and bytes, so moving a slider does not redo the work.
    return analyse_upload(_predictor, name, data)


def _plain(text: str) -> str:
    """User-supplied text (a file name) made safe to show inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", text)


def _render_sidebar(card: ModelCard) -> None:
    sidebar = st.sidebar
    sidebar.header("About the model")
    created = card.created
    with contextlib.suppress(ValueError):  # a card without a date, or an odd one, shows as is
        created = datetime.fromisoformat(card.created).strftime("%d %b %Y")
    sidebar.markdown(f"**Architecture:** {card.architecture}  \n"
                     f"**Version:** {card.version or '-'}  \n"
                     f"**Trained:** {created or '-'}  \n"
                     f"**Classes:** {', '.join(map(card.display_name, card.class_names))}"
                     + (f"  \n**MR sequences:** {', '.join(card.sequence_names)}"
                        if card.sequence_names else ""))
    validation = card.metrics.validation
    shown = [(label, getattr(validation, key)) for key, label in
             (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("ece", "ECE"),
              ("sequence_accuracy", "Sequence accuracy"))
             if isinstance(getattr(validation, key, None), int | float)]
    if shown:
        count = validation.n if validation is not None else 0
        sidebar.subheader("Validation" + (f" ({plural(count, 'image')})" if count else ""))
        header = " | ".join(label for label, _ in shown)
        values = " | ".join(f"{value:.1%}" if label != "ECE" else f"{value:.3f}"
                            for label, value in shown)
        sidebar.markdown(f"| {header} |\n|{'---|' * len(shown)}\n| {values} |")
        if "ECE" in header:
            sidebar.caption("ECE, expected calibration error: how far the confidences are "
                            "from the accuracy actually reached (lower is better).")
    sidebar.warning(DISCLAIMER, icon=":material/warning:")


def _uploads() -> list[tuple[str, bytes]]:
    files = st.file_uploader("Brain MRI slices", accept_multiple_files=True,
                             max_upload_size=MAX_UPLOAD_MB, help=UPLOAD_HELP, key="uploads")
    st.caption(UPLOAD_HELP)
    return [(file.name, file.getvalue()) for file in files or []]


def _examples(card: ModelCard) -> list[tuple[str, bytes]]:
    samples = {path.name: path for path in sorted(SAMPLES_DIR.glob("*.jpg"))}
    # The bundled samples are named by the default model's class they show: labelled with
    # their classes when the selected model has them all, numbered otherwise.
    numbers = {name: index for index, name in enumerate(samples, start=1)}
    by_class = all(Path(name).stem in card.class_names for name in samples)
    prompt = ("No images at hand? Try an example (one slice of each class from the "
              "validation set):" if by_class else
              "No images at hand? Try an example (brain MRI slices from the default model's "
              "validation set):")
    chosen = st.pills(prompt, options=list(samples), selection_mode="multi",
                      format_func=lambda name: (card.display_name(Path(name).stem) if by_class
                                                else f"Example {numbers[name]}"),
                      key="examples")
    return [(f"example-{name}", samples[name].read_bytes()) for name in chosen or []]


def _render_result(item: AnalysedImage, card: ModelCard, show_heatmap: bool,
                   opacity: float, site_dir: Path | None = None, key: str = "result") -> None:
    from mri_tumor.explain.gradcam import overlay

    p = item.prediction
    with st.container(border=True):
        st.markdown(f"#### {_plain(p.path)}")
        reason = p.message.removeprefix(f"{p.path}: ")
        reason = _plain(reason[:1].upper() + reason[1:])
        if p.status == "error":
            st.error(reason, icon=":material/block:")
            return
        if item.image is None:  # refused by its DICOM header (a CT...): nothing decoded
            st.warning(f"**{NOT_MRI_TEXT}** {reason}", icon=":material/image_search:")
            st.caption(f":material/warning: {DISCLAIMER}")
            return
        picture, details = st.columns([2, 3], gap="large")
        with picture:
            assert item.image is not None
            if show_heatmap and item.heatmap is not None:
                st.image(overlay(item.image, item.heatmap, opacity), width="stretch",
                         caption=f"Grad-CAM for {p.display_label}: warm colours mark the "
                                 "regions that most raised this class' score.")
            else:
                st.image(item.image, width="stretch")
        with details:
            if p.status == "rejected":
                st.warning(f"**{NOT_MRI_TEXT}** No tumour class is given; upload a brain MRI "
                           "slice (axial, coronal or sagittal).", icon=":material/image_search:")
            else:
                _render_prediction(p, card)
            st.caption(f":material/warning: {DISCLAIMER}")
            if site_dir is not None and item.data is not None:
                _render_site_data(item, card, site_dir, key)


def _render_site_data(item: AnalysedImage, card: ModelCard, site_dir: Path, key: str) -> None:
    """The "Add to site data" box (only with ``MRI_TUMOR_SITE_DATA`` set): the user confirms
    or corrects the class, and the image is stored for fine-tuning (``mri_tumor.data.site``)."""
    p = item.prediction
    names = list(card.class_names)
    with st.container(border=True):
        st.markdown("**Site data**")
        label = st.selectbox(
            "Confirmed class", names, index=names.index(p.label) if p.label in names else None,
            format_func=card.display_name, key=f"{key}-site-label",
            placeholder="Choose the class",
            help="The class this image truly shows: the predicted one, or your correction.")
        clicked = st.button("Add to site data", key=f"{key}-site-add", disabled=label is None,
                            icon=":material/add_task:")
        st.caption("Stores this image's pixels (no file name, no DICOM header) on this server "
                   "under its class, for fine-tuning the model.")
        if not clicked or label is None or item.data is None:
            return
        try:
            case = store_confirmed_case(item.data, label, site_dir, names, frame=item.frame,
                                        name=p.path)
        except (ValueError, OSError) as error:  # unreadable, or the folder is not writable
            logger.warning("storing a site-data case failed: %s", type(error).__name__)
            st.error(f"Not stored: {_plain(str(error))}", icon=":material/block:")
            return
        shown = _plain(card.display_name(label))
        if case.new:
            st.success(f"Added to site data as **{shown}**.", icon=":material/check_circle:")
        else:
            st.info(f"Already stored as **{shown}**; nothing was added.",
                    icon=":material/check_circle:")
        if case.also_labelled:
            others = ", ".join(_plain(card.display_name(name)) for name in case.also_labelled)
            st.warning(f"This image is also stored as {others}.", icon=":material/warning:")


def _render_prediction(p: Prediction, card: ModelCard) -> None:
    from mri_tumor.explain import explanation

    assert p.label is not None and p.confidence is not None and p.probabilities is not None
    columns = st.columns(3 if p.sequence is not None else 2)
    columns[0].metric("Predicted class", p.display_label or card.display_name(p.label))
    columns[1].metric("Confidence (calibrated)", format_probability(p.confidence))
    if p.sequence is not None:  # a model with a sequence head
        columns[2].metric("MR sequence", format_sequence(p),
                          help="The MR sequence the model reads off the image, with its "
                               "probability: " + ", ".join(
                                   f"{name} {format_probability(value)}" for name, value in
                                   (p.sequence_probabilities or {}).items()))
    if p.message:
        st.warning(p.message, icon=":material/warning:")
    st.vega_lite_chart(_probability_chart(p, card), width="stretch")
    try:
        about = explanation(p.label)
    except KeyError:  # a model of one's own whose classes have no explanation text
        st.caption(f"No description of {_plain(card.display_name(p.label))} is available.")
        return
    subject = "this result" if p.label == card.normal_class else about.title.lower()
    st.markdown(f"**About {subject}.** "
                f"{about.summary}\n\n**On MRI:** {about.on_mri}")
    st.markdown("Sources: " + " · ".join(f"[{s.title}]({s.url})" for s in about.sources))


def _probability_chart(p: Prediction, card: ModelCard) -> dict:
    """Vega-Lite bar chart of all class probabilities, the predicted class highlighted."""
    values = [{"class": card.display_name(name), "probability": probability,
               "text": format_probability(probability), "predicted": name == p.label}
              for name, probability in (p.probabilities or {}).items()]
    encoding = {
        "y": {"field": "class", "type": "nominal", "sort": None, "title": None},
        "x": {"field": "probability", "type": "quantitative", "title": "Probability",
              "scale": {"domain": [0, 1]}, "axis": {"format": "%", "tickCount": 5}},
    }
    return {
        "data": {"values": values},
        "height": {"step": 26},
        "layer": [
            {"mark": {"type": "bar", "cornerRadiusEnd": 3},
             "encoding": {**encoding, "color": {
                 "condition": {"test": "datum.predicted", "value": "#d1495b"},
                 "value": "#b8c0cc"}}},
            {"mark": {"type": "text", "align": "left", "dx": 4},
             "encoding": {**encoding, "text": {"field": "text", "type": "nominal"}}},
        ],
    }


def _render_results(items: list[AnalysedImage], card: ModelCard,
                    site_dir: Path | None = None, key: str = "result") -> None:
    from mri_tumor.inference.scans import scan_summaries
    from mri_tumor.presentation import scan_line

    counts = {status: sum(1 for i in items if i.prediction.status == status)
              for status in RESULT_NAMES}
    st.subheader("Results")
    summary = f"{plural(len(items), 'image')}: {counts['ok']} classified"
    if counts["rejected"]:
        summary += f", {counts['rejected']} not a brain MRI"
    if counts["error"]:
        summary += f", {counts['error']} unreadable"
    st.caption(summary)
    for scan in scan_summaries([item.prediction for item in items], card):
        st.info(_plain(scan_line(scan, card)), icon=":material/stacks:")
    rows = results_rows(items, card)
    notes = [str(row["Note"]) for row in rows]
    # Probabilities are texts, the same as on the result cards ("> 99.9%", never "100.0%").
    # The Note column is wide when there is a note, and its lines wrap (note_row_height).
    columns: dict[str, Any] = {
        "File": st.column_config.TextColumn(width="medium"),
        "Confidence": st.column_config.TextColumn(
            help="Calibrated probability of the predicted class"),
        "Note": st.column_config.TextColumn(width="large" if any(notes) else None)}
    if card.sequence_names:
        columns["Sequence"] = st.column_config.TextColumn(
            help="The MR sequence the model reads off the image, with its probability")
    for name in card.class_names:
        columns[card.display_name(name)] = st.column_config.TextColumn(
            help=f"Probability of {card.display_name(name)}")
    st.dataframe(rows, hide_index=True, column_config=columns,
                 row_height=note_row_height(notes))
    st.download_button("Download results (CSV)", results_csv(items, card),
                       file_name="mri-tumor-results.csv", mime="text/csv",
                       icon=":material/download:")
    show_heatmap, opacity = _heatmap_controls()
    for index, item in enumerate(items):
        _render_result(item, card, show_heatmap, opacity, site_dir,
                       f"{key}-{index}-{item.prediction.path}")


def _heatmap_controls() -> tuple[bool, float]:
    toggle_column, slider_column = st.columns([1, 2])
    show = toggle_column.toggle("Show Grad-CAM heat map", value=True, key="heatmap",
                                help="Colours the regions of the image that most raised the "
                                     "predicted class' score (Grad-CAM).")
    opacity = slider_column.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="opacity",
                                   disabled=not show)
    return show, opacity


@st.cache_resource(max_entries=4, show_spinner=False)
def _analyse_scans_cached(_predictor: Predictor, model_key: str,
                          uploads: list[tuple[str, bytes]]):
    from mri_tumor.app.scans import analyse_scans

    analysed, summaries = analyse_scans(_predictor, uploads)
    items = []
    for prediction, frame, key in analysed:
        if frame is None:
            items.append(AnalysedImage(prediction))
        elif key:  # Grad-CAM only for the slices that carry a scan's answer
            items.append(_with_pictures(_predictor, frame.image, prediction))
        else:
            shown = frame.image.copy()
            shown.thumbnail((DISPLAY_SIZE // 2, DISPLAY_SIZE // 2), Image.Resampling.LANCZOS)
            items.append(AnalysedImage(prediction, shown))
    return items, summaries


def main() -> None:
    """The page, top to bottom."""
    st.set_page_config(page_title="Brain MRI tumour classifier", page_icon="🧠",
                       layout="wide")
    # Hides the developer menu (deploy, rerun...) that a clinician has no use for.
    st.set_option("client.toolbarMode", "minimal")
    st.title(":material/neurology: Brain MRI tumour classifier")
    given = _model_dir_from_argv(sys.argv[1:])
    choices = model_choices(given)
    selected = _select_model(choices, given)
    st.markdown(page_intro(choices[selected].card))
    st.warning(DISCLAIMER, icon=":material/warning:")
    uploads = _uploads()
    try:
        predictor = _predictor(selected)
    except Exception as error:  # a broken model folder must show a message, not a traceback
        st.error(f"The model could not be loaded: {_plain(str(error))}",
                 icon=":material/block:")
        st.stop()
    _render_sidebar(predictor.card)
    inputs = _examples(predictor.card) + uploads
    uploaded = list(inputs)
    if not inputs:
        st.info("Upload one or more MRI slices above, or pick an example, to see results.",
                icon=":material/upload_file:")
        return
    # Results are cached per model too: the same upload gives other classes on another one.
    model_key = (f"{predictor.name}|{predictor.model_dir}|{predictor.card.version}|"
                 f"{predictor.card.created}")
    from mri_tumor.app.scans import is_scan_upload, render_scan

    scan_inputs = [(n, d) for n, d in inputs
                   if len(d) <= MAX_UPLOAD_BYTES and is_scan_upload(n, d)]
    inputs = [(n, d) for n, d in inputs if (n, d) not in scan_inputs]
    items: list[AnalysedImage] = []
    if scan_inputs:  # volumes and series: one card per scan of three or more slices
        with st.spinner(f"Reading {plural(len(scan_inputs), 'scan file')}…"):
            scan_items, scans = _analyse_scans_cached(predictor, model_key, scan_inputs)
        stacks = [s for s in scans if s["slices"] + s["refused"] >= MIN_VOLUME_SLICES]
        for scan in stacks:
            render_scan(scan, scan_items, predictor.card, lambda item: _render_result(
                item, predictor.card, True, 0.45, key=f"scan-{predictor.name}"), _plain)
        in_stack = {s["series"] for s in stacks}
        items += [_with_upload(i, dict(scan_inputs)) for i in scan_items
                  if i.prediction.series not in in_stack]
    if not inputs and not items:
        return
    progress = st.progress(0.0, text=f"Analysing {plural(len(inputs), 'file')}…")
    for done, (name, data) in enumerate(inputs, start=1):
        # The bytes go with each result (not into the cache), for "Add to site data".
        items += [replace(item, data=data)
                  for item in _analyse_cached(predictor, model_key, name, data)]
        progress.progress(done / len(inputs),
                          text=f"Analysed {done} of {plural(len(inputs), 'file')}")
    progress.empty()
    order = {name: index for index, (name, _) in enumerate(uploaded)}
    items.sort(key=lambda item: order.get(_upload_name(item.prediction.path, order), 0))
    # With MRI_TUMOR_SITE_DATA set, each result can be added to the site data (confirmed).
    _render_results(items, predictor.card, site_data_dir(), f"site-{predictor.name}")


def _upload_name(path: str, names: Mapping[str, object]) -> str:
    """The upload a result comes from: its path, or its path without the "#frame" part."""
    return path if path in names else path.rsplit("#", 1)[0]


def _with_upload(item: AnalysedImage, uploads: dict[str, bytes]) -> AnalysedImage:
    """A result of the scan path with its upload's bytes and frame, for "Add to site data"."""
    name = _upload_name(item.prediction.path, uploads)
    if name not in uploads:
        return item
    suffix = item.prediction.path[len(name) + 1:]
    return replace(item, data=uploads[name], frame=int(suffix) if suffix.isdigit() else 0)


if __name__ == "__main__":
    main()
