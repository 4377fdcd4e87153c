"""The Streamlit page (mri_tumor/app.py), driven by Streamlit's AppTest: examples, uploads
(good, corrupt, empty, wrong type, oversized, multi-frame DICOM), the rejection of non-MRI
images, the results table and its CSV download, the heat-map controls and the sidebar."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from tests.conftest import FIXTURE_IMAGES
from tests.dicom_factory import PATIENT, dicom_bytes

from mri_tumor import Predictor
from mri_tumor.app import MAX_UPLOAD_BYTES, NOT_MRI_TEXT, SAMPLES_DIR, analyse_upload
from mri_tumor.card import DISCLAIMER, SHIPPED_MODEL_DIR, ModelCard
from mri_tumor.data.folders import CLASS_NAMES, DISPLAY_NAMES
from mri_tumor.explain import gradcam
from mri_tumor.inference import RESULT_KEYS

APP = Path(__file__).resolve().parents[1] / "src" / "mri_tumor" / "app.py"
TIMEOUT = 120  # seconds per script run; the first one loads the model


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
    assert rows and tuple(rows[0]) == RESULT_KEYS
    return rows


# -- the page before any input ---------------------------------------------------------------
def test_empty_page_shows_model_card_disclaimer_and_examples(app: AppTest) -> None:
    card = ModelCard.load(SHIPPED_MODEL_DIR)
    sidebar = "\n".join(m.value for m in app.sidebar.markdown)
    assert card.architecture in sidebar and card.version in sidebar
    accuracy = card.metrics["validation"]["accuracy"]
    assert f"{accuracy:.1%}" in sidebar and "Macro-F1" in sidebar and "ECE" in sidebar
    assert DISCLAIMER in [w.value for w in app.sidebar.warning]
    assert DISCLAIMER in [w.value for w in app.main.warning]
    assert app.pills[0].options == [DISPLAY_NAMES[name] for name in CLASS_NAMES]
    assert app.file_uploader[0].accept_multiple_files
    assert not app.dataframe and not _predicted_classes(app)


# -- examples ----------------------------------------------------------------------------------
def test_example_result_matches_the_predictor(app: AppTest, predictor: Predictor) -> None:
    app.pills[0].set_value(["meningioma.jpg"]).run()
    assert not app.exception
    expected = predictor.predict([SAMPLES_DIR / "meningioma.jpg"])[0]
    assert _predicted_classes(app) == [expected.display_label]
    assert f"{expected.confidence:.1%}" in [m.value for m in app.main.metric]
    captions = [c.value for c in app.main.caption]
    assert any(DISCLAIMER in c for c in captions)  # under the prediction
    about = [m.value for m in app.main.markdown if m.value.startswith("**About")]
    assert len(about) == 1 and "Sources:" in _sent_text(app)


def test_each_example_gives_its_own_class(app: AppTest) -> None:
    """Needs the trained model: each bundled sample is a clear case of its class."""
    app.pills[0].set_value(["glioma.jpg", "meningioma.jpg", "notumor.jpg", "pituitary.jpg"])
    app.run()
    assert not app.exception
    assert _predicted_classes(app) == [DISPLAY_NAMES[name] for name in CLASS_NAMES]


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
    assert any("DICOM series of 2 slices" in i.value for i in app.main.info)
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
    assert list(at.dataframe[0].value["Result"]) == ["Not a brain MRI"]
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

