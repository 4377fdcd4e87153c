"""Collecting confirmed cases (site data, ``MRI_TUMOR_SITE_DATA``): the storing module, the
app's "Add to site data" control and ``POST /v1/feedback``."""

from __future__ import annotations

import io
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from streamlit.testing.v1 import AppTest
from tests.conftest import FIXTURE_IMAGES
from tests.dicom_factory import PATIENT, dicom_bytes

from mri_tumor import Predictor
from mri_tumor.api import Settings, create_app
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import ImageReadError, read_image
from mri_tumor.data.site import (
    SITE_DATA_ENV,
    StoredCase,
    pixel_digest,
    site_data_dir,
    store_confirmed_case,
)
from mri_tumor.inference.model_folder import SHIPPED_MODELS

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
APP = Path(__file__).resolve().parents[1] / "src" / "mri_tumor" / "app" / "page.py"
TIMEOUT = 120  # seconds per script run; the first one loads the model
ADD = "Add to site data"
CONFIRMED = "Confirmed class"
IDENTIFIERS = ("Doe", "Sensitive", *PATIENT.values())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- helpers ----------------------------------------------------------------------------------
def _fixture(class_name: str, index: int = 0) -> Path:
    return sorted((FIXTURE_IMAGES / class_name).glob("*.jpg"))[index]


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pattern(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]),
                                                  dtype=np.uint8)
    return Image.fromarray(pixels)


def _stored(site: Path) -> list[Path]:
    """Every file under the site-data folder (hidden temporary files included)."""
    return sorted(path for path in site.rglob("*") if path.is_file()) if site.exists() else []


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == PNG_SIGNATURE
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kinds.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return kinds


def _assert_plain_grey_png(path: Path) -> bytes:
    """A bare 8-bit grey PNG: IHDR, IDAT and IEND chunks only (no text, EXIF, ICC...)."""
    data = path.read_bytes()
    assert set(_png_chunks(data)) == {b"IHDR", b"IDAT", b"IEND"}
    bit_depth, colour_type = data[24], data[25]  # IHDR: after width and height
    assert (bit_depth, colour_type) == (8, 0)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L" and not image.info
    for identifier in IDENTIFIERS:
        assert identifier.encode() not in data
    return data


def _dicom_of(source: Path, frames: int = 1) -> bytes:
    """A 16-bit MR DICOM file from a fixture image, with the patient fields of ``PATIENT``."""
    pixels = np.asarray(Image.open(source).convert("L").resize((128, 128)),
                        dtype=np.uint16) * 16
    if frames > 1:
        pixels = np.stack([np.roll(pixels, 9 * k, axis=1) for k in range(frames)])
    return dicom_bytes(pixels)


# -- the module ---------------------------------------------------------------------------------
def test_site_data_dir_is_none_unless_the_variable_names_a_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert SITE_DATA_ENV == "MRI_TUMOR_SITE_DATA"
    monkeypatch.delenv(SITE_DATA_ENV, raising=False)
    assert site_data_dir() is None
    for empty in ("", "  "):
        monkeypatch.setenv(SITE_DATA_ENV, empty)
        assert site_data_dir() is None
    monkeypatch.setenv(SITE_DATA_ENV, str(tmp_path))
    assert site_data_dir() == tmp_path
    assert site_data_dir({SITE_DATA_ENV: " /data/site "}) == Path("/data/site")
    assert site_data_dir({}) is None


def test_the_same_image_twice_is_stored_once_whatever_its_format(tmp_path: Path) -> None:
    image = _pattern(1)
    first = store_confirmed_case(_encode(image, "PNG"), "glioma", tmp_path, CLASSES)
    assert isinstance(first, StoredCase) and first.new
    assert first.path == tmp_path / "glioma" / f"{pixel_digest(image)}.png"
    assert first.relative == f"glioma/{pixel_digest(image)}.png"
    before = first.path.read_bytes()
    for again in (_encode(image, "BMP"), _encode(image, "TIFF"), image, np.asarray(image)):
        repeat = store_confirmed_case(again, "glioma", tmp_path, CLASSES)
        assert not repeat.new and repeat.path == first.path
    assert _stored(tmp_path) == [first.path]
    assert first.path.read_bytes() == before
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(image))


def test_two_different_images_are_two_files(tmp_path: Path) -> None:
    one = store_confirmed_case(_encode(_pattern(1), "PNG"), "glioma", tmp_path, CLASSES)
    two = store_confirmed_case(_encode(_pattern(2), "PNG"), "glioma", tmp_path, CLASSES)
    # The same pixels in another size are another image.
    three = store_confirmed_case(_pattern(1).resize((40, 48)), "glioma", tmp_path, CLASSES)
    assert one.new and two.new and three.new
    assert len({one.path, two.path, three.path}) == 3
    assert _stored(tmp_path) == sorted([one.path, two.path, three.path])


def test_a_corrected_label_is_stored_under_its_class_and_the_other_one_is_named(
        tmp_path: Path) -> None:
    data = _encode(_pattern(3), "PNG")
    first = store_confirmed_case(data, "glioma", tmp_path, CLASSES)
    other = store_confirmed_case(data, "meningioma", tmp_path, CLASSES)
    assert other.new and other.path.parent == tmp_path / "meningioma"
    assert other.also_labelled == ("glioma",) and first.also_labelled == ()


def test_a_dicom_file_is_stored_without_any_header_field(tmp_path: Path) -> None:
    dicom = _dicom_of(_fixture("glioma"))
    assert b"Doe^Jane^Sensitive" in dicom  # what must not get through
    case = store_confirmed_case(dicom, "glioma", tmp_path, CLASSES, name="scan.dcm")
    data = _assert_plain_grey_png(case.path)
    assert b"scan" not in data
    assert np.array_equal(np.asarray(Image.open(case.path)), np.asarray(read_image(dicom)))


def test_text_and_exif_of_an_input_image_are_not_carried(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Doe^Jane^Sensitive")
    image = _pattern(4)
    exif = Image.Exif()
    exif[0x010E] = "PID-7731-SECRET"  # ImageDescription
    for data in (_encode(image, "PNG", pnginfo=info), _encode(image, "JPEG", exif=exif)):
        case = store_confirmed_case(data, "notumor", tmp_path, CLASSES)
        _assert_plain_grey_png(case.path)


def test_a_frame_of_a_multi_frame_dicom_file(tmp_path: Path) -> None:
    from mri_tumor.data.reading import read_frames

    dicom = _dicom_of(_fixture("notumor"), frames=3)
    frames = read_frames(dicom)
    first = store_confirmed_case(dicom, "notumor", tmp_path, CLASSES)
    third = store_confirmed_case(dicom, "notumor", tmp_path, CLASSES, frame=2)
    assert first.path != third.path
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(frames[0].image))
    assert np.array_equal(np.asarray(Image.open(third.path)), np.asarray(frames[2].image))
    with pytest.raises(ImageReadError, match="no frame 3"):
        store_confirmed_case(dicom, "notumor", tmp_path, CLASSES, frame=3)


def test_an_unknown_label_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for label in ("astrocytoma", "Glioma", "", "../glioma"):
        with pytest.raises(ValueError) as error:
            store_confirmed_case(_encode(_pattern(5), "PNG"), label, site, CLASSES)
        message = str(error.value)
        assert "\n" not in message and all(name in message for name in CLASSES)
    assert not site.exists()


def test_a_label_that_is_no_plain_folder_name_is_refused(tmp_path: Path) -> None:
    for label in ("../escape", "a/b", ".."):
        with pytest.raises(ValueError, match="folder name"):
            store_confirmed_case(_encode(_pattern(5), "PNG"), label, tmp_path / "site",
                                 [*CLASSES, label])
    assert not (tmp_path / "site").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("data", [b"", b"%PDF-1.4 not an image", PNG_SIGNATURE + b"\0" * 40],
                         ids=["empty", "pdf", "truncated"])
def test_an_unreadable_input_is_refused_with_its_reason(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ImageReadError) as error:
        store_confirmed_case(data, "glioma", tmp_path, CLASSES, name="bad.png")
    assert str(error.value).startswith("bad.png: ") and "\n" not in str(error.value)
    assert _stored(tmp_path) == []


def test_a_different_file_under_the_name_is_never_overwritten(tmp_path: Path) -> None:
    image = _pattern(6)
    target = tmp_path / "glioma" / f"{pixel_digest(image)}.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        store_confirmed_case(image, "glioma", tmp_path, CLASSES)
    assert target.read_bytes() == b"someone else's file"
    assert _stored(tmp_path) == [target]  # no temporary file left behind


# -- the app ------------------------------------------------------------------------------------
@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The page with the default model (no --model); the caller sets the variable first."""
    monkeypatch.setattr(sys, "argv", [str(APP)])
    yield AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.run()
    at.file_uploader[0].set_value([(name, data, "application/octet-stream")
                                   for name, data in files])
    at.run()
    assert not at.exception
    return at


def _controls(at: AppTest) -> tuple[list, list]:
    return ([s for s in at.selectbox if s.label == CONFIRMED],
            [b for b in at.button if b.label == ADD])


def test_the_app_shows_no_control_and_writes_nothing_when_unset(
        page: AppTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SITE_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # anything written to a relative folder would land here
    at = _upload(page, [("scan.jpg", _fixture("glioma").read_bytes())])
    assert [m.label for m in at.main.metric if m.label == "Predicted class"]
    assert _controls(at) == ([], [])
    assert not any("Site data" in m.value for m in at.main.markdown)
    assert not any("Stores this image" in c.value for c in at.main.caption)
    assert _stored(tmp_path) == []


def test_the_app_stores_a_confirmed_image_once(page: AppTest, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    site = tmp_path / "site"
    monkeypatch.setenv(SITE_DATA_ENV, str(site))
    glioma = _fixture("glioma").read_bytes()
    at = _upload(page, [("a.jpg", glioma), ("b.jpg", glioma),
                        ("c.jpg", _fixture("meningioma").read_bytes())])
    selectors, buttons = _controls(at)
    assert len(selectors) == len(buttons) == 3
    predicted = [m.value for m in at.main.metric if m.label == "Predicted class"]
    card = ModelCard.load(SHIPPED_MODELS["default"])
    # Preselected to the predicted class; the options are the model's classes.
    assert [card.display_name(s.value) for s in selectors] == predicted
    assert selectors[0].options == [card.display_name(name) for name in card.class_names]
    assert any(DISCLAIMER in c.value for c in at.main.caption)  # next to the predictions
    assert _stored(site) == []  # nothing before a click

    buttons[0].click()
    at.run()
    assert not at.exception
    [first] = _stored(site)
    assert first.parent.name == selectors[0].value
    assert any("Added to site data" in s.value for s in at.main.success)
    _assert_plain_grey_png(first)

    _controls(at)[1][1].click()  # the same image, uploaded again under another name
    at.run()
    assert _stored(site) == [first]
    assert any("Already stored" in i.value for i in at.main.info)

    _controls(at)[0][2].set_value("notumor")  # a correction
    at.run()
    _controls(at)[1][2].click()
    at.run()
    assert not at.exception
    files = _stored(site)
    assert len(files) == 2 and (site / "notumor") in {path.parent for path in files}


def test_the_app_stores_a_rejected_image_with_the_class_the_user_chose(
        page: AppTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Needs the trained model (its guard rejects a photo); and a frame of a multi-frame
    DICOM file is stored as that frame, without the header."""
    import skimage

    site = tmp_path / "site"
    monkeypatch.setenv(SITE_DATA_ENV, str(site))
    photo = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    dicom = _dicom_of(_fixture("pituitary"), frames=2)
    at = _upload(page, [("cat.png", photo), ("series.dcm", dicom)])
    selectors, buttons = _controls(at)
    assert len(buttons) == 3  # the rejected photo and both frames
    assert selectors[0].value is None and buttons[0].disabled  # no class to preselect
    selectors[0].set_value("notumor")
    at.run()
    _controls(at)[1][0].click()
    at.run()
    assert not at.exception
    [photo_case] = _stored(site)
    assert photo_case.parent.name == "notumor"

    _controls(at)[1][2].click()  # the second frame
    at.run()
    from mri_tumor.data.reading import read_frames

    frame = read_frames(dicom)[1].image
    [stored] = [p for p in _stored(site) if p != photo_case]
    assert stored.name == f"{pixel_digest(frame)}.png"
    _assert_plain_grey_png(stored)
    assert all(identifier not in str(at._tree) for identifier in IDENTIFIERS)


# -- the API ------------------------------------------------------------------------------------
@contextmanager
def _client(predictor: Predictor, **settings: object) -> Iterator[TestClient]:
    """A client of an app with these settings, its lifespan running and the model loaded."""
    with _ready(create_app(Settings(**settings), predictor=predictor)) as client:
        yield client


@contextmanager
def _ready(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.02)
        yield client


def _post(client: TestClient, data: bytes, label: str, name: str = "scan.jpg",
          media: str = "image/jpeg", **options: object):
    return client.post("/v1/feedback", files={"file": (name, data, media)},
                       data={"label": label}, **options)


def test_feedback_stores_the_same_image_once_and_another_one_apart(
        predictor: Predictor, tmp_path: Path) -> None:
    with _client(predictor, site_data=tmp_path) as client:
        glioma = _fixture("glioma").read_bytes()
        first = _post(client, glioma, "glioma")
        assert first.status_code == 201, first.text
        stored = first.json()["stored"]
        assert first.json() == {"stored": stored, "new": True}
        assert stored.startswith("glioma/") and stored.endswith(".png")
        again = _post(client, glioma, "glioma", name="other-name.jpg")
        assert again.status_code == 201 and again.json() == {"stored": stored, "new": False}
        assert _stored(tmp_path) == [tmp_path / stored]
        other = _post(client, _fixture("glioma", 1).read_bytes(), "glioma")
        assert other.status_code == 201 and other.json()["new"] is True
        assert len(_stored(tmp_path)) == 2


def test_feedback_is_404_and_writes_nothing_when_unset(
        predictor: Predictor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SITE_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with _client(predictor) as client:
        answer = _post(client, _fixture("glioma").read_bytes(), "glioma")
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert SITE_DATA_ENV in detail and "\n" not in detail
    assert _stored(tmp_path) == []


def test_feedback_reads_the_folder_from_the_environment(
        predictor: Predictor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SITE_DATA_ENV, str(tmp_path))
    assert Settings.from_env().site_data == tmp_path
    assert Settings.from_env({SITE_DATA_ENV: ""}).site_data is None
    with _ready(create_app(predictor=predictor)) as client:
        answer = _post(client, _fixture("notumor").read_bytes(), "notumor")
    assert answer.status_code == 201 and (tmp_path / answer.json()["stored"]).is_file()


def test_feedback_stores_a_dicom_file_without_its_header(predictor: Predictor,
                                                         tmp_path: Path) -> None:
    dicom = _dicom_of(_fixture("meningioma"))
    with _client(predictor, site_data=tmp_path) as client:
        answer = _post(client, dicom, "meningioma", name="Doe-Jane.dcm",
                       media="application/dicom")
    assert answer.status_code == 201, answer.text
    assert all(identifier not in answer.text for identifier in IDENTIFIERS)
    [stored] = _stored(tmp_path)
    assert stored == tmp_path / answer.json()["stored"]
    data = _assert_plain_grey_png(stored)
    assert b"Doe-Jane" not in data
    assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(read_image(dicom)))


def test_feedback_refuses_an_unknown_label_or_an_unreadable_file(predictor: Predictor,
                                                               tmp_path: Path) -> None:
    with _client(predictor, site_data=tmp_path) as client:
        good = _fixture("glioma").read_bytes()
        unknown = _post(client, good, "astrocytoma")  # a class of the types model only
        assert unknown.status_code == 422
        assert all(name in unknown.json()["detail"] for name in CLASSES)
        corrupt = _post(client, good[:200], "glioma", name="cut.jpg")
        assert corrupt.status_code == 422 and "cut.jpg" in corrupt.json()["detail"]
        empty = _post(client, b"", "glioma")
        assert empty.status_code == 422
        no_label = client.post("/v1/feedback", files={"file": ("a.jpg", good, "image/jpeg")})
        assert no_label.status_code == 422 and "'label'" in no_label.json()["detail"]
        no_file = client.post("/v1/feedback", files={"label": (None, "glioma")})
        assert no_file.status_code == 422 and "'file'" in no_file.json()["detail"]
        twice = client.post("/v1/feedback", files=[("file", ("a.jpg", good, "image/jpeg")),
                                                   ("file", ("b.jpg", good, "image/jpeg")),
                                                   ("label", (None, "glioma"))])
        assert twice.status_code == 422
        raw = client.post("/v1/feedback", content=good, headers={"Content-Type": "image/jpeg"})
        assert raw.status_code == 415
        wrong_type = _post(client, good, "glioma", media="text/plain")
        assert wrong_type.status_code == 415
    assert _stored(tmp_path) == []


def test_feedback_takes_the_classes_of_the_model_named(predictor: Predictor,
                                                       tmp_path: Path) -> None:
    types = ModelCard.load(SHIPPED_MODELS["types"])
    label = types.class_names[0]
    with _client(predictor, site_data=tmp_path) as client:
        answer = _post(client, _fixture("glioma").read_bytes(), label,
                       params={"model": "types"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["stored"].startswith(f"{label}/")
        assert _post(client, _fixture("glioma").read_bytes(), "glioma",
                     params={"model": "types"}).status_code == 422
        assert _post(client, _fixture("glioma").read_bytes(), "glioma",
                     params={"model": "nope"}).status_code == 404
    assert len(_stored(tmp_path)) == 1


def test_feedback_has_the_upload_limit_and_the_api_key_of_predict(predictor: Predictor,
                                                                  tmp_path: Path) -> None:
    big = _encode(_pattern(7, size=(1200, 1200)), "PNG")
    assert len(big) > 1024 * 1024
    with _client(predictor, site_data=tmp_path, max_upload_mb=1, api_key="k") as client:
        assert _post(client, big, "glioma").status_code == 401
        headers = {"X-API-Key": "k"}
        too_big = _post(client, big, "glioma", media="image/png", headers=headers)
        assert too_big.status_code == 413 and "1 MB" in too_big.json()["detail"]
        small = _post(client, _fixture("glioma").read_bytes(), "glioma", headers=headers)
        assert small.status_code == 201
    assert len(_stored(tmp_path)) == 1


def test_feedback_is_in_the_openapi_schema(predictor: Predictor) -> None:
    with _client(predictor) as client:
        schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/feedback"]["post"]
    assert {"201", "401", "404", "413", "415", "422"} <= set(operation["responses"])
    assert "200" not in operation["responses"]
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"].endswith("/FeedbackOut")
    assert set(schema["components"]["schemas"]["FeedbackOut"]["required"]) == {"stored", "new"}
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["required"]) == {"file", "label"}
    assert SITE_DATA_ENV in operation["description"]
    assert operation["security"]  # the API key, as for the other /v1 routes
