"""The web app's whole-scan part: a NIfTI volume, a zip of a study or several DICOM files of a
series become one card per scan, with its answer, its key slices and their Grad-CAM, and the
tumour probability along the stack; the per-slice rows are folded away. Research tool, not a
diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st
from PIL import Image

from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import looks_like_dicom_bytes
from mri_tumor.data.volume import is_nifti_name, looks_like_nifti_bytes
from mri_tumor.presentation import format_probability

if TYPE_CHECKING:
    from mri_tumor.data.reading import Frame
    from mri_tumor.inference import Prediction, Predictor

KEY_SLICES_SHOWN = 3
OUTLINE_COLOUR = (255, 214, 0)
# The sequences a FLAIR volume can be outlined with (the FLAIR + T1 + T1C+ model's companions).
COMPANION_SEQUENCES = ("T1", "T1C+")
NO_COMPANION = "none"


def is_scan_upload(name: str, data: bytes) -> bool:
    """Uploads that may belong to a scan: NIfTI, zip archives and DICOM files."""
    return (is_nifti_name(name) or name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04"
            or looks_like_nifti_bytes(data) or looks_like_dicom_bytes(data)
            or name.lower().endswith(".dcm"))


def analyse_scans(predictor: Predictor, uploads: Sequence[tuple[str, bytes]],
                  batch: int = 32) -> tuple[list[tuple[Prediction, Frame | None, bool]],
                                            list[dict[str, Any]]]:
    """Decode the uploads together (the files of one DICOM series form one scan), predict
    every slice and summarise each scan: ``(prediction, frame or None, is a key slice)``
    per result, and the scan summaries."""
    from mri_tumor.inference import Prediction
    from mri_tumor.inference.scans import scan_summaries

    ordered = predictor.decode_all([data for _, data in uploads], [name for name, _ in uploads])
    pairs = [(prediction, None if isinstance(item, Prediction) else item)
             for prediction, item in zip(predictor.predict_items(ordered, batch), ordered,
                                         strict=True)]
    summaries = scan_summaries([p for p, _ in pairs], predictor.card)
    keys = {(s["series"], k) for s in summaries if s["status"] == "ok" for k in s["key_slices"]}
    return [(p, f, (p.series, p.slice_index) in keys or (p.series, p.path) in keys)
            for p, f in pairs], summaries


def outline_picture(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The slice with the outline's edge drawn in yellow."""
    from skimage.segmentation import find_boundaries

    picture = np.asarray(image.convert("RGB")).copy()
    edge = find_boundaries(mask, mode="inner")
    if edge.shape == picture.shape[:2]:
        picture[edge] = OUTLINE_COLOUR
    return Image.fromarray(picture)


def render_outline(summary: dict[str, Any], keyed: Sequence[Any], outline: Any,
                   plain: Any, others: Mapping[str, str] | None = None
                   ) -> dict[int, Image.Image]:
    """The "Outline the tumour" switch of a scan the classifier calls a tumour, and what the
    outline measured: slice index -> the key slice with its outline (empty when off). The
    other scans of the page (``others``: series key -> name) can be named as this FLAIR's
    T1 and T1C+: then the FLAIR + T1 + T1C+ model outlines it."""
    if outline is None or not st.toggle("Outline the tumour",
                                        key=f"outline-{summary['series']}",
                                        help="The segmentation model outlines the FLAIR "
                                             "abnormality and measures it. Unverified."):
        return {}
    companions: dict[str, str] = {}
    choices: dict[str, str] = {}  # the name shown -> series key
    for key, name in (others or {}).items():
        if key != summary["series"]:
            choices[name if name not in choices else f"{name} ({len(choices) + 1})"] = key
    if choices:
        for column, sequence in zip(st.columns(len(COMPANION_SEQUENCES)), COMPANION_SEQUENCES,
                                    strict=True):
            choice = column.selectbox(
                f"{sequence} of the same session (optional)", [NO_COMPANION, *choices],
                key=f"with-{sequence}-{summary['series']}",
                help=f"Another scan of this page that is this FLAIR's {sequence}, of the "
                     "same session: the outline model that reads FLAIR, T1 and T1C+ then "
                     "outlines it (resampled onto the FLAIR's grid by the scans' "
                     "coordinates). Without one, the FLAIR model.")
            if choice != NO_COMPANION:
                companions[sequence] = choices[choice]
    with st.spinner("Outlining…"):
        try:
            result = outline(summary, companions)
        except ValueError as error:  # e.g. a "T1" that does not cover the FLAIR's head
            st.error(plain(str(error)), icon=":material/block:")
            return {}
    from mri_tumor.inference.outlining import ERROR

    if result is None or result.status == ERROR:
        st.warning("This scan could not be outlined" + (f": {plain(result.message)}" if result
                                                        else "."), icon=":material/block:")
        return {}
    st.markdown(f":material/straighten: {plain(result.message[:1].upper() + result.message[1:])}")
    if result.volume_mask is None:
        return {}
    shown = {}
    for item in keyed:
        index = item.prediction.slice_index
        if index is not None and item.image is not None:
            mask = result.volume_mask.display_mask(index)
            if mask.shape != (item.image.height, item.image.width):
                mask = np.asarray(Image.fromarray(mask).resize(item.image.size))
            shown[index] = outline_picture(item.image, mask)
    return shown


def render_scan(summary: dict[str, Any], items: Sequence[Any], card: ModelCard,
                render_item: Any, plain: Any, outline: Any = None,
                others: Mapping[str, str] | None = None) -> None:
    """One scan's card: answer, tumour probability along the stack, key slices with their
    Grad-CAM (``items``: the app's analysed images), the tumour's outline on request
    (``outline``: summary, companions -> its ``SegmentationResult``; ``others``: the page's
    scans, series key -> name, that can be named as a FLAIR's T1 / T1C+), and every slice
    folded away;
    ``render_item`` draws one slice's card, ``plain`` escapes text for markdown."""
    from mri_tumor.explain.gradcam import overlay

    members = [i for i in items if i.prediction.series == summary["series"]]
    with st.container(border=True):
        st.markdown(f"#### Scan: {plain(summary['source'])}")
        if summary["status"] != "ok":
            st.warning(plain(summary["message"][:1].upper() + summary["message"][1:]),
                       icon=":material/image_search:")
            st.caption(f":material/warning: {DISCLAIMER}")
            return
        label = card.display_name(summary["label"])
        st.markdown(f"### {plain(label)}")
        st.markdown(f"Scan-level probability **{format_probability(summary['probability'])}**"
                    f" — from the {len(summary['key_slices'])} most tumour-like consecutive "
                    f"slices of {summary['slices']} read"
                    + (f", {summary['refused']} refused as not brain MRI"
                       if summary["refused"] else "") + ".")
        if summary.get("caution"):
            st.warning(plain("Caution: " + summary["caution"]), icon=":material/warning:")
        if summary.get("disagreement"):
            st.info(plain(summary["disagreement"]), icon=":material/rule:")
        curve = [(i.prediction.slice_index, 1 - (i.prediction.probabilities or {}).get(
            card.normal_class or "", 0.0)) for i in members
            if i.prediction.status == "ok" and i.prediction.slice_index is not None]
        if curve:
            st.caption("Tumour probability (1 - p(no tumour)) of each slice, by its place in "
                       "the stack (inferior to superior)")
            st.line_chart({"tumour probability": [p for _, p in curve]}, height=180)
        keyed = [i for i in members if i.heatmap is not None][:KEY_SLICES_SHOWN]
        outlined = (render_outline(summary, keyed, outline, plain, others)
                    if summary["label"] != card.normal_class else {})
        if keyed:
            columns = st.columns(len(keyed))
            for column, item in zip(columns, keyed, strict=True):
                with column:
                    assert item.image is not None and item.heatmap is not None
                    index = item.prediction.slice_index
                    st.image(outlined.get(index, item.image), width="stretch",
                             caption=f"slice {index}" + (", outlined (unverified)"
                                                         if index in outlined else ""))
                    st.image(overlay(item.image, item.heatmap, 0.45), width="stretch",
                             caption=f"Grad-CAM for {item.prediction.display_label}")
        with st.expander(f"All {len(members)} slices"):
            for item in members:
                render_item(item)
        st.caption(f":material/warning: {DISCLAIMER}")
