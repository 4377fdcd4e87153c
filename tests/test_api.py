"""The HTTP API: every endpoint and error code with real requests against the real predictor."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import io
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from tests.conftest import FIXTURE_IMAGES, make_model_folder
from tests.dicom_factory import PATIENT, dicom_bytes

import mri_tumor
from mri_tumor.api import DISCLAIMER_HEADER, MIB, Settings, create_app
from mri_tumor.api import queue as queue_module
from mri_tumor.api.queue import InferenceQueue, QueueClosedError
from mri_tumor.api.service import server_model
from mri_tumor.card import DISCLAIMER, ModelCard
from mri_tumor.data.reading import MAX_UPLOAD_BYTES, MAX_UPLOAD_MB
from mri_tumor.inference import DEFAULT_BACKEND, RESULT_KEYS, SEQUENCE_KEYS, Predictor
from mri_tumor.inference.model_folder import SHIPPED_MODELS

SAMPLES = Path(mri_tumor.__file__).parent / "samples"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = (PATIENT["PatientName"], PATIENT["PatientID"],
                                        PATIENT["PatientBirthDate"])
# Read from the shipped folder, not from a loaded predictor: what the types model must answer.
TYPES_CARD = ModelCard.load(SHIPPED_MODELS["types"])


# -- helpers ----------------------------------------------------------------------------------
@contextmanager
def serving(app) -> Iterator[TestClient]:
    """A client for ``app`` with its lifespan running and the model loaded."""
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(predictor: Predictor, types_predictor: Predictor) -> Iterator[TestClient]:
    """The default model as the server's model, and the types model already loaded."""
    app = create_app(Settings(), predictor=predictor, models={"types": types_predictor})
    with serving(app) as test_client:
        yield test_client


def fixture_of(label: str) -> Path:
    """The first fixture image of a class (the file names are not fixed)."""
    return sorted((FIXTURE_IMAGES / label).glob("*.jpg"))[0]


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_dicom(source: Path, frames: int = 1, modality: str | None = "MR") -> bytes:
    """A 16-bit (12 bits stored) DICOM file built from a fixture JPEG, carrying the
    distinctive patient identifiers of ``PATIENT``; frames differ by a horizontal roll."""
    pixels = np.asarray(Image.open(source).convert("L")).astype(np.uint16) * 16
    if frames > 1:
        pixels = np.stack([np.roll(pixels, 8 * k, axis=1) for k in range(frames)])
    return dicom_bytes(pixels, modality=modality)


def as_files(items: list[tuple[str, bytes, str]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", item) for item in items]


def jpeg(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/jpeg"


# -- health, readiness, model card, docs ------------------------------------------------------
def test_healthz_and_readyz_once_loaded(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_readyz_is_503_until_the_model_is_loaded(predictor: Predictor) -> None:
    """/readyz answers at once (503 while loading); a request waits for the load instead."""
    release = threading.Event()

    def slow_loader() -> Predictor:
        assert release.wait(30)
        return predictor

    app = create_app(Settings(), loader=slow_loader)
    with TestClient(app) as client:
        early: list = []
        worker = threading.Thread(target=lambda: early.append(client.post(
            "/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))))
        try:
            assert client.get("/healthz").status_code == 200  # the process is up meanwhile
            loading = client.get("/readyz")
            assert loading.status_code == 503
            assert "'default' is still loading" in loading.json()["detail"]
            assert int(loading.headers["Retry-After"]) > 0
            worker.start()
            deadline = time.monotonic() + 30
            while not app.state.service.own._waiters:  # the request waits for the model
                assert early == [] and time.monotonic() < deadline  # not refused
                time.sleep(0.01)
        finally:
            release.set()
            worker.join(60)
        [answer] = early
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model"] == "default"
        wait_ready(client)


def test_readyz_reports_a_model_that_failed_to_load() -> None:
    def broken_loader() -> Predictor:
        raise FileNotFoundError("/nowhere: no such model folder")

    with TestClient(create_app(Settings(), loader=broken_loader)) as client:
        deadline = time.monotonic() + 10
        while "failed" not in client.get("/readyz").json()["detail"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "no such model folder" in answer.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_model_card_and_disclaimer(client: TestClient, predictor: Predictor) -> None:
    answer = client.get("/v1/model")
    assert answer.status_code == 200
    card = answer.json()
    assert card["disclaimer"] == DISCLAIMER
    assert card["name"] == "default"
    assert card["class_names"] == list(CLASSES)
    assert card["architecture"] == predictor.card.architecture
    assert card["image_size"] == predictor.card.image_size
    assert answer.headers[DISCLAIMER_HEADER] == DISCLAIMER


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/v1/models", "/healthz",
            "/readyz"} <= set(schema["paths"])
    predict = schema["paths"]["/v1/predict"]["post"]
    assert DISCLAIMER in predict["description"] and DISCLAIMER in schema["info"]["description"]
    content = predict["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/dicom"} <= set(content)
    assert {"401", "404", "413", "415", "422", "503"} <= set(predict["responses"])
    [model] = [p for p in predict["parameters"] if p["name"] == "model"]
    assert model["in"] == "query" and model["schema"]["enum"] == list(SHIPPED_MODELS)
    result = schema["components"]["schemas"]["PredictionOut"]
    assert set(SEQUENCE_KEYS) <= set(result["properties"]) and "model" in result["required"]
    assert not set(SEQUENCE_KEYS) & set(result["required"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_responses_are_declared_by_their_models(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def ok_schema(path: str, method: str) -> dict:
        return paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]

    assert ok_schema("/v1/predict", "post")["items"]["$ref"].endswith("/PredictionOut")
    assert ok_schema("/v1/model", "get")["$ref"].endswith("/ModelCardOut")
    assert ok_schema("/v1/models", "get")["$ref"].endswith("/ModelsOut")
    assert ok_schema("/healthz", "get")["$ref"].endswith("/HealthOut")
    assert ok_schema("/readyz", "get")["$ref"].endswith("/HealthOut")


def test_docs_and_redoc_use_no_outside_url(client: TestClient) -> None:
    """The documentation pages load their scripts, styles and icon from this server."""
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        assert answer.status_code == 200
        outside = [url for url in re.findall(r"""https?://[^\s"'<>)]+""", answer.text)
                   if not url.startswith(str(client.base_url))]
        assert outside == [], f"{page} refers to {outside}"
        # The browser itself refuses any other host (ReDoc's sidebar logo is on a CDN).
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", answer.text)
        assert assets, f"{page} loads no script or style"
        for asset in assets:
            assert asset.startswith("/"), asset
            fetched = client.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset


# -- predictions ------------------------------------------------------------------------------
def test_predict_one_file_multipart(client: TestClient) -> None:
    answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "meningioma.jpg")]))
    assert answer.status_code == 200
    assert answer.headers[DISCLAIMER_HEADER] == DISCLAIMER
    [result] = answer.json()
    assert tuple(result) == RESULT_KEYS  # no sequence keys: the default model has no such head
    assert result["model"] == "default"
    assert result["path"] == "meningioma.jpg"
    assert result["status"] == "ok" and result["label"] in CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_many_files_come_back_in_upload_order(client: TestClient, predictor: Predictor,
                                              fixture_paths: list[Path]) -> None:
    paths = list(fixture_paths)
    random.Random(7).shuffle(paths)
    uploads = [(f"{i:02d}-{p.name}", p.read_bytes(), "image/jpeg") for i, p in enumerate(paths)]
    answer = client.post("/v1/predict", files=as_files(uploads))
    assert answer.status_code == 200
    results = answer.json()
    assert [r["path"] for r in results] == [name for name, _, _ in uploads]
    expected = predictor.predict([data for _, data, _ in uploads],
                                 names=[name for name, _, _ in uploads])
    for got, want in zip(results, expected, strict=True):
        assert got["label"] == want.label
        assert got["confidence"] == pytest.approx(want.confidence, abs=2e-3)


def test_same_file_name_twice_gives_two_results(client: TestClient) -> None:
    sample = jpeg(SAMPLES / "notumor.jpg")
    results = client.post("/v1/predict", files=as_files([sample, sample])).json()
    assert [r["path"] for r in results] == ["notumor.jpg", "notumor.jpg"]
    assert results[0]["probabilities"] == results[1]["probabilities"]


def test_raw_body_upload(client: TestClient) -> None:
    data = (SAMPLES / "pituitary.jpg").read_bytes()
    named = client.post("/v1/predict?filename=scan-17.jpg", content=data,
                        headers={"Content-Type": "image/jpeg"})
    assert named.status_code == 200 and named.headers[DISCLAIMER_HEADER] == DISCLAIMER
    [result] = named.json()
    assert result["path"] == "scan-17.jpg" and result["status"] == "ok"
    unnamed = client.post("/v1/predict", content=data,
                          headers={"Content-Type": "application/octet-stream"})
    assert unnamed.status_code == 200
    assert unnamed.json()[0]["path"] == "upload"
    assert unnamed.json()[0]["probabilities"] == result["probabilities"]


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "image/png"), ("BMP", "image/bmp"),
                                            ("TIFF", "image/tiff")])
def test_png_bmp_tiff_give_the_same_answer_as_the_pixels(
        client: TestClient, predictor: Predictor, fmt: str, media: str) -> None:
    image = Image.open(SAMPLES / "glioma.jpg").convert("L")
    answer = client.post("/v1/predict", files=as_files([(f"g.{fmt.lower()}", encode(image, fmt),
                                                         media)]))
    assert answer.status_code == 200
    [result] = answer.json()
    [direct] = predictor.predict([np.asarray(image)])
    assert result["status"] == "ok"
    assert result["label"] == direct.label
    assert result["probabilities"] == pytest.approx(direct.probabilities, abs=2e-3)


def test_dicom_upload_never_leaks_patient_identifiers(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dicom = make_dicom(fixture_of("glioma"))
    assert PATIENT_NAME.encode() in dicom  # the identifiers are really in the upload
    multipart = client.post("/v1/predict",
                            files=as_files([("slice.dcm", dicom, "application/dicom")]))
    raw = client.post("/v1/predict", content=dicom, headers={"Content-Type": "application/dicom"})
    for answer in (multipart, raw):
        assert answer.status_code == 200, answer.text
        [result] = answer.json()
        assert result["status"] == "ok" and result["label"] in CLASSES
    assert multipart.json()[0]["path"] == "slice.dcm"
    assert "POST /v1/predict 200" in caplog.text  # the log capture does see the API's logs
    for secret in (PATIENT_NAME, "Doe", "Sensitive", PATIENT_ID, BIRTH_DATE):
        for answer in (multipart, raw):
            assert secret not in answer.text
            assert secret not in str(answer.headers)
        assert secret not in caplog.text


def test_multi_frame_dicom_gives_one_result_per_frame(client: TestClient) -> None:
    dicom = make_dicom(fixture_of("meningioma"), frames=3)
    answer = client.post("/v1/predict", files=as_files([
        ("first.jpg", (SAMPLES / "glioma.jpg").read_bytes(), "image/jpeg"),
        ("series.dcm", dicom, "application/octet-stream"),
        ("last.jpg", (SAMPLES / "notumor.jpg").read_bytes(), "image/jpeg")]))
    assert answer.status_code == 200
    paths = [r["path"] for r in answer.json()]
    assert paths == ["first.jpg", "series.dcm#0", "series.dcm#1", "series.dcm#2", "last.jpg"]
    assert all(r["status"] == "ok" for r in answer.json())


def test_non_mr_dicom_is_rejected_not_an_error(client: TestClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = fixture_of("glioma")
    answer = client.post("/v1/predict", files=as_files([
        ("ct.dcm", make_dicom(source, modality="CT"), "application/dicom"),
        ("us.dcm", make_dicom(source, modality="US"), "application/dicom"),
        ("mr.dcm", make_dicom(source), "application/dicom"),
        ("untagged.dcm", make_dicom(source, modality=None), "application/dicom")]))
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert [r["status"] for r in results] == ["rejected", "rejected", "ok", "ok"]
    assert "DICOM Modality is CT (computed tomography), not MR" in results[0]["message"]
    assert "DICOM Modality is US (ultrasound), not MR" in results[1]["message"]
    assert all(r["label"] is None for r in results[:2])
    assert all(r["label"] in CLASSES for r in results[2:])
    # A request of only a CT slice is answered, not refused as unreadable (422).
    raw = client.post("/v1/predict", content=make_dicom(source, modality="CT"),
                      headers={"Content-Type": "application/dicom"})
    assert raw.status_code == 200, raw.text
    assert [r["status"] for r in raw.json()] == ["rejected"]
    assert "Modality is CT" in raw.json()[0]["message"]
    for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE):
        assert secret not in answer.text and secret not in raw.text
        assert secret not in caplog.text


# -- models: ?model=, /v1/models, cards with other classes -----------------------------------
def assert_sums_to_one(probabilities: dict[str, float]) -> None:
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)


def test_model_types_names_a_type_and_the_sequence(client: TestClient,
                                                   types_predictor: Predictor) -> None:
    uploads = [jpeg(SAMPLES / f"{name}.jpg") for name in CLASSES]
    answer = client.post("/v1/predict?model=types", files=as_files(uploads))
    assert answer.status_code == 200, answer.text
    assert answer.headers[DISCLAIMER_HEADER] == DISCLAIMER
    results = answer.json()
    expected = types_predictor.predict([data for _, data, _ in uploads],
                                       names=[name for name, _, _ in uploads])
    # (The trained model's guard may refuse a slice of another collection: no class then.)
    assert any(result["status"] == "ok" for result in results)
    for result, want in zip(results, expected, strict=True):
        assert result["model"] == "types" and result["status"] == want.status
        if result["status"] != "ok":
            assert tuple(result) == RESULT_KEYS and result["label"] is None
            continue
        assert tuple(result) == RESULT_KEYS + SEQUENCE_KEYS
        assert result["label"] in TYPES_CARD.class_names
        assert list(result["probabilities"]) == TYPES_CARD.class_names
        assert_sums_to_one(result["probabilities"])
        assert result["sequence"] in TYPES_CARD.sequence_names == ["T1", "T1C+", "T2"]
        assert list(result["sequence_probabilities"]) == TYPES_CARD.sequence_names
        assert_sums_to_one(result["sequence_probabilities"])
        assert result["sequence"] == max(result["sequence_probabilities"],
                                         key=result["sequence_probabilities"].get)
        # The types model answered, not the default one.
        assert result["label"] == want.label and result["sequence"] == want.sequence
        assert result["probabilities"] == pytest.approx(want.probabilities, abs=2e-3)
    ok = next(upload for upload, result in zip(uploads, results, strict=True)
              if result["status"] == "ok")
    raw = client.post("/v1/predict?model=types&filename=s.jpg", content=ok[1],
                      headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()[0]["model"] == "types"
    assert raw.json()[0]["sequence"] in TYPES_CARD.sequence_names


def test_without_model_the_servers_model_answers_with_no_sequence(client: TestClient) -> None:
    uploads = [jpeg(SAMPLES / "glioma.jpg"), ("broken.jpg", b"\xff\xd8 nope", "image/jpeg")]
    for url in ("/v1/predict", "/v1/predict?model=default"):
        answer = client.post(url, files=as_files(uploads))
        assert answer.status_code == 200, answer.text
        good, bad = answer.json()
        assert good["model"] == bad["model"] == "default"
        assert tuple(good) == tuple(bad) == RESULT_KEYS
        assert good["label"] in CLASSES and list(good["probabilities"]) == list(CLASSES)
        assert bad["status"] == "error"
    # An unreadable file sent to the types model names it too, without a sequence.
    [bad] = client.post("/v1/predict?model=types", files=as_files(uploads)).json()[1:]
    assert bad["model"] == "types" and bad["status"] == "error" and "sequence" not in bad


def test_unknown_model_is_404_naming_the_shipped_models(client: TestClient) -> None:
    sample = (SAMPLES / "glioma.jpg").read_bytes()
    for answer in (client.post("/v1/predict?model=nope", content=sample,
                               headers={"Content-Type": "image/jpeg"}),
                   client.get("/v1/model?model=nope"),
                   client.post("/v1/predict?model=", content=sample,
                               headers={"Content-Type": "image/jpeg"}),
                   client.post("/v1/predict?model=TYPES", files=as_files([jpeg(SAMPLES /
                                                                              "glioma.jpg")]))):
        assert answer.status_code == 404, answer.text
        detail = answer.json()["detail"]
        assert "\n" not in detail
        assert "default" in detail and "types" in detail and "Unknown model" in detail
    assert "'nope'" in client.get("/v1/model?model=nope").json()["detail"]
    long = client.get("/v1/model", params={"model": "x\n" * 500}).json()["detail"]
    assert "\n" not in long and len(long) < 400


@pytest.mark.parametrize("value", [str(SHIPPED_MODELS["types"]),
                                   str(SHIPPED_MODELS["types"].resolve()) + "/",
                                   "../weights/types", "./types", "types/", "/etc",
                                   "weights/types", "~/.cache/mri-tumor"])
def test_a_path_in_model_is_refused(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                    value: str) -> None:
    """No folder named by a client is read: refused before any card or weights are."""
    reads: list[object] = []
    monkeypatch.setattr(ModelCard, "load", lambda *args: reads.append(args))
    monkeypatch.setattr(Predictor, "load", lambda *args, **kwargs: reads.append(args))
    predicted = client.post("/v1/predict", params={"model": value},
                            files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
    card = client.get("/v1/model", params={"model": value})
    for answer in (predicted, card):
        assert answer.status_code == 404, answer.text
        assert "never a path" in answer.json()["detail"]
    assert reads == []


def test_a_path_to_a_real_model_folder_is_refused(client: TestClient, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "planted", ["a", "b"])
    for value in (str(folder), str(folder.resolve()), "planted"):
        answer = client.post("/v1/predict", params={"model": value},
                             files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 404
        assert client.get("/v1/model", params={"model": value}).status_code == 404
    assert set(client.get("/v1/models").text.split('"')).isdisjoint({"planted", "a", "b"})


def test_models_lists_both_shipped_models(client: TestClient, predictor: Predictor) -> None:
    answer = client.get("/v1/models")
    assert answer.status_code == 200 and answer.headers[DISCLAIMER_HEADER] == DISCLAIMER
    listing = answer.json()
    assert listing["default"] == "default"
    by_name = {entry["name"]: entry for entry in listing["models"]}
    assert [entry["name"] for entry in listing["models"]] == ["default", "types"]
    default, types = by_name["default"], by_name["types"]
    assert default["default"] is True and types["default"] is False
    assert default["shipped"] is types["shipped"] is True
    assert default["loaded"] is types["loaded"] is True  # the client fixture loaded both
    assert default["class_names"] == list(CLASSES) and default["sequence_names"] == []
    assert types["class_names"] == TYPES_CARD.class_names and len(types["class_names"]) == 15
    assert types["sequence_names"] == TYPES_CARD.sequence_names
    assert types["display_names"]["carcinoma (metastasis)"] == "Carcinoma (metastasis)"
    assert default["architecture"] == predictor.card.architecture
    assert default["version"] == predictor.card.version
    # Each model is told apart by the SHA-256 of its weights, as the PACS results name it.
    for entry, name in ((default, "default"), (types, "types")):
        assert entry["weights_sha256"] == ModelCard.weights_sha256(SHIPPED_MODELS[name])
        card = ModelCard.load(SHIPPED_MODELS[name])
        assert entry["algorithm_version"] == (f"{mri_tumor.__version__} card {card.version} "
                                              f"weights {entry['weights_sha256'][:12]}")
    assert default["weights_sha256"] != types["weights_sha256"]
    assert default["algorithm_version"] != types["algorithm_version"]  # each its own version
    validation = predictor.card.metrics.validation
    assert default["validation"] == {"accuracy": validation.accuracy,
                                     "macro_f1": validation.macro_f1,
                                     "sequence_accuracy": validation.sequence_accuracy}
    assert set(types["validation"]) == {"accuracy", "macro_f1", "sequence_accuracy"}


def test_model_card_of_a_named_model(client: TestClient) -> None:
    types = client.get("/v1/model?model=types")
    assert types.status_code == 200 and types.headers[DISCLAIMER_HEADER] == DISCLAIMER
    card = types.json()
    assert card["name"] == "types" and card["disclaimer"] == DISCLAIMER
    assert card["class_names"] == TYPES_CARD.class_names
    assert card["sequence_names"] == TYPES_CARD.sequence_names
    assert client.get("/v1/model?model=default").json() == client.get("/v1/model").json()


def test_with_preload_off_a_shipped_model_loads_on_first_use(
        predictor: Predictor, types_predictor: Predictor) -> None:
    """MRI_TUMOR_PRELOAD_MODELS=0: readiness is the server's model; another shipped model
    loads when a request first names it, and a request past MRI_TUMOR_LOAD_WAIT_S gets 503."""
    release, calls = threading.Event(), []

    def slow_loader() -> Predictor:
        calls.append(1)
        assert release.wait(30)
        return types_predictor

    settings = Settings.from_env({"MRI_TUMOR_PRELOAD_MODELS": "0",
                                  "MRI_TUMOR_LOAD_WAIT_S": "0.2"})
    app = create_app(settings, predictor=predictor, models={"types": slow_loader})
    upload = as_files([jpeg(SAMPLES / "glioma.jpg")])
    with serving(app) as client:
        try:
            assert calls == []  # not loaded at start-up: readiness is the server's model
            assert client.get("/v1/models").json()["models"][1]["loaded"] is False
            for _ in range(2):
                started = time.monotonic()
                loading = client.post("/v1/predict?model=types", files=upload)
                assert loading.status_code == 503, loading.text
                assert time.monotonic() - started >= 0.2  # it waited for the load first
                assert int(loading.headers["Retry-After"]) > 0
                assert "'types' is still loading" in loading.json()["detail"]
            # Its card is there without loading it; the server's model answers meanwhile.
            assert client.get("/v1/model?model=types").json()["name"] == "types"
            assert client.post("/v1/predict", files=upload).json()[0]["model"] == "default"
        finally:
            release.set()
        deadline = time.monotonic() + 30
        while (answer := client.post("/v1/predict?model=types", files=upload)).status_code != 200:
            assert answer.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.02)
        assert answer.json()[0]["model"] == "types" and calls == [1]  # loaded once
        assert client.get("/v1/models").json()["models"][1]["loaded"] is True


def test_a_shipped_model_that_fails_to_load_is_503_with_the_reason(
        predictor: Predictor) -> None:
    def broken() -> Predictor:
        raise FileNotFoundError("no weights at /somewhere")

    app = create_app(Settings(), predictor=predictor, models={"types": broken})
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while "failed" not in (ready := client.get("/readyz")).json()["detail"]:
            assert ready.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.02)
        # Not ready: an offered model is broken, and readiness says which and why.
        assert ready.status_code == 503
        assert "'types' failed to load" in ready.json()["detail"]
        assert "no weights at" in ready.json()["detail"]
        answer = client.post("/v1/predict?model=types",
                             files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 503 and "no weights at" in answer.json()["detail"]
        assert int(answer.headers["Retry-After"]) > 0
        own = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert own.status_code == 200 and own.json()[0]["model"] == "default"


def test_preload_loads_the_other_models_after_the_servers_model(
        predictor: Predictor, types_predictor: Predictor) -> None:
    loaded = threading.Event()

    def loader() -> Predictor:
        loaded.set()
        return types_predictor

    app = create_app(Settings.from_env({"MRI_TUMOR_PRELOAD_MODELS": "1"}), predictor=predictor,
                     models={"types": loader})
    with serving(app) as client:
        assert loaded.wait(30)  # without any request naming it
        deadline = time.monotonic() + 10
        while not client.get("/v1/models").json()["models"][1]["loaded"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_the_shipped_types_model_loads_for_real_at_start_up(predictor: Predictor) -> None:
    """No injected types predictor: the server loads the shipped folder itself (ONNX), at
    start-up; once ready, the first ?model=types request answers."""
    with serving(create_app(Settings(threads=1), predictor=predictor)) as client:
        assert client.get("/v1/models").json()["models"][1]["loaded"] is True
        answer = client.post("/v1/predict?model=types",
                             files=as_files([jpeg(SAMPLES / "meningioma.jpg")]))
        assert answer.status_code == 200, answer.text
        [result] = answer.json()
        assert result["model"] == "types"
        if result["status"] == "ok":  # (the trained model's guard may refuse this slice)
            assert result["label"] in TYPES_CARD.class_names
            assert result["sequence"] in TYPES_CARD.sequence_names
        else:
            assert result["status"] == "rejected" and "sequence" not in result


def test_another_card_drives_predict_and_model_unchanged(other_model: Path) -> None:
    """A model folder with 2, 5 or 15 made-up classes (the 15 with a sequence head), served
    as the server's model exactly as `mri-tumor serve --model FOLDER` does."""
    card = ModelCard.load(other_model)
    settings = Settings.from_env({"MRI_TUMOR_MODEL_DIR": str(other_model),
                                  "MRI_TUMOR_THREADS": "1"})
    with serving(create_app(settings)) as client:
        uploads = [jpeg(SAMPLES / f"{name}.jpg") for name in CLASSES]
        answer = client.post("/v1/predict", files=as_files(uploads))
        assert answer.status_code == 200, answer.text
        for result in answer.json():
            assert result["status"] == "ok" and result["model"] == other_model.name
            assert result["label"] in card.class_names
            assert list(result["probabilities"]) == card.class_names
            assert_sums_to_one(result["probabilities"])
            if card.sequence_names:
                assert tuple(result) == RESULT_KEYS + SEQUENCE_KEYS
                assert result["sequence"] in card.sequence_names
                assert_sums_to_one(result["sequence_probabilities"])
            else:
                assert tuple(result) == RESULT_KEYS
        model = client.get("/v1/model").json()
        assert model["name"] == other_model.name and model["class_names"] == card.class_names
        assert model["sequence_names"] == card.sequence_names
        listing = client.get("/v1/models").json()
        assert listing["default"] == other_model.name
        own, *shipped = listing["models"]
        assert (own["name"], own["default"], own["shipped"]) == (other_model.name, True, False)
        assert own["class_names"] == card.class_names
        # Every offered model loads at start-up, and readiness waited for them.
        assert [(m["name"], m["default"], m["loaded"]) for m in shipped] == [
            ("default", False, True), ("types", False, True)]
        # The folder's own name is not a shipped model's: not selectable with ?model=.
        refused = client.post("/v1/predict", params={"model": other_model.name},
                              files=as_files(uploads[:1]))
        assert refused.status_code == 404


def test_the_servers_model_by_name_or_folder(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """`serve --model NAME_OR_DIR` hands the workers a shipped model by name and a folder by
    its full path; the workers name a shipped folder by its shipped name."""
    import uvicorn

    from mri_tumor.api import serve

    for given, name in [(None, "default"), ("types", "types"), ("default", "default"),
                        (Path("types"), "types"),
                        (SHIPPED_MODELS["types"], "types"),
                        (SHIPPED_MODELS["default"].resolve(), "default")]:
        assert server_model(Settings(model_dir=given))[::2] == (name, True)
    missing = server_model(Settings(model_dir=tmp_path / "gone"))
    assert missing == ("gone", tmp_path / "gone", False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    for given, recorded in [("types", "types"), (None, "default"),
                            (str(make_model_folder(tmp_path / "mine", ["a", "b"])),
                             str((tmp_path / "mine").resolve()))]:
        monkeypatch.setenv("MRI_TUMOR_MODEL_DIR", "")  # restored after the test
        assert serve(model_dir=given) == 0
        assert os.environ["MRI_TUMOR_MODEL_DIR"] == recorded
    with pytest.raises(ValueError, match="default, types"):
        serve(model_dir="nope")


# -- errors -----------------------------------------------------------------------------------
def test_413_above_the_upload_limit(predictor: Predictor) -> None:
    data = (SAMPLES / "glioma.jpg").read_bytes()
    limit = 2000
    assert len(data) > limit
    with serving(create_app(Settings(max_upload_mb=limit / MIB), predictor=predictor)) as client:
        declared = client.post("/v1/predict", files=as_files([("big.jpg", data, "image/jpeg")]))
        assert declared.status_code == 413
        assert "limit" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted instead
            for start in range(0, len(data), 500):
                yield data[start:start + 500]

        streamed = client.post("/v1/predict", content=chunks(),
                               headers={"Content-Type": "image/jpeg"})
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
        small = encode(Image.new("L", (32, 32), 80), "PNG")
        assert len(small) < limit
        assert client.post("/v1/predict", content=small,
                           headers={"Content-Type": "image/png"}).status_code == 200


def test_413_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              predictor: Predictor) -> None:
    monkeypatch.setenv("MRI_TUMOR_MAX_UPLOAD_MB", "0.002")
    with serving(create_app(predictor=predictor)) as client:
        answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 413
        assert ("larger than the 0.002 MB limit (1 MB = 1,048,576 bytes)"
                in answer.json()["detail"])


def test_413_default_limit_is_the_one_of_every_front_end(client: TestClient) -> None:
    """50 MB per request by default, worded as in the app and the command line."""
    assert Settings().max_upload_bytes == MAX_UPLOAD_BYTES
    declared = MAX_UPLOAD_BYTES + 1  # refused from the header, before any byte is read
    answer = client.post("/v1/predict", content=b"\xff\xd8",
                         headers={"Content-Type": "image/jpeg", "Content-Length": str(declared)})
    assert answer.status_code == 413
    detail = answer.json()["detail"]
    assert f"larger than the {MAX_UPLOAD_MB} MB limit (1 MB = 1,048,576 bytes)" in detail
    assert "MRI_TUMOR_MAX_UPLOAD_MB" in detail


def test_413_too_many_files_for_the_queue(predictor: Predictor) -> None:
    with serving(create_app(Settings(queue_size=2), predictor=predictor)) as client:
        sample = jpeg(SAMPLES / "glioma.jpg")
        answer = client.post("/v1/predict", files=as_files([sample] * 3))
        assert answer.status_code == 413 and "Too many files" in answer.json()["detail"]
        assert client.post("/v1/predict", files=as_files([sample] * 2)).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/gif",
                                          "application/pdf"])
def test_415_unsupported_raw_content_type(client: TestClient, content_type: str) -> None:
    answer = client.post("/v1/predict", content=b"GIF89a....",
                         headers={"Content-Type": content_type})
    assert answer.status_code == 415
    assert content_type in answer.json()["detail"]


def test_415_unsupported_part_and_missing_content_type(client: TestClient) -> None:
    mixed = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg"),
                                                       ("notes.txt", b"hello", "text/plain")]))
    assert mixed.status_code == 415 and "notes.txt" in mixed.json()["detail"]
    bare = client.post("/v1/predict", content=(SAMPLES / "glioma.jpg").read_bytes(),
                       headers={"Content-Type": ""})
    assert bare.status_code == 415 and "Content-Type" in bare.json()["detail"]


def test_422_when_every_file_is_unreadable(client: TestClient) -> None:
    truncated = (SAMPLES / "glioma.jpg").read_bytes()[:300]
    answer = client.post("/v1/predict", files=as_files([
        ("cut.jpg", truncated, "image/jpeg"), ("noise.png", bytes(range(256)) * 4, "image/png"),
        ("empty.bmp", b"", "image/bmp")]))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert isinstance(detail, str)
    assert "cut.jpg" in detail and "noise.png" in detail and "empty.bmp" in detail
    raw = client.post("/v1/predict?filename=bad.tif", content=b"II*\x00garbage",
                      headers={"Content-Type": "image/tiff"})
    assert raw.status_code == 422 and "bad.tif" in raw.json()["detail"]
    # The server is unharmed: the next good request works.
    assert client.post("/v1/predict",
                       files=as_files([jpeg(SAMPLES / "glioma.jpg")])).status_code == 200


def test_some_unreadable_files_give_200_with_error_entries(client: TestClient) -> None:
    answer = client.post("/v1/predict", files=as_files([
        jpeg(SAMPLES / "glioma.jpg"), ("broken.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg"),
        jpeg(SAMPLES / "pituitary.jpg")]))
    assert answer.status_code == 200
    good, bad, last = answer.json()
    assert good["status"] == "ok" and last["status"] == "ok"
    assert bad["path"] == "broken.jpg" and bad["status"] == "error"
    assert bad["label"] is None and bad["probabilities"] is None
    assert bad["message"].startswith("broken.jpg: ")


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"", "image/jpeg", 422),  # empty raw body
    (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\n1\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 422),  # no field `files`
    (b"--x--\r\n", "multipart/form-data; boundary=x", 400),  # no part at all
    (b"this is not multipart", "multipart/form-data; boundary=x", 400),
    (b"--x\r\n", "multipart/form-data", 400),  # no boundary
])
def test_malformed_requests_get_a_clear_4xx(client: TestClient, body: bytes, content_type: str,
                                            status: int) -> None:
    answer = client.post("/v1/predict", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == status
    assert isinstance(answer.json()["detail"], str) and answer.json()["detail"]


def test_422_validation_errors_are_one_clear_string(client: TestClient) -> None:
    answer = client.post("/v1/predict?filename=" + "x" * 300,
                         content=(SAMPLES / "glioma.jpg").read_bytes(),
                         headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 422
    assert "filename" in answer.json()["detail"]


def test_401_api_key(predictor: Predictor) -> None:
    with serving(create_app(Settings(api_key="s3cret-key"), predictor=predictor)) as client:
        upload = as_files([jpeg(SAMPLES / "glioma.jpg")])
        missing = client.post("/v1/predict", files=upload)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        wrong = client.post("/v1/predict", files=upload, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert client.get("/v1/model").status_code == 401
        right = client.post("/v1/predict", files=upload, headers={"X-API-Key": "s3cret-key"})
        assert right.status_code == 200 and right.json()[0]["status"] == "ok"
        assert client.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/readyz").status_code == 200


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                      predictor: Predictor) -> None:
    monkeypatch.setenv("MRI_TUMOR_API_KEY", "from-env")
    with serving(create_app(predictor=predictor)) as client:
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "from-env"}).status_code == 200


class GatedPredictor:
    """The real predictor, held at the start of each batch until the test lets it go."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.proceed = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict_frames(self, frames):
        self.entered.set()
        assert self.proceed.wait(30)
        return self.inner.predict_frames(frames)


def test_503_with_retry_after_when_the_queue_is_full(predictor: Predictor) -> None:
    gated = GatedPredictor(predictor)
    app = create_app(Settings(queue_size=1), predictor=gated)  # type: ignore[arg-type]
    upload = as_files([jpeg(SAMPLES / "glioma.jpg")])
    with serving(app) as client:
        first: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: first.update(status=client.post("/v1/predict",
                                                           files=upload).status_code))
        worker.start()
        try:
            assert gated.entered.wait(30)  # the first request holds the only slot
            busy = client.post("/v1/predict", files=upload)
            assert busy.status_code == 503
            assert int(busy.headers["Retry-After"]) >= 1
            assert "busy" in busy.json()["detail"]
        finally:
            gated.proceed.set()
            worker.join(30)
        assert first["status"] == 200
        assert client.post("/v1/predict", files=upload).status_code == 200  # slot freed


def test_503_with_queue_size_zero(predictor: Predictor) -> None:
    with serving(create_app(Settings(queue_size=0), predictor=predictor)) as client:
        answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 503 and "Retry-After" in answer.headers


def test_503_with_retry_after_while_the_queue_shuts_down(predictor: Predictor) -> None:
    app = create_app(Settings(), predictor=predictor)
    with serving(app) as client:
        app.state.service.queue.stop()
        answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
        assert "shutting down" in answer.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_the_queue_raises_its_own_errors_without_the_web_framework(
        predictor: Predictor) -> None:
    tree = ast.parse(Path(queue_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] in {"fastapi", "starlette"} for name in imported)
    queue = InferenceQueue(predictor, capacity=2, max_batch=2)
    queue.start()
    queue.reserve(1)
    queue.stop()
    upload = [("glioma.jpg", (SAMPLES / "glioma.jpg").read_bytes())]
    with pytest.raises(QueueClosedError, match="shutting down"):
        asyncio.run(queue.predict(upload, 1))
    assert queue.reserved == 0  # the refused request's slot was given back
    with pytest.raises(QueueClosedError):
        queue.reserve(1)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
        predictor: Predictor) -> None:
    calls: list[int] = []

    class Counting(GatedPredictor):
        def predict_frames(self, frames):
            calls.append(len(frames))
            return super().predict_frames(frames)

    counting = Counting(predictor)
    app = create_app(Settings(queue_size=16, max_batch=8), predictor=counting)  # type: ignore[arg-type]
    samples = [SAMPLES / f"{name}.jpg" for name in CLASSES]
    answers: dict[int, list[dict]] = {}
    with serving(app) as client:
        def post(index: int) -> None:
            sample = samples[index % len(samples)]
            answer = client.post(f"/v1/predict?filename=req{index}.jpg",
                                 content=sample.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"})
            answers[index] = answer.json()

        # Hold the worker on a first request so that the next ones pile up in the queue.
        threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        threads[0].start()
        assert counting.entered.wait(30)
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.service.queue.reserved < 6:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        counting.proceed.set()
        for thread in threads:
            thread.join(30)
    assert calls[0] == 1 and sum(calls) == 6
    assert len(calls) < 6  # the five waiting requests went through the model together
    for index in range(6):
        [result] = answers[index]
        assert result["path"] == f"req{index}.jpg" and result["status"] == "ok"


class BrokenCardPredictor(GatedPredictor):
    @property
    def card(self):
        raise RuntimeError("card store unavailable")


def test_unexpected_errors_are_json_without_a_traceback(predictor: Predictor) -> None:
    broken = BrokenCardPredictor(predictor)
    broken.proceed.set()
    with serving(create_app(Settings(), predictor=broken)) as client:  # type: ignore[arg-type]
        answer = client.get("/v1/model")
        assert answer.status_code == 500
        assert answer.json() == {"detail": "Internal server error; the request was not "
                                           "processed."}
        assert "Traceback" not in answer.text and "card store" not in answer.text
        assert client.get("/healthz").status_code == 200


class PoisonPredictor(GatedPredictor):
    """Fails whenever a batch holds a frame named poison*: one bad frame among good ones."""

    def predict_frames(self, frames):
        if any(frame.name.startswith("poison") for frame in frames):
            raise RuntimeError("model failure")
        return self.inner.predict_frames(frames)


def test_a_failing_image_does_not_fail_the_rest_of_its_batch(predictor: Predictor) -> None:
    app = create_app(Settings(), predictor=PoisonPredictor(predictor))  # type: ignore[arg-type]
    with serving(app) as client:
        answer = client.post("/v1/predict", files=as_files([
            jpeg(SAMPLES / "glioma.jpg"), ("poison.jpg", (SAMPLES / "notumor.jpg").read_bytes(),
                                           "image/jpeg")]))
        assert answer.status_code == 200
        good, bad = answer.json()
        assert good["status"] == "ok"
        assert bad["status"] == "error" and "could not be analysed" in bad["message"]


class RewritingPredictor(GatedPredictor):
    """The real predictor, with each result changed by ``change`` before it is returned."""

    def __init__(self, inner: Predictor, **change) -> None:
        super().__init__(inner)
        self.change = change

    def predict_frames(self, frames):
        return [dataclasses.replace(result, **self.change)
                for result in self.inner.predict_frames(frames)]


def test_an_invalid_result_is_a_500_not_an_unchecked_body(predictor: Predictor) -> None:
    bad = RewritingPredictor(predictor, status="maybe")
    with serving(create_app(Settings(), predictor=bad)) as client:  # type: ignore[arg-type]
        answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 500
        assert answer.json() == {"detail": "Internal server error; the request was not "
                                           "processed."}
        assert "maybe" not in answer.text


def test_nan_and_infinities_come_out_as_null(predictor: Predictor) -> None:
    odd = RewritingPredictor(predictor, confidence=float("nan"), ood_score=float("inf"),
                             probabilities={name: float("-inf") for name in CLASSES})
    with serving(create_app(Settings(), predictor=odd)) as client:  # type: ignore[arg-type]
        answer = client.post("/v1/predict", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
        assert answer.status_code == 200, answer.text
        [result] = answer.json()
        assert result["confidence"] is None and result["ood_score"] is None
        assert result["probabilities"] == dict.fromkeys(CLASSES)
        assert "NaN" not in answer.text and "Infinity" not in answer.text


def test_settings_from_environment_are_checked() -> None:
    settings = Settings.from_env({"MRI_TUMOR_MAX_UPLOAD_MB": "1.5", "MRI_TUMOR_QUEUE_SIZE": "3",
                                  "MRI_TUMOR_MAX_BATCH": "4", "MRI_TUMOR_API_KEY": "k",
                                  "MRI_TUMOR_MODEL_DIR": "/models/m", "MRI_TUMOR_THREADS": "2"})
    assert settings.max_upload_bytes == int(1.5 * MIB)
    assert (settings.queue_size, settings.max_batch, settings.threads) == (3, 4, 2)
    assert settings.api_key == "k" and settings.model_dir == Path("/models/m")
    defaults = Settings.from_env({})
    assert defaults.max_upload_bytes == MAX_UPLOAD_BYTES
    assert defaults.backend == DEFAULT_BACKEND == "onnx"
    assert Settings.from_env({"MRI_TUMOR_BACKEND": " Torch "}).backend == "torch"
    for name, value in [("MRI_TUMOR_QUEUE_SIZE", "many"), ("MRI_TUMOR_MAX_UPLOAD_MB", "0"),
                        ("MRI_TUMOR_MAX_UPLOAD_MB", "inf"), ("MRI_TUMOR_THREADS", "0"),
                        ("MRI_TUMOR_MAX_BATCH", "0"), ("MRI_TUMOR_BACKEND", "tensorflow")]:
        with pytest.raises(ValueError, match=name) as error:
            Settings.from_env({name: value})
        assert "\n" not in str(error.value) and repr(value) in str(error.value)


def test_settings_are_pydantic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings()`` reads the prefixed variables; keyword arguments win; ``from_env`` with
    a mapping reads that mapping alone."""
    monkeypatch.setenv("MRI_TUMOR_QUEUE_SIZE", "5")
    monkeypatch.setenv("MRI_TUMOR_MAX_UPLOAD_MB", "2")
    assert Settings().queue_size == 5 and Settings().max_upload_bytes == 2 * MIB
    assert Settings(queue_size=7).queue_size == 7
    assert Settings.from_env().queue_size == 5
    assert Settings.from_env({}).queue_size == 64


def test_serve_reports_a_bad_variable_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys) -> None:
    from mri_tumor.cli import main
    from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR

    # serve() records the model folder for its workers: monkeypatch restores it afterwards.
    monkeypatch.setenv("MRI_TUMOR_MODEL_DIR", str(SHIPPED_MODEL_DIR))
    monkeypatch.setenv("MRI_TUMOR_QUEUE_SIZE", "abc")
    assert main(["serve", "--port", str(free_port())]) == 2  # (a busy 8000 would stop first)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MRI_TUMOR_QUEUE_SIZE='abc'" in err
    assert "Traceback" not in err


def test_serve_refuses_a_missing_or_damaged_model_folder(tmp_path: Path, capsys) -> None:
    from mri_tumor.cli import main

    port = ["--port", str(free_port())]  # the port is checked first: a free one
    assert main(["serve", *port, "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err and "default, types" in err
    assert main(["serve", *port, "--model", str(tmp_path)]) == 2  # a folder without a card
    assert "no model card at" in capsys.readouterr().err
    (tmp_path / "card.json").write_text("[]")
    assert main(["serve", *port, "--model", str(tmp_path)]) == 2
    assert "not a valid model card (expected a JSON object)" in capsys.readouterr().err
    assert main(["serve", *port, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- needs the trained model ------------------------------------------------------------------
def _trained(predictor: Predictor) -> bool:
    accuracy = predictor.card.metrics.validation.accuracy
    return accuracy >= 0.9


def test_each_sample_gets_its_own_class(client: TestClient, predictor: Predictor) -> None:
    if not _trained(predictor):
        pytest.skip("needs the trained model (the installed one is the untrained stand-in)")
    uploads = [jpeg(SAMPLES / f"{name}.jpg") for name in CLASSES]
    results = client.post("/v1/predict", files=as_files(uploads)).json()
    assert [r["label"] for r in results] == list(CLASSES)
    assert all(r["status"] == "ok" for r in results)


def test_a_photo_is_rejected(client: TestClient, predictor: Predictor) -> None:
    if predictor.card.ood_threshold is None:
        pytest.skip("needs the trained model with its out-of-distribution guard")
    from skimage import data as skimage_data

    photo = encode(Image.fromarray(skimage_data.chelsea()), "PNG")
    [result] = client.post("/v1/predict", files=as_files([("cat.png", photo,
                                                           "image/png")])).json()
    assert result["status"] == "rejected" and result["label"] is None


# -- property-based: no input makes the server answer 5xx -------------------------------------
def _tiny(fmt: str) -> st.SearchStrategy[bytes]:
    image = Image.new("L", (24, 24), 90)
    return st.one_of(st.binary(max_size=64), st.just(encode(image, fmt)))


def test_no_input_gives_a_server_error(predictor: Predictor,
                                      types_predictor: Predictor) -> None:
    """Schemathesis generates requests (valid and invalid) from the app's OpenAPI schema for
    every operation; none may get a 5xx. Bounded: a fixed number of examples and a deadline.

    (Hypothesis is driven directly: the schemathesis pytest plugin's lazy fixture loader
    does not work with pytest 9.)
    """
    import schemathesis
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schemathesis.openapi.media_type("image/bmp", _tiny("BMP"))
    schemathesis.openapi.media_type("image/tiff", _tiny("TIFF"))
    schemathesis.openapi.media_type("application/dicom", st.one_of(
        st.binary(max_size=64), st.just(make_dicom(fixture_of("notumor")))))
    app = create_app(Settings(max_upload_mb=1), predictor=predictor,
                     models={"types": types_predictor})
    with serving(app):  # runs the lifespan: the models are ready and their workers started
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE),
                          schema.as_strategy(GenerationMode.NEGATIVE))
        seen: list[tuple[str, str, int]] = []

        @given(case=cases)
        @settings(max_examples=100, deadline=timedelta(seconds=30), database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            response = case.call_and_validate(checks=[not_a_server_error])
            seen.append((case.method, case.path, response.status_code))

        no_server_error()
    assert seen and all(status < 500 for _, _, status in seen)
    uploads = [status for method, path, status in seen
               if method == "POST" and path in ("/v1/predict", "/v1/scans")]
    assert 200 in uploads and any(400 <= status < 500 for status in uploads)
    assert {path for _, path, _ in seen} >= {"/v1/predict", "/v1/scans"}
