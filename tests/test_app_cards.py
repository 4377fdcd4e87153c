"""The web app's result cards (mri_tumor/app/cards.py), driven by Streamlit's AppTest: a file
over the upload limit gets its own error card, the slice and its Grad-CAM side by side, the
heat map of another class only when asked for, and each class' explanation once per page."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from tests.conftest import FIXTURE_IMAGES

from mri_tumor import Predictor
from mri_tumor.app import cards
from mri_tumor.app.analysis import AnalysedImage, analyse_upload, class_heatmap
from mri_tumor.app.cards import CAM_CLASS_LABEL, EXPLANATIONS_TITLE
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB
from mri_tumor.explain.gradcam import gradcam
from mri_tumor.inference import Prediction
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR

APP = Path(__file__).resolve().parents[1] / "src" / "mri_tumor" / "app" / "page.py"
TIMEOUT = 120
CARD = ModelCard.load(SHIPPED_MODEL_DIR)


def _fixture(class_name: str, index: int = 0) -> bytes:
    return sorted((FIXTURE_IMAGES / class_name).glob("*.jpg"))[index].read_bytes()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP)])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.file_uploader[0].set_value([(name, data, "application/octet-stream")
                                   for name, data in files])
    at.run()
    assert not at.exception
    return at


def _captions(at: AppTest) -> list[str]:
    return [c for image in at.main.image for c in image.captions]


def _cam_selectors(at: AppTest) -> list:
    return [s for s in at.selectbox if s.label == CAM_CLASS_LABEL]


# -- a file over the upload limit ----------------------------------------------------------------
def test_a_file_over_the_limit_gets_its_own_error_card_and_counts_as_unreadable(
        app: AppTest) -> None:
    # The uploader lets such a file through to the page (its own cap is higher), so that the
    # page can say why it is refused instead of the uploader dropping it.
    assert app.file_uploader[0].proto.max_upload_size_mb > MAX_UPLOAD_MB
    _upload(app, [("huge.jpg", bytes(MAX_UPLOAD_BYTES + 1)),
                  ("scan.jpg", _fixture("glioma"))])
    [error] = [e.value for e in app.main.error]
    assert "larger than the 50 MB limit" in error
    assert "2 images: 1 classified, 1 unreadable" in [c.value for c in app.main.caption]
    table = app.dataframe[0].value
    assert list(table["File"]) == ["huge.jpg", "scan.jpg"]  # in the order of the uploads
    assert list(table["Result"]) == ["Unreadable", "Glioma"]
    assert "larger than the 50 MB limit" in table["Note"][0]
    headings = [m.value for m in app.main.markdown if m.value.startswith("#### ")]
    assert headings == ["#### huge\\.jpg", "#### scan\\.jpg"]  # a card of its own


def test_a_file_at_the_limit_is_analysed(app: AppTest) -> None:
    data = _fixture("notumor")
    _upload(app, [("padded.jpg", data + b"\0" * (MAX_UPLOAD_BYTES - len(data)))])
    assert not app.main.error
    assert "1 image: 1 classified" in [c.value for c in app.main.caption]


# -- the slice and its Grad-CAM ------------------------------------------------------------------
def test_the_slice_and_its_gradcam_are_shown_side_by_side(app: AppTest) -> None:
    app.pills[0].set_value(["meningioma.jpg"]).run()
    assert not app.exception
    captions = _captions(app)
    assert len(captions) == 2
    assert captions[0] == "The slice as read"
    assert captions[1].startswith("Grad-CAM for ")
    # Side by side: each in one of two equal columns of the card.
    pair = [c for c in app.main.columns if c.weight == 0.5 and len(c.image) == 1]
    assert [c.image[0].captions[0][:13] for c in pair] == ["The slice as ", "Grad-CAM for "]
    app.toggle[0].set_value(False).run()  # the heat map switched off: the slice alone
    assert not app.exception
    assert len(app.main.image) == 1 and not any("Grad-CAM" in c for c in _captions(app))
    assert not _cam_selectors(app)


def test_the_heatmap_of_another_class_is_computed_only_when_asked(
        app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def counting(predictor: Predictor, item: AnalysedImage, class_name: str) -> np.ndarray:
        asked.append(class_name)
        return class_heatmap(predictor, item, class_name)

    monkeypatch.setattr(cards, "class_heatmap", counting)
    cards._class_heatmap_cached.clear()
    app.pills[0].set_value(["glioma.jpg"]).run()
    [selector] = _cam_selectors(app)
    [predicted] = [m.value for m in app.main.metric if m.label == "Predicted class"]
    assert selector.options == [CARD.display_name(n) for n in CARD.class_names]
    assert CARD.display_name(selector.value) == predicted
    assert asked == []  # the predicted class' map came with the result
    other = next(n for n in CARD.class_names if CARD.display_name(n) != predicted)
    selector.set_value(other).run()
    assert not app.exception
    assert asked == [other]
    caption = _captions(app)[1]
    assert caption.startswith(f"Grad-CAM for {CARD.display_name(other)}:")
    assert "Not the predicted class" in caption
    app.slider[0].set_value(0.8).run()  # another rerun: the map is kept, not recomputed
    assert not app.exception and asked == [other]
    assert _captions(app)[1].startswith(f"Grad-CAM for {CARD.display_name(other)}:")


def test_class_heatmap_is_the_gradcam_of_that_class_on_the_shown_copy(
        predictor: Predictor) -> None:
    [item] = analyse_upload(predictor, "slice.jpg", _fixture("pituitary"))
    assert item.image is not None and item.heatmap is not None
    label = item.prediction.label
    assert class_heatmap(predictor, item, label) is item.heatmap  # nothing recomputed
    other = next(n for n in predictor.class_names if n != label)
    heatmap = class_heatmap(predictor, item, other)
    expected = gradcam(predictor, item.image, predictor.class_names.index(other),
                       size=item.image.size)
    np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    assert heatmap.shape == item.heatmap.shape == (item.image.height, item.image.width)
    assert not np.allclose(heatmap, item.heatmap)
    with pytest.raises(ValueError, match="not a class"):
        class_heatmap(predictor, item, "not-a-class")
    with pytest.raises(ValueError, match="no image"):
        class_heatmap(predictor, AnalysedImage(Prediction("x.jpg", "error")), other)


def test_a_failing_class_heatmap_shows_a_message_not_a_traceback(
        app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args: object) -> np.ndarray:
        raise RuntimeError("boom")

    monkeypatch.setattr(cards, "class_heatmap", failing)
    cards._class_heatmap_cached.clear()
    app.pills[0].set_value(["notumor.jpg"]).run()
    [selector] = _cam_selectors(app)
    other = next(n for n in CARD.class_names if n != selector.value)
    selector.set_value(other).run()
    assert not app.exception
    assert any("could not be computed" in w.value for w in app.main.warning)
    assert any(DISCLAIMER in c.value for c in app.main.caption)


# -- what each class means, once per class -------------------------------------------------------
def test_each_class_is_explained_once_below_the_cards(app: AppTest) -> None:
    _upload(app, [("a.jpg", _fixture("glioma")), ("b.jpg", _fixture("glioma", 1)),
                  ("c.jpg", _fixture("meningioma"))])
    predicted = [m.value for m in app.main.metric if m.label == "Predicted class"]
    assert len(predicted) == 3
    about = [m.value for m in app.main.markdown if m.value.startswith("**About")]
    assert len(about) == len(set(predicted)) < len(predicted)  # once per class, not per card
    sources = [m.value for m in app.main.markdown if m.value.startswith("Sources: ")]
    assert len(sources) == len(about)
    assert [s.value for s in app.main.subheader][-1] == EXPLANATIONS_TITLE
    pointers = [c.value for c in app.main.caption if c.value.startswith("What ")]
    assert pointers == [f"What {name} means: see *{EXPLANATIONS_TITLE}* below the results."
                        for name in predicted]
    assert sum(DISCLAIMER in c.value for c in app.main.caption) >= len(predicted) + 1


def test_no_explanation_without_a_class(app: AppTest) -> None:
    _upload(app, [("broken.png", b"\x89PNG\r\n\x1a\nbroken")])
    assert app.main.error
    assert not any(m.value.startswith("**About") for m in app.main.markdown)
    assert EXPLANATIONS_TITLE not in [s.value for s in app.main.subheader]


def _mri_series(count: int = 6) -> list[tuple[str, bytes]]:
    """The DICOM files of one axial series of real MRI slices (fixture glioma slices)."""
    from pydicom.uid import generate_uid
    from tests.dicom_factory import dicom_bytes

    uid = generate_uid()
    pictures = sorted((FIXTURE_IMAGES / "glioma").glob("*.jpg"))
    files = []
    for k in range(count):
        picture = Image.open(pictures[k % len(pictures)]).convert("L").resize((160, 160))
        pixels = np.asarray(picture, dtype=np.uint16) * 16
        files.append((f"im{k:02d}.dcm", dicom_bytes(
            pixels, series_uid=uid, instance=k + 1, attributes={
                "PixelSpacing": [1.0, 1.0], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                "ImagePositionPatient": [0.0, 0.0, 5.0 * k]})))
    return files


def test_the_slices_of_a_scan_keep_their_widgets_apart(app: AppTest) -> None:
    """A DICOM series gives one scan card whose key slices each show their own heat-map
    class selector (no duplicate widget keys), and the scan's class is explained once."""
    _upload(app, _mri_series())
    assert any(m.value.startswith("#### Scan:") for m in app.main.markdown)
    selectors = _cam_selectors(app)
    assert len(selectors) >= 2  # the key slices' cards, folded away under the scan
    assert len({s.key for s in selectors}) == len(selectors)
    about = [m.value for m in app.main.markdown if m.value.startswith("**About")]
    assert 1 <= len(about) <= len({s.value for s in selectors}) + 1


def test_a_tumour_scan_can_be_outlined_and_shows_its_volume(app: AppTest) -> None:
    """A FLAIR series the classifier calls a tumour gets the "Outline the tumour" switch;
    switched on, the scan card says what the outline measured, in millilitres, and draws
    the outline (yellow) on its key slices."""
    from pydicom.uid import generate_uid
    from tests.dicom_factory import _plane, dicom_bytes

    from mri_tumor.app.scans import OUTLINE_COLOUR, outline_picture

    uid = generate_uid()
    slices = sorted((Path(__file__).parent / "fixtures" / "flair").glob("*_FLAIR.jpg"))
    files = [(f"flair{n:02d}.dcm", dicom_bytes(
        np.asarray(Image.open(path).convert("L"), dtype=np.uint16), series_uid=uid,
        instance=n, window=(128.0, 256.0), attributes=_plane(256, 256, n)))
        for n, path in enumerate(slices, start=1)]
    _upload(app, files)
    [switch] = [t for t in app.toggle if t.label.startswith("Outline the tumour")]
    switch.set_value(True)
    app.run()
    assert not app.exception
    measured = [m.value for m in app.main.markdown if "Tumour outlined" in m.value]
    assert measured and " mL over " in measured[0]

    picture = Image.new("L", (8, 8), 40)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    drawn = np.asarray(outline_picture(picture, mask))
    yellow = (drawn == OUTLINE_COLOUR).all(axis=2)
    assert yellow[2, 2] and yellow[2, 5] and not yellow[3, 3] and not yellow[0, 0]


def _flair_volume() -> np.ndarray:
    """The FLAIR fixture slices as one volume. NIfTI's first axis runs left to right and its
    second back to front: image columns and rows, bottom row first."""
    slices = sorted((Path(__file__).parent / "fixtures" / "flair").glob("*_FLAIR.jpg"))
    return np.stack([np.asarray(Image.open(p).convert("L"))[::-1].T for p in slices], axis=2)


def _nifti(pixels: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(pixels.astype(np.int16), np.diag([0.94, 0.94, 5.0, 1.0]))
    return gzip.compress(image.to_bytes())


def test_a_scan_named_for_a_cautioned_sequence_shows_the_models_caution(app: AppTest) -> None:
    _upload(app, [("case_t1.nii.gz", _nifti(_flair_volume())),
                  ("case.nii.gz", _nifti(_flair_volume()))])
    cautions = [w.value for w in app.warning if "Caution" in w.value]
    assert len(cautions) == 1 and "T1 series" in cautions[0]


def test_a_flair_volume_can_be_outlined_with_its_t1_upload(app: AppTest) -> None:
    """Beside a FLAIR NIfTI the classifier calls a tumour, another NIfTI upload can be named
    its T1: the outline is then the FLAIR + T1 + T1C+ model's, and says it read T1."""
    volume = _flair_volume()
    _upload(app, [("flair.nii.gz", _nifti(volume)), ("t1.nii.gz", _nifti(volume[::-1].copy()))])
    options, alone, measured = _outline_with_t1(app)
    assert options == ["none", "t1.nii.gz"]
    assert alone and "read with" not in alone[0]  # the FLAIR model, until a T1 is named
    assert measured and "read with T1" in measured[0]


def test_a_flair_series_can_be_outlined_with_a_t1_series_of_the_upload(app: AppTest) -> None:
    """The same for DICOM: of two series uploaded together, the second can be named the
    first's T1."""
    from pydicom.uid import generate_uid
    from tests.dicom_factory import _plane, dicom_bytes

    slices = sorted((Path(__file__).parent / "fixtures" / "flair").glob("*_FLAIR.jpg"))
    files = []
    for prefix, uid in (("flair", generate_uid()), ("t1", generate_uid())):
        files += [(f"{prefix}/{n:02d}.dcm", dicom_bytes(
            np.asarray(Image.open(path).convert("L"), dtype=np.uint16), series_uid=uid,
            instance=n, window=(128.0, 256.0), attributes=_plane(256, 256, n)))
            for n, path in enumerate(slices, start=1)]
    _upload(app, files)
    options, _, measured = _outline_with_t1(app)
    assert len(options) == 2  # none, and the other series
    assert measured and "read with T1" in measured[0]


def _outline_with_t1(app: AppTest) -> tuple[list[str], list[str], list[str]]:
    """Switch on the first scan's outline, then name the other scan its T1: the T1 choice's
    options, and what the card said the outline measured before and after."""
    switch = next(t for t in app.toggle if t.label == "Outline the tumour")
    switch.set_value(True)
    app.run()
    assert not app.exception
    series = switch.key.removeprefix("outline-")
    [choose_t1] = [s for s in app.selectbox if s.key == f"with-T1-{series}"]
    options = list(choose_t1.options)
    alone = [m.value for m in app.main.markdown if "outlined" in m.value]
    choose_t1.set_value(options[1])
    app.run()
    assert not app.exception
    return options, alone, [m.value for m in app.main.markdown if "outlined" in m.value]
