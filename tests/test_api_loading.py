"""The API's models at start-up: every offered model loads in the background, readiness
waits for all of them, a request for a model still loading waits for it (bounded), a broken
model is a clear 503, the log names the backend, and /v1/models tells the models apart by
the SHA-256 of their weights."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import make_model_folder
from tests.test_api import SAMPLES, as_files, jpeg, serving

import mri_tumor
from mri_tumor.api import Settings, create_app
from mri_tumor.api.service import backend_name
from mri_tumor.card import ModelCard
from mri_tumor.inference import Predictor
from mri_tumor.inference.model_folder import SHIPPED_MODELS


def upload() -> list:
    return as_files([jpeg(SAMPLES / "glioma.jpg")])


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class SlowLoader:
    """A loader held until the test lets it go; it then returns ``result`` or raises
    ``error``."""

    def __init__(self, result: Predictor | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.calls = 0
        self.release = threading.Event()

    def __call__(self) -> Predictor:
        self.calls += 1
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_every_model_loads_at_start_up_and_readiness_waits_for_all(
        predictor: Predictor, types_predictor: Predictor) -> None:
    types = SlowLoader(types_predictor)
    app = create_app(Settings(), predictor=predictor, models={"types": types})
    service = app.state.service
    with TestClient(app) as client:
        try:
            wait_until(lambda: types.calls == 1)  # loading, with no request naming it
            wait_until(lambda: service.own.ready)
            ready = client.get("/readyz")
            assert ready.status_code == 503  # the server's model alone is not enough
            assert "'types' is still loading" in ready.json()["detail"]
            # The server's model answers meanwhile.
            own = client.post("/v1/predict", files=upload())
            assert own.status_code == 200 and own.json()[0]["model"] == "default"
            # A request for the model still loading waits for it instead of failing.
            answers: list = []
            worker = threading.Thread(target=lambda: answers.append(
                client.post("/v1/predict?model=types", files=upload())))
            worker.start()
            wait_until(lambda: bool(service.others["types"]._waiters))
            assert answers == []
        finally:
            types.release.set()
        worker.join(60)
        [answer] = answers
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model"] == "types"
        assert client.get("/readyz").status_code == 200
        assert types.calls == 1  # loaded once


def test_a_request_waits_at_most_the_load_wait(predictor: Predictor) -> None:
    own = SlowLoader(predictor)
    app = create_app(Settings(load_wait_s=0.3), loader=own)
    with TestClient(app) as client:
        try:
            started = time.monotonic()
            answer = client.post("/v1/predict", files=upload())
            waited = time.monotonic() - started
            assert answer.status_code == 503
            assert "'default' is still loading" in answer.json()["detail"]
            assert int(answer.headers["Retry-After"]) > 0
            assert 0.3 <= waited < 10
            card = client.get("/v1/model")  # the card of the own model waits too
            assert card.status_code == 503 and "still loading" in card.json()["detail"]
        finally:
            own.release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/v1/predict", files=upload()).status_code == 200


def test_a_waiting_request_learns_at_once_that_the_model_failed(predictor: Predictor) -> None:
    broken = SlowLoader(error=FileNotFoundError("no weights at /somewhere"))
    app = create_app(Settings(load_wait_s=30), predictor=predictor, models={"types": broken})
    service = app.state.service
    with TestClient(app) as client:
        answers: list = []
        worker = threading.Thread(target=lambda: answers.append(
            client.post("/v1/predict?model=types", files=upload())))
        worker.start()
        wait_until(lambda: bool(service.others["types"]._waiters))
        started = time.monotonic()
        broken.release.set()
        worker.join(30)
        assert time.monotonic() - started < 10  # not the whole 30 s wait
        [answer] = answers
        assert answer.status_code == 503
        detail = answer.json()["detail"]
        assert "'types' failed to load" in detail and "no weights at /somewhere" in detail
        assert "\n" not in detail and "Traceback" not in answer.text
        wait_until(lambda: service.own.ready)  # (the server's model loads beside it)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "no weights at /somewhere" in ready.json()["detail"]


def test_load_wait_comes_from_the_environment() -> None:
    assert Settings.from_env({}).load_wait_s == 60
    assert Settings.from_env({"MRI_TUMOR_LOAD_WAIT_S": "2.5"}).load_wait_s == 2.5
    assert Settings.from_env({}).preload_models is True
    assert Settings.from_env({"MRI_TUMOR_PRELOAD_MODELS": "0"}).preload_models is False
    with pytest.raises(ValueError, match="MRI_TUMOR_LOAD_WAIT_S='-1'"):
        Settings.from_env({"MRI_TUMOR_LOAD_WAIT_S": "-1"})


@pytest.mark.parametrize("fixture,backend", [("onnx_predictor", "onnx"),
                                             ("predictor", "torch")])
def test_the_load_log_names_the_backend(request: pytest.FixtureRequest, fixture: str,
                                        backend: str, caplog: pytest.LogCaptureFixture) -> None:
    loaded: Predictor = request.getfixturevalue(fixture)
    caplog.set_level(logging.INFO, logger="mri_tumor.api.service")
    with serving(create_app(Settings(preload_models=False), predictor=loaded)):
        pass
    [line] = [r.getMessage() for r in caplog.records if "model default loaded" in r.getMessage()]
    assert f"({backend} backend)" in line and "object at" not in line
    assert backend_name(loaded) == backend
    assert backend_name(object()) == "unknown"  # type: ignore[arg-type]


# -- /v1/models: each model's version and weights hash ----------------------------------------
def test_models_give_each_model_its_weights_hash(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "mine", ["a", "b"])
    settings = Settings.from_env({"MRI_TUMOR_MODEL_DIR": str(folder), "MRI_TUMOR_THREADS": "1"})
    with serving(create_app(settings)) as client:
        answer = client.get("/v1/models")
    assert answer.status_code == 200
    by_name = {entry["name"]: entry for entry in answer.json()["models"]}
    assert list(by_name) == ["mine", "default", "types"]
    expected = {"mine": folder, "default": SHIPPED_MODELS["default"],
                "types": SHIPPED_MODELS["types"]}
    for name, model_dir in expected.items():
        entry = by_name[name]
        assert entry["weights_sha256"] == ModelCard.weights_sha256(model_dir)
        assert len(entry["weights_sha256"]) == 64
        card = ModelCard.load(model_dir)
        assert entry["version"] == card.version  # the existing key, unchanged
        assert entry["algorithm_version"] == (f"{mri_tumor.__version__} card {card.version} "
                                              f"weights {entry['weights_sha256'][:12]}")
    assert len({entry["weights_sha256"] for entry in by_name.values()}) == 3


def test_models_schema_keeps_its_keys_and_adds_the_hash(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ModelSummaryOut"]
    assert {"name", "default", "shipped", "loaded", "architecture", "class_names",
            "display_names", "sequence_names", "version", "validation"} <= set(schema["required"])
    assert {"weights_sha256", "algorithm_version"} <= set(schema["properties"])
    assert "SHA-256" in schema["properties"]["weights_sha256"]["description"]


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> TestClient:
    return TestClient(create_app(Settings(preload_models=False), predictor=predictor))
