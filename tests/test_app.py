"""The Streamlit page (mri_tumor/app/page.py), driven by Streamlit's AppTest: examples, uploads
(good, corrupt, empty, wrong type, oversized, multi-frame DICOM), the rejection of non-MRI
images, the results table and its CSV download, the heat-map controls, the sidebar, and the
model selector (shipped models by name, a --model folder with any classes, a model that
also names the MR sequence)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from tests.conftest import FIXTURE_IMAGES, make_model_folder
from tests.dicom_factory import PATIENT, dicom_bytes

from mri_tumor import Predictor
from mri_tumor.app.cards import probability_chart
from mri_tumor.app.page import (
    MAX_UPLOAD_BYTES,
    NOT_MRI_TEXT,
    SAMPLES_DIR,
    AnalysedImage,
    analyse_upload,
    model_choices,
    model_description,
    note_row_height,
    plural,
    results_rows,
)
from mri_tumor.card import DISCLAIMER, ModelCard, ModelMetrics, ValidationMetrics
from mri_tumor.explain.gradcam import gradcam
from mri_tumor.inference import Prediction
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR, SHIPPED_MODELS
from mri_tumor.presentation import csv_columns, format_probability

APP = Path(__file__).resolve().parents[1] / "src" / "mri_tumor" / "app" / "page.py"
TIMEOUT = 120  # seconds per script run; the first one loads the model
CARD = ModelCard.load(SHIPPED_MODEL_DIR)  # class names, their order and display names
CLASS_NAMES = CARD.class_names
TYPES_CARD = ModelCard.load(SHIPPED_MODELS["types"])  # 15 tumour types + the MR sequence


def _fixture(class_name: str) -> Path:
    return sorted((FIXTURE_IMAGES / class_name).glob("*.jpg"))[0]


def _photo_bytes() -> bytes:
    """A colour photograph (scikit-image's bundled cat picture): not a brain MRI."""
    import skimage

    return (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP)])  # the page reads --model from its argv
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bytes of every CSV file the page offers for download, as the browser gets them."""
    captured: list[bytes] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if mimetype.startswith("text/csv"):
            captured.append(path_or_data.encode() if isinstance(path_or_data, str)
                            else bytes(path_or_data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return captured


def _predicted_classes(at: AppTest) -> list[str]:
    return [m.value for m in at.main.metric if m.label == "Predicted class"]


def _sent_text(at: AppTest) -> str:
    """Everything the page sent to the browser, as text (every element's message)."""
    parts: list[str] = []

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.file_uploader[0].set_value([(name, data, "application/octet-stream")
                                   for name, data in files])
    return at.run()


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    # The columns of `predict --csv`: one p_<class> column per class of the model's card.
    assert rows and list(rows[0]) == csv_columns(CLASS_NAMES)
    return rows


def _probability_columns() -> list[str]:
    return ["Confidence", *map(CARD.display_name, CLASS_NAMES)]


def _card_confidences(at: AppTest) -> list[str]:
    return [m.value for m in at.main.metric if m.label == "Confidence (calibrated)"]


# -- the page before any input ---------------------------------------------------------------
def test_empty_page_shows_model_card_disclaimer_and_examples(app: AppTest) -> None:
    card = ModelCard.load(SHIPPED_MODEL_DIR)
    sidebar = "\n".join(m.value for m in app.sidebar.markdown)
    assert card.architecture in sidebar and card.version in sidebar
    accuracy = card.metrics.validation.accuracy
    assert f"{accuracy:.1%}" in sidebar and "Macro-F1" in sidebar and "ECE" in sidebar
    assert DISCLAIMER in [w.value for w in app.sidebar.warning]
    assert DISCLAIMER in [w.value for w in app.main.warning]
    assert app.pills[0].options == [CARD.display_name(name) for name in CLASS_NAMES]
    assert app.file_uploader[0].accept_multiple_files
    assert not app.dataframe and not _predicted_classes(app)
    assert app.radio(key="model").value == "default"  # no --model: the default model
    intro = app.main.markdown[0].value
    assert all(f"**{CARD.display_name(name)}**" in intro for name in CLASS_NAMES)


# -- examples ----------------------------------------------------------------------------------
def test_example_result_matches_the_predictor(app: AppTest, predictor: Predictor) -> None:
    app.pills[0].set_value(["meningioma.jpg"]).run()
    assert not app.exception
    expected = predictor.predict([SAMPLES_DIR / "meningioma.jpg"])[0]
    assert _predicted_classes(app) == [expected.display_label]
    assert _card_confidences(app) == [format_probability(expected.confidence)]
    table = app.dataframe[0].value
    assert list(table["Confidence"]) == _card_confidences(app)  # the same text in both
    assert "1 image: 1 classified" in [c.value for c in app.main.caption]
    captions = [c.value for c in app.main.caption]
    assert any(DISCLAIMER in c for c in captions)  # under the prediction
    about = [m.value for m in app.main.markdown if m.value.startswith("**About")]
    assert len(about) == 1 and "Sources:" in _sent_text(app)


def test_each_example_gives_its_own_class(app: AppTest) -> None:
    """Needs the trained model: each bundled sample is a clear case of its class."""
    app.pills[0].set_value(["glioma.jpg", "meningioma.jpg", "notumor.jpg", "pituitary.jpg"])
    app.run()
    assert not app.exception
    assert _predicted_classes(app) == [CARD.display_name(name) for name in CLASS_NAMES]


# -- uploads -------------------------------------------------------------------------------
def test_bad_files_get_their_own_errors_and_good_ones_still_give_results(
        app: AppTest) -> None:
    good = _fixture("pituitary").read_bytes()
    _upload(app, [
        ("truncated.jpg", good[: len(good) // 3]),
        ("scan.jpg", good),
        ("empty.png", b""),
        ("report.pdf", b"%PDF-1.4\n" + b"x" * 400),
    ])
    assert not app.exception
    errors = [e.value.lower() for e in app.main.error]
    assert len(errors) == 3
    assert any("damaged or truncated" in e for e in errors)
    assert any("empty" in e for e in errors)
    assert any("not a supported image" in e for e in errors)
    assert len(_predicted_classes(app)) == 1
    table = app.dataframe[0].value
    assert list(table["File"]) == ["truncated.jpg", "scan.jpg", "empty.png", "report.pdf"]
    assert list(table["Result"]).count("Unreadable") == 3
    unreadable = table[table["Result"] == "Unreadable"]
    for column in _probability_columns():  # empty cells, not "None"
        assert list(unreadable[column]) == ["", "", ""]
    assert all(note and "None" not in note for note in unreadable["Note"])
    assert "4 images: 1 classified, 3 unreadable" in [c.value for c in app.main.caption]
    assert "(s)" not in _sent_text(app)


def test_oversized_upload_is_refused_with_the_limit(predictor: Predictor) -> None:
    items = analyse_upload(predictor, "huge.dcm", bytes(MAX_UPLOAD_BYTES + 1))
    assert len(items) == 1
    assert items[0].prediction.status == "error"
    assert "larger than the 50 MB limit" in items[0].prediction.message
    assert items[0].image is None


def test_analysis_heatmap_is_the_gradcam_of_the_predicted_class(predictor: Predictor) -> None:
    data = _fixture("glioma").read_bytes()
    [item] = analyse_upload(predictor, "slice.jpg", data)
    assert item.prediction.status == "ok" and item.image is not None
    index = predictor.class_names.index(item.prediction.label)
    expected = gradcam(predictor, Image.open(io.BytesIO(data)).convert("L"), index,
                       size=item.image.size)
    np.testing.assert_allclose(item.heatmap, expected, atol=1e-5)


def _multiframe_dicom(frames: list[Image.Image]) -> bytes:
    """One multi-frame MR DICOM file (patient fields set, see ``PATIENT``) from slices."""
    pixels = np.stack([np.asarray(f.resize((256, 256)), dtype=np.uint16) * 16 for f in frames])
    return dicom_bytes(pixels)


def test_multiframe_dicom_gives_a_row_per_frame_and_no_patient_identifiers(
        app: AppTest, downloads: list[bytes]) -> None:
    frames = [Image.open(_fixture(name)).convert("L") for name in ("glioma", "notumor")]
    _upload(app, [("series.dcm", _multiframe_dicom(frames))])
    assert not app.exception
    assert len(_predicted_classes(app)) == 2
    assert list(app.dataframe[0].value["File"]) == ["series.dcm#0", "series.dcm#1"]
    assert any("2 slices read" in i.value and "too few readable" in i.value
               for i in app.main.info)
    shown = _sent_text(app) + downloads[-1].decode()
    for identifier in ("Doe", "Sensitive", *PATIENT.values()):
        assert identifier not in shown


def test_ct_dicom_is_refused_by_its_header_on_the_page(app: AppTest,
                                                      predictor: Predictor) -> None:
    pixels = np.asarray(Image.open(_fixture("glioma")).convert("L"), dtype=np.uint16) * 16
    ct = dicom_bytes(pixels, modality="CT")
    [item] = analyse_upload(predictor, "head.dcm", ct)
    assert item.prediction.status == "rejected" and item.image is None
    assert "DICOM Modality is CT (computed tomography)" in item.prediction.message
    _upload(app, [("head.dcm", ct), ("scan.dcm", dicom_bytes(pixels))])
    assert not app.exception
    warnings = [w.value for w in app.main.warning if NOT_MRI_TEXT in w.value]
    assert len(warnings) == 1 and "Modality is CT" in warnings[0]
    assert not app.main.error
    assert list(app.dataframe[0].value["Result"]) == ["Not a brain MRI", "Glioma"]
    shown = _sent_text(app)
    for identifier in ("Doe", "Sensitive", *PATIENT.values()):
        assert identifier not in shown


def test_csv_download_holds_one_row_per_upload(app: AppTest, downloads: list[bytes]) -> None:
    good = _fixture("meningioma").read_bytes()
    app.pills[0].set_value(["glioma.jpg"])
    _upload(app, [("a.jpg", good), ("broken.png", b"\x89PNG\r\n\x1a\nbroken"),
                  ("b.jpg", _fixture("notumor").read_bytes())])
    assert not app.exception
    assert [b.label for b in app.download_button] == ["Download results (CSV)"]
    rows = _csv_rows(downloads[-1])
    assert [r["path"] for r in rows] == ["example-glioma.jpg", "a.jpg", "broken.png", "b.jpg"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok"]
    assert all(r["label"] in CLASS_NAMES for r in rows if r["status"] == "ok")
    assert len(app.dataframe[0].value) == len(rows)
    names = CLASS_NAMES
    for row in rows:  # one p_<class> column per class, empty for an unreadable file
        probabilities = [row[f"p_{name}"] for name in names]
        if row["status"] == "ok":
            assert row[f"p_{row['label']}"] == row["confidence"]
            assert sum(map(float, probabilities)) == pytest.approx(1.0, abs=1e-3)
        else:
            assert probabilities == [""] * len(names) and row["confidence"] == ""


def test_photo_is_rejected_as_not_a_brain_mri(app: AppTest) -> None:
    """Needs the trained model: only it carries the out-of-distribution guard."""
    _upload(app, [("cat.png", _photo_bytes()), ("scan.jpg", _fixture("glioma").read_bytes())])
    assert not app.exception
    assert any(NOT_MRI_TEXT in w.value for w in app.main.warning)
    assert len(_predicted_classes(app)) == 1  # only the MRI slice gets a class
    assert list(app.dataframe[0].value["Result"]) == ["Not a brain MRI", "Glioma"]


# -- rejection, shown with a model whose guard rejects everything --------------------------
@pytest.fixture(scope="module")
def rejecting_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with an out-of-distribution guard that rejects every input."""
    from mri_tumor.models import load_model, save_weights

    model, card, _ = load_model(SHIPPED_MODEL_DIR)
    directory = tmp_path_factory.mktemp("rejecting-model")
    dim = model.feature_dim
    save_weights(model, directory, extra={
        "extra.ood_class_means": torch.zeros(len(card.class_names), dim),
        "extra.ood_whitening": torch.eye(dim)})
    card.ood_threshold = -1.0  # every distance is >= 0, so every input is rejected
    card.save(directory)
    return directory


def test_rejected_image_shows_no_class_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                    rejecting_model: Path) -> None:
    monkeypatch.setattr(sys, "argv", [str(APP), "--model", str(rejecting_model)])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    _upload(at, [("cat.png", _photo_bytes())])
    assert not at.exception
    assert any(NOT_MRI_TEXT in w.value for w in at.main.warning)
    assert not _predicted_classes(at)
    assert not any("About" in m.value for m in at.main.markdown)  # no class explanation
    table = at.dataframe[0].value
    assert list(table["Result"]) == ["Not a brain MRI"]
    assert all(table[column][0] == "" for column in _probability_columns())
    assert any(DISCLAIMER in c.value for c in at.main.caption)


def test_missing_model_folder_is_reported_on_the_page(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", [str(APP), "--model", str(tmp_path / "nowhere")])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("could not be loaded" in e.value and "nowhere" in e.value for e in at.error)


def test_app_command_refuses_a_bad_port_or_model_folder_before_starting(tmp_path: Path,
                                                                        capsys) -> None:
    from mri_tumor.cli import main

    assert main(["app", "--port", "99999"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert main(["app", "--model", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "nowhere" in error and "not a shipped model (default, types)" in error
    assert main(["app", "--model", str(tmp_path)]) == 2  # a folder, but no model in it
    assert "no model card at" in capsys.readouterr().err
    (tmp_path / "card.json").write_text("{")
    assert main(["app", "--model", str(tmp_path)]) == 2
    assert "not a valid model card" in capsys.readouterr().err


# -- heat-map controls -------------------------------------------------------------------------
def test_heatmap_toggle_and_opacity(app: AppTest) -> None:
    app.pills[0].set_value(["pituitary.jpg"]).run()
    assert app.toggle[0].value is True  # on by default
    assert any("Grad-CAM" in c for image in app.main.image for c in image.captions)
    app.slider[0].set_value(0.8).run()
    assert not app.exception and app.slider[0].value == 0.8
    app.toggle[0].set_value(False).run()
    assert not app.exception
    assert not any("Grad-CAM" in c for image in app.main.image for c in image.captions)
    assert app.slider[0].disabled



# -- the results table and how probabilities are written ---------------------------------------
def _near_certain(path: str) -> Prediction:
    """A result whose confidence, 0.9997, would print as "100.0%"."""
    top = CLASS_NAMES[0]
    return Prediction(path, "ok", label=top, display_label=CARD.display_name(top),
                      confidence=0.9997, probabilities={
                          n: 0.9997 if n == top else 0.0001 for n in CLASS_NAMES})


def test_table_rows_leave_missing_probabilities_empty_and_notes_without_the_file_name() -> None:
    rejected = Prediction("cat.png", "rejected", ood_score=9.5, message="Not a brain MRI slice")
    broken = Prediction("b.png", "error", message="b.png: damaged or truncated")
    rows = results_rows([AnalysedImage(p) for p in (_near_certain("a.jpg"), rejected, broken)],
                        CARD)
    columns = _probability_columns()
    others = len(CLASS_NAMES) - 1
    assert [rows[0][c] for c in columns] == ["> 99.9%", "> 99.9%", *["< 0.1%"] * others]
    for row in rows[1:]:
        assert [row[c] for c in columns] == [""] * len(columns)
    assert [row["Result"] for row in rows] == [CARD.display_name(CLASS_NAMES[0]),
                                              "Not a brain MRI", "Unreadable"]
    assert rows[2]["Note"] == "damaged or truncated"  # the File column names the file


def test_plural() -> None:
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "series", "series") == "1 series"


def test_near_certain_result_shows_the_same_text_on_its_card_and_in_the_table(
        app: AppTest, monkeypatch: pytest.MonkeyPatch, downloads: list[bytes]) -> None:
    """A confidence of 0.9997 is "> 99.9%" everywhere on the page (not "100.0%" on the card
    and "99.97%" in the table); the CSV keeps the number."""
    original = Predictor.predict_frames

    def near_certain(self: Predictor, frames: list) -> list[Prediction]:
        return [dataclasses.replace(_near_certain(p.path), series=p.series,
                                    instance=p.instance) for p in original(self, frames)]

    monkeypatch.setattr(Predictor, "predict_frames", near_certain)
    # A name and bytes of its own: results are cached per upload.
    data = _fixture("notumor").read_bytes() + b"near-certain"
    _upload(app, [("near-certain.jpg", data)])
    assert not app.exception
    assert _card_confidences(app) == ["> 99.9%"]
    row = app.dataframe[0].value.iloc[0]
    assert [row[c] for c in _probability_columns()] == [
        "> 99.9%", "> 99.9%", *["< 0.1%"] * (len(CLASS_NAMES) - 1)]
    assert "100.0%" not in _sent_text(app) and "99.97%" not in _sent_text(app)
    [csv_row] = _csv_rows(downloads[-1])
    assert float(csv_row["confidence"]) == 0.9997 == float(csv_row[f"p_{CLASS_NAMES[0]}"])
    assert any(DISCLAIMER in c.value for c in app.main.caption)


def test_probability_chart_labels_its_bars_with_the_same_text() -> None:
    chart = probability_chart(_near_certain("a.jpg"), CARD)
    assert [v["text"] for v in chart["data"]["values"]] == [
        "> 99.9%", *["< 0.1%"] * (len(CLASS_NAMES) - 1)]
    assert chart["layer"][1]["encoding"]["text"]["field"] == "text"


def test_notes_are_shown_whole_next_to_the_result(app: AppTest, predictor: Predictor) -> None:
    """The Note column comes right after the confidence, is wide when there is a note, and
    rows grow so that a long note wraps onto more lines instead of being cut off."""
    app.pills[0].set_value(["glioma.jpg"]).run()
    frame = app.dataframe[0]
    assert not frame.proto.HasField("row_height")  # no note: rows of the default height
    assert list(frame.value.columns[:4]) == ["File", "Result", "Confidence", "Note"]
    assert "width" not in json.loads(frame.proto.columns)["Note"]  # narrow while empty
    good = _fixture("glioma").read_bytes()
    truncated = good[: len(good) // 3]
    _upload(app, [("truncated.jpg", truncated)])
    frame = app.dataframe[0]
    [item] = analyse_upload(predictor, "truncated.jpg", truncated)
    note = item.prediction.message.removeprefix("truncated.jpg: ")
    assert len(note) > 60 and [n for n in frame.value["Note"] if n] == [note]  # whole
    assert json.loads(frame.proto.columns)["Note"]["width"] == "large"
    assert note_row_height([note]) == frame.proto.row_height > 64  # Streamlit wraps > 64 px
    assert note_row_height(["short"]) is None
    assert note_row_height(["x" * 2000]) == note_row_height(["x" * 200])  # at most 4 lines


# -- the model selector and models with other classes ------------------------------------------
def _page_for(monkeypatch: pytest.MonkeyPatch, model: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(APP), "--model", model])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    return at


def _sidebar_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


def _sequence_metrics(at: AppTest) -> list[str]:
    return [m.value for m in at.main.metric if m.label == "MR sequence"]


def test_model_description_comes_from_the_card() -> None:
    assert model_description(CARD) == f"{len(CLASS_NAMES)} classes"
    assert model_description(TYPES_CARD) == (f"{len(TYPES_CARD.class_names)} tumour types "
                                             "+ MR sequence")
    choices = model_choices(None)
    assert list(choices) == list(SHIPPED_MODELS)
    assert [c.label for c in choices.values()] == [
        f"default: {len(CLASS_NAMES)} classes",
        f"types: {len(TYPES_CARD.class_names)} tumour types + MR sequence"]


def test_a_model_folder_with_any_classes_works_on_the_page(
        monkeypatch: pytest.MonkeyPatch, other_model: Path, downloads: list[bytes]) -> None:
    """A --model folder whose card names 2, 5 or 15 made-up classes (the 15 with a sequence
    head): listed and preselected in the selector, its classes everywhere on the page."""
    card = ModelCard.load(other_model)
    shown = [card.display_name(name) for name in card.class_names]
    at = _page_for(monkeypatch, str(other_model))
    selector = at.radio(key="model")
    assert selector.value == str(other_model)
    assert selector.options[-1] == f"{other_model.name}: {model_description(card)}"
    assert f"**Classes:** {', '.join(shown)}" in _sidebar_text(at)
    _upload(at, [("scan.jpg", _fixture("glioma").read_bytes())])
    assert not at.exception
    [predicted] = _predicted_classes(at)
    assert predicted in shown
    table = at.dataframe[0].value
    assert list(table["Result"]) == [predicted]
    assert [c for c in table.columns if c in shown] == shown  # a column per class, in order
    assert any(DISCLAIMER in c.value for c in at.main.caption)
    # Made-up classes have no explanation text: a note says so instead of an error.
    assert any(f"No description of {predicted}" in c.value.replace("\\", "")
               for c in at.main.caption)
    [row] = list(csv.DictReader(io.StringIO(downloads[-1].decode())))
    assert list(row) == csv_columns(card.class_names, card.sequence_names)
    assert row["label"] in card.class_names
    if card.sequence_names:
        [sequence] = _sequence_metrics(at)
        assert sequence.split(" (")[0] in card.sequence_names
        assert list(table["Sequence"]) == [sequence]
        assert row["sequence"] in card.sequence_names and sequence.startswith(row["sequence"])
    else:
        assert not _sequence_metrics(at) and "Sequence" not in table.columns


def test_selecting_the_types_model_switches_the_sidebar_and_the_results(app: AppTest) -> None:
    selector = app.radio(key="model")
    assert selector.options == [
        f"default: {len(CLASS_NAMES)} classes",
        f"types: {len(TYPES_CARD.class_names)} tumour types + MR sequence"]
    default_sidebar = _sidebar_text(app)
    _upload(app, [("scan.jpg", _fixture("glioma").read_bytes())])
    assert _predicted_classes(app)[0] in map(CARD.display_name, CLASS_NAMES)
    assert not _sequence_metrics(app)

    selector.set_value("types").run()
    assert not app.exception
    types_shown = [TYPES_CARD.display_name(name) for name in TYPES_CARD.class_names]
    sidebar = _sidebar_text(app)
    assert sidebar != default_sidebar
    assert f"**Classes:** {', '.join(types_shown)}" in sidebar
    assert f"**MR sequences:** {', '.join(TYPES_CARD.sequence_names)}" in sidebar
    # The same upload, analysed again by the types model (results are cached per model).
    [predicted] = _predicted_classes(app)
    assert predicted in types_shown
    [sequence] = _sequence_metrics(app)
    assert sequence.split(" (")[0] in TYPES_CARD.sequence_names and sequence.endswith("%)")
    assert list(app.dataframe[0].value["Sequence"]) == [sequence]
    assert any(DISCLAIMER in c.value for c in app.main.caption)
    about = [m.value for m in app.main.markdown if m.value.startswith("**About")]
    assert len(about) == 1 and "Sources:" in _sent_text(app)  # the type's explanation

    app.radio(key="model").set_value("default").run()
    assert not app.exception
    assert _sidebar_text(app) == default_sidebar
    assert _predicted_classes(app)[0] in map(CARD.display_name, CLASS_NAMES)
    assert not _sequence_metrics(app) and "Sequence" not in app.dataframe[0].value.columns


def test_a_shipped_model_given_by_name_is_preselected(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page_for(monkeypatch, "types")
    assert at.radio(key="model").value == "types"
    assert len(at.radio(key="model").options) == len(SHIPPED_MODELS)  # no extra entry
    assert "**MR sequences:**" in _sidebar_text(at)


def test_sidebar_shows_the_sequence_accuracy_when_the_card_has_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "model", [f"class-{c}" for c in "abc"],
                               ["T1", "T2"])
    card = ModelCard.load(folder)
    card.metrics = ModelMetrics(validation=ValidationMetrics(
        n=40, accuracy=0.8, macro_f1=0.75, ece=0.05, sequence_accuracy=0.925))
    card.save(folder)
    sidebar = _sidebar_text(_page_for(monkeypatch, str(folder)))
    assert "Sequence accuracy" in sidebar and "92.5%" in sidebar and "80.0%" in sidebar


def test_table_rows_of_a_sequence_model_have_a_sequence_column() -> None:
    card = dataclasses.replace(TYPES_CARD)
    top = card.class_names[0]
    typed = Prediction("a.jpg", "ok", label=top, display_label=card.display_name(top),
                       confidence=0.9, probabilities={n: 0.9 if n == top else 0.1 / 14
                                                      for n in card.class_names},
                       sequence=card.sequence_names[1], sequence_probabilities={
                           n: 0.87 if n == card.sequence_names[1] else 0.065
                           for n in card.sequence_names})
    rejected = Prediction("cat.png", "rejected", message="Not a brain MRI slice")
    rows = results_rows([AnalysedImage(typed), AnalysedImage(rejected)], card)
    assert list(rows[0])[:5] == ["File", "Result", "Confidence", "Sequence", "Note"]
    assert rows[0]["Sequence"] == f"{card.sequence_names[1]} (87.0%)"
    assert rows[1]["Sequence"] == ""
    assert "Sequence" not in results_rows([AnalysedImage(rejected)], CARD)[0]
