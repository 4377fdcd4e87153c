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

The page's parts live beside it: ``analysis`` (an upload -> results with their pictures and
heat maps), ``cards`` (a result's card, and each class' explanation once per page),
``sidebar``, ``examples``, ``style`` (texts wrap instead of being cut) and ``scans``.

Modules that import torch (inference, explain, data) are imported inside the functions that
use them: importing torch takes seconds, and this way the title and the uploader are on the
screen while the model loads on a fresh server.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
from PIL import Image

from mri_tumor.app.analysis import (
    DISPLAY_SIZE,
    AnalysedImage,
    analyse_upload,
    too_large,
    with_pictures,
)
from mri_tumor.app.cards import (
    heatmap_controls,
    page_classes,
    render_explanations,
    render_result,
)
from mri_tumor.app.examples import SAMPLES_DIR, render_examples
from mri_tumor.app.sidebar import (
    ModelChoice,
    model_choices,
    model_description,
    render_sidebar,
    select_model,
)
from mri_tumor.app.style import apply_page_style
from mri_tumor.app.wording import NOT_MRI_TEXT, plain, plural
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB
from mri_tumor.data.site import site_data_dir
from mri_tumor.data.volume import MIN_VOLUME_SLICES
from mri_tumor.presentation import format_probability, format_sequence

if TYPE_CHECKING:
    from mri_tumor.inference import Predictor

# Re-exported: the tests and the benchmark import them from here.
__all__ = ["DISPLAY_SIZE", "MAX_UPLOAD_BYTES", "NOT_MRI_TEXT", "SAMPLES_DIR", "AnalysedImage",
           "ModelChoice", "analyse_upload", "main", "model_choices", "model_description",
           "note_row_height", "page_intro", "plural", "results_csv", "results_rows"]

UPLOAD_HELP = (f"JPG, PNG, BMP, TIFF, DICOM (.dcm), NIfTI (.nii, .nii.gz) or a zip of a study, "
               f"up to {MAX_UPLOAD_MB} MB each. Select several files at once; the DICOM files "
               "of one series, a NIfTI volume or a zip become one answer per scan.")
# The uploader takes files up to Streamlit's own cap (server.maxUploadSize, 200 MB unless
# set), so that a file over the app's limit reaches the page and gets its own error card;
# a limit of MAX_UPLOAD_MB on the uploader itself would drop it with only a tooltip.
UPLOAD_CAP_OPTION = "server.maxUploadSize"
RESULT_NAMES = {"ok": None, "rejected": "Not a brain MRI", "error": "Unreadable"}
NOTE_LINE_CHARS = 50  # about what one line of the table's (large) Note column holds
NOTE_MAX_LINES = 4  # a longer note is cut in the table (it is in full on its result card)
MAX_LISTED_CLASSES = 6  # the page's intro names the classes of a model with at most this many


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


def page_intro(card: ModelCard | None) -> str:
    """The sentence under the title: what the selected model names (from its card)."""
    if card is None:
        what = "Sorts brain MRI slices into the classes of the selected model"
    elif len(card.class_names) <= MAX_LISTED_CLASSES:
        names = [f"**{plain(card.display_name(name))}**" for name in card.class_names]
        what = ("Sorts brain MRI slices into " + ", ".join(names[:-1])
                + (" or " if len(names) > 1 else "") + names[-1])
    else:
        kind = "tumour type" if card.label_scheme == "types" else "class"
        what = (f"Names the {kind} of brain MRI slices (one of {len(card.class_names)}, "
                "listed in the sidebar)")
    if card is not None and card.sequence_names:
        sequences = [plain(name) for name in card.sequence_names]
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


@st.cache_resource(max_entries=64, ttl=3600, show_spinner=False)
def _analyse_cached(_predictor: Predictor, model_key: str, name: str,
                    data: bytes) -> list[AnalysedImage]:
    # Keyed on the file's name and bytes, so moving a slider does not redo the work.
    return analyse_upload(_predictor, name, data)


def _upload_cap_mb() -> int:
    """The uploader's own cap: Streamlit's (``server.maxUploadSize``), never below the
    app's limit; the app refuses what is over ``MAX_UPLOAD_MB`` with an error card."""
    try:
        cap = int(st.get_option(UPLOAD_CAP_OPTION))
    except (TypeError, ValueError, RuntimeError):
        cap = MAX_UPLOAD_MB
    return max(cap, MAX_UPLOAD_MB)


def _uploads() -> tuple[list[tuple[str, bytes]], list[AnalysedImage], list[str]]:
    """The uploaded files: (name, bytes) of those within the limit, an error result for each
    one over it (its bytes are not read), and every name in the order of the uploads."""
    files = st.file_uploader("Brain MRI slices", accept_multiple_files=True,
                             max_upload_size=_upload_cap_mb(), help=UPLOAD_HELP,
                             key="uploads")
    st.caption(UPLOAD_HELP)
    uploads, refused = [], []
    for file in files or []:
        if file.size > MAX_UPLOAD_BYTES:
            refused.append(too_large(file.name, file.size))
        else:
            uploads.append((file.name, file.getvalue()))
    return uploads, refused, [file.name for file in files or []]


def _render_results(items: list[AnalysedImage], card: ModelCard, site_dir: Path | None,
                    key: str, predictor: Predictor, model_key: str) -> None:
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
        st.info(plain(scan_line(scan, card)), icon=":material/stacks:")
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
    show_heatmap, opacity = heatmap_controls()
    for index, item in enumerate(items):
        render_result(item, card, show_heatmap, opacity, site_dir,
                      f"{key}-{index}-{item.prediction.path}", predictor, model_key)


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
            items.append(with_pictures(_predictor, frame.image, prediction))
        else:
            shown = frame.image.copy()
            shown.thumbnail((DISPLAY_SIZE // 2, DISPLAY_SIZE // 2), Image.Resampling.LANCZOS)
            items.append(AnalysedImage(prediction, shown))
    return items, summaries


@st.cache_resource(max_entries=4, show_spinner=False)
def _outlines_cached(_predictor: Predictor, model_key: str,
                     uploads: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Scan name -> its outline (``SegmentationResult``), for the scan uploads."""
    from mri_tumor.inference.outlining import Outliner
    from mri_tumor.inference.segmentation import Segmenter

    results = Outliner(Segmenter.load(), _predictor, out=None).run_inputs(
        [(name, data, name) for name, data in uploads])
    return {result.name: result for result in results}


@st.cache_resource(max_entries=4, show_spinner=False)
def _outline_with_cached(_predictor: Predictor, model_key: str,
                         uploads: list[tuple[str, bytes]], series: str, source: str,
                         companions: tuple[tuple[str, str], ...]) -> Any:
    """The FLAIR scan ``series`` outlined by the FLAIR + T1 + T1C+ model with other scans of
    the uploads as its companions (``(sequence, series key)``); ValueError when one of them
    cannot be read as a volume."""
    from mri_tumor.data.reading import upload_volumes
    from mri_tumor.inference.outlining import Outliner
    from mri_tumor.inference.segmentation import SHIPPED_MULTI_SEGMENTER, Segmenter

    volumes = upload_volumes(uploads)
    if missing := [key for key in (series, *(key for _, key in companions))
                   if key not in volumes]:
        raise ValueError(f"{len(missing)} of these scans could not be read as a volume "
                         "(a NIfTI file or a DICOM series of one geometry)")
    outliner = Outliner(Segmenter.load(SHIPPED_MULTI_SEGMENTER), _predictor, None,
                        {sequence: volumes[key] for sequence, key in companions})
    return outliner.outline_volume(volumes[series], source)


def main() -> None:
    """The page, top to bottom."""
    st.set_page_config(page_title="Brain MRI tumour classifier", page_icon="🧠",
                       layout="wide")
    # Hides the developer menu (deploy, rerun...) that a clinician has no use for; `mri-tumor
    # app` passes the same option on the command line, so that it holds from the first session.
    st.set_option("client.toolbarMode", "minimal")
    apply_page_style()
    st.title(":material/neurology: Brain MRI tumour classifier")
    given = _model_dir_from_argv(sys.argv[1:])
    choices = model_choices(given)
    selected = select_model(choices, given)
    st.markdown(page_intro(choices[selected].card))
    st.warning(DISCLAIMER, icon=":material/warning:")
    uploads, refused, upload_names = _uploads()
    try:
        predictor = _predictor(selected)
    except Exception as error:  # a broken model folder must show a message, not a traceback
        st.error(f"The model could not be loaded: {plain(str(error))}",
                 icon=":material/block:")
        st.stop()
    card = predictor.card
    render_sidebar(card)
    examples = render_examples(card)
    inputs = examples + uploads
    if not inputs and not refused:
        st.info("Upload one or more MRI slices above, or pick an example, to see results.",
                icon=":material/upload_file:")
        return
    # Results are cached per model too: the same upload gives other classes on another one.
    model_key = f"{predictor.name}|{predictor.model_dir}|{card.version}|{card.created}"
    from mri_tumor.app.scans import is_scan_upload, render_scan

    scan_inputs = [(n, d) for n, d in inputs if is_scan_upload(n, d)]
    inputs = [(n, d) for n, d in inputs if (n, d) not in scan_inputs]
    items: list[AnalysedImage] = list(refused)
    stacks: list[dict[str, Any]] = []
    if scan_inputs:  # volumes and series: one card per scan of three or more slices
        with st.spinner(f"Reading {plural(len(scan_inputs), 'scan file')}…"):
            scan_items, scans = _analyse_scans_cached(predictor, model_key, scan_inputs)
        stacks = [s for s in scans if s["slices"] + s["refused"] >= MIN_VOLUME_SLICES]
        slice_keys = iter(range(len(scan_items)))

        scans_shown = {s["series"]: s["source"] for s in stacks}

        def outline(summary: dict[str, Any], companions: dict[str, str]) -> Any:
            if companions:
                return _outline_with_cached(predictor, model_key, scan_inputs,
                                            summary["series"], summary["source"],
                                            tuple(companions.items()))
            return _outlines_cached(predictor, model_key, scan_inputs).get(summary["source"])

        for scan in stacks:
            render_scan(scan, scan_items, card, lambda item: render_result(
                item, card, True, 0.45, key=f"scan-{predictor.name}-{next(slice_keys)}",
                predictor=predictor, model_key=model_key), plain, outline, scans_shown)
        in_stack = {s["series"] for s in stacks}
        items += [_with_upload(i, dict(scan_inputs)) for i in scan_items
                  if i.prediction.series not in in_stack]
        shown_in_stacks = [i for i in scan_items if i.prediction.series in in_stack]
    else:
        shown_in_stacks = []
    if inputs:
        progress = st.progress(0.0, text=f"Analysing {plural(len(inputs), 'file')}…")
        for done, (name, data) in enumerate(inputs, start=1):
            # The bytes go with each result (not into the cache), for "Add to site data".
            items += [replace(item, data=data)
                      for item in _analyse_cached(predictor, model_key, name, data)]
            progress.progress(done / len(inputs),
                              text=f"Analysed {done} of {plural(len(inputs), 'file')}")
        progress.empty()
    if items:
        order = {name: index for index, name in
                 enumerate([name for name, _ in examples] + upload_names)}
        items.sort(key=lambda item: order.get(_upload_name(item.prediction.path, order), 0))
        # With MRI_TUMOR_SITE_DATA set, each result can be added to the site data (confirmed).
        _render_results(items, card, site_data_dir(), f"site-{predictor.name}", predictor,
                        model_key)
    # What each class answered on the page means: once per class, below all the cards.
    render_explanations(page_classes([*shown_in_stacks, *items], stacks, card), card)


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
