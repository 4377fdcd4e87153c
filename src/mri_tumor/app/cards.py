"""The page's result cards: one per image, with the slice and its Grad-CAM side by side (the map
of another class on request), the predicted class, its calibrated confidence, the chart of
every class, and the research-tool statement; then, once per class found on the page, what
the class means. Research tool, not a diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from mri_tumor.app.analysis import AnalysedImage, class_heatmap, image_digest
from mri_tumor.app.wording import NOT_MRI_TEXT, plain
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.site import store_confirmed_case
from mri_tumor.inference.results import BORDERLINE_REFUSED
from mri_tumor.presentation import format_probability, format_sequence

if TYPE_CHECKING:
    from mri_tumor.inference import Prediction, Predictor

EXPLANATIONS_TITLE = "About the classes on this page"
CAM_CLASS_LABEL = "Heat map of class"

logger = logging.getLogger(__name__)


@st.cache_resource(max_entries=128, ttl=3600, show_spinner="Computing the heat map…")
def _class_heatmap_cached(_predictor: Predictor, model_key: str, digest: str, class_name: str,
                          _item: AnalysedImage) -> np.ndarray:
    # Keyed on the model, the picture's pixels and the class: asked for once, kept.
    return class_heatmap(_predictor, _item, class_name)


def heatmap_controls() -> tuple[bool, float]:
    """*Show Grad-CAM heat map* (on by default) and its opacity."""
    toggle_column, slider_column = st.columns(2)
    show = toggle_column.toggle("Show Grad-CAM heat map", value=True, key="heatmap",
                                help="Shows, next to each slice, the regions that most raised "
                                     "a class' score (Grad-CAM; the predicted class unless "
                                     "another is chosen under it).")
    opacity = slider_column.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key="opacity",
                                   disabled=not show)
    return show, opacity


def render_result(item: AnalysedImage, card: ModelCard, show_heatmap: bool, opacity: float,
                  site_dir: Path | None = None, key: str = "result",
                  predictor: Predictor | None = None, model_key: str = "") -> None:
    """One image's card. ``key`` makes its widgets unique on the page; with ``predictor``
    the heat map of another class can be asked for (computed then, and cached)."""
    p = item.prediction
    with st.container(border=True):
        st.markdown(f"#### {plain(p.path)}")
        reason = p.message.removeprefix(f"{p.path}: ")
        reason = plain(reason[:1].upper() + reason[1:])
        if p.status == "error":
            st.error(reason, icon=":material/block:")
            return
        if item.image is None:  # refused by its DICOM header (a CT...): nothing decoded
            st.warning(f"**{NOT_MRI_TEXT}** {reason}", icon=":material/image_search:")
            st.caption(f":material/warning: {DISCLAIMER}")
            return
        picture, details = st.columns([4, 3], gap="medium")
        with picture:
            _render_pictures(item, card, show_heatmap, opacity, key, predictor, model_key)
        with details:
            if p.status == "rejected":
                st.warning(f"**{NOT_MRI_TEXT}** No tumour class is given; upload a brain MRI "
                           "slice (axial, coronal or sagittal).", icon=":material/image_search:")
                if BORDERLINE_REFUSED in p.message:
                    st.caption(plain(BORDERLINE_REFUSED))
            else:
                render_prediction(p, card)
            st.caption(f":material/warning: {DISCLAIMER}")
            if site_dir is not None and item.data is not None:
                render_site_data(item, card, site_dir, key)
        if p.status == "ok" and p.label is not None:  # the chart takes the card's width
            st.vega_lite_chart(probability_chart(p, card), width="stretch")
            shown = plain(p.display_label or card.display_name(p.label))
            st.caption(f"What {shown} means: see *{EXPLANATIONS_TITLE}* below the results.")


def _render_pictures(item: AnalysedImage, card: ModelCard, show_heatmap: bool, opacity: float,
                     key: str, predictor: Predictor | None, model_key: str) -> None:
    """The slice and, next to it, its Grad-CAM (the predicted class', or the class chosen
    under it); the slice alone without a heat map (switched off, rejected, not computed)."""
    from mri_tumor.explain.gradcam import overlay

    p = item.prediction
    assert item.image is not None
    if not show_heatmap or item.heatmap is None or p.label is None:
        st.image(item.image, width="stretch")
        return
    original, mapped = st.columns(2, gap="small")
    original.image(item.image, width="stretch", caption="The slice as read")
    chosen = p.label
    if predictor is not None:
        names = list(card.class_names)
        chosen = st.selectbox(
            CAM_CLASS_LABEL, names, index=names.index(p.label) if p.label in names else 0,
            format_func=card.display_name, key=f"{key}-cam-class",
            help="Grad-CAM of another class: where this image raised that class' score. "
                 "Computed when chosen.") or p.label
    heatmap = item.heatmap
    if chosen != p.label and predictor is not None:
        try:
            heatmap = _class_heatmap_cached(predictor, model_key, image_digest(item.image),
                                            chosen, item)
        except Exception as error:  # a page must show a message, never a traceback
            logger.warning("Grad-CAM of another class failed: %s", type(error).__name__)
            mapped.warning(f"The heat map of {plain(card.display_name(chosen))} could not be "
                           "computed.", icon=":material/warning:")
            return
    shown = card.display_name(chosen)
    mapped.image(overlay(item.image, heatmap, opacity), width="stretch",
                 caption=f"Grad-CAM for {shown}: warm colours mark the regions that most "
                         "raised this class' score." + (" (Not the predicted class.)"
                                                        if chosen != p.label else ""))


def render_prediction(p: Prediction, card: ModelCard) -> None:
    """The predicted class, its calibrated confidence (and MR sequence) and the unsure note;
    the card adds the chart of every class, and the class' explanation is shown once, below
    the cards (``render_explanations``)."""
    assert p.label is not None and p.confidence is not None and p.probabilities is not None
    label = p.display_label or card.display_name(p.label)
    # One above the other, each the column's width: a long class name or "T1C+ (> 99.9%)"
    # wraps (style.py) rather than being cut, and never into a narrow third of the column.
    st.metric("Predicted class", label)
    st.metric("Confidence (calibrated)", format_probability(p.confidence))
    if p.sequence is not None:  # a model with a sequence head
        st.metric("MR sequence", format_sequence(p),
                          help="The MR sequence the model reads off the image, with its "
                               "probability: " + ", ".join(
                                   f"{name} {format_probability(value)}" for name, value in
                                   (p.sequence_probabilities or {}).items()))
    if p.message:
        st.warning(p.message, icon=":material/warning:")


def probability_chart(p: Prediction, card: ModelCard) -> dict:
    """Vega-Lite bar chart of all class probabilities, the predicted class highlighted."""
    values = [{"class": card.display_name(name), "probability": probability,
               "text": format_probability(probability), "predicted": name == p.label}
              for name, probability in (p.probabilities or {}).items()]
    encoding = {
        "y": {"field": "class", "type": "nominal", "sort": None, "title": None,
              "axis": {"labelLimit": 170}},  # "Papilloma (choroid plexus)" in full
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


def page_classes(items: Iterable[AnalysedImage], scans: Iterable[dict],
                 card: ModelCard) -> list[str]:
    """The classes the page answers, each once, in the order they first appear: the scans'
    answers, then each classified image's class."""
    labels = [s.get("label") for s in scans if s.get("status") == "ok"]
    labels += [i.prediction.label for i in items if i.prediction.status == "ok"]
    return [name for name in dict.fromkeys(labels) if name in card.class_names]


def render_explanations(labels: list[str], card: ModelCard) -> None:
    """What each class found on the page means, once per class, with its public sources."""
    from mri_tumor.explain import explanation

    if not labels:
        return
    with st.container(border=True):
        st.subheader(EXPLANATIONS_TITLE)
        for label in labels:
            shown = card.display_name(label)
            try:
                about = explanation(label)
            except KeyError:  # a model of one's own whose classes have no explanation text
                st.caption(f"No description of {plain(shown)} is available.")
                continue
            subject = (f"“{plain(shown)}” results" if label == card.normal_class
                       else about.title.lower())
            st.markdown(f"**About {subject}.** {about.summary}\n\n**On MRI:** {about.on_mri}")
            st.markdown("Sources: " + " · ".join(f"[{s.title}]({s.url})"
                                                 for s in about.sources))
        st.caption(f":material/warning: {DISCLAIMER}")


def render_site_data(item: AnalysedImage, card: ModelCard, site_dir: Path, key: str) -> None:
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
            st.error(f"Not stored: {plain(str(error))}", icon=":material/block:")
            return
        shown = plain(card.display_name(label))
        if case.new:
            st.success(f"Added to site data as **{shown}**.", icon=":material/check_circle:")
        else:
            st.info(f"Already stored as **{shown}**; nothing was added.",
                    icon=":material/check_circle:")
        if case.also_labelled:
            others = ", ".join(plain(card.display_name(name)) for name in case.also_labelled)
            st.warning(f"This image is also stored as {others}.", icon=":material/warning:")
