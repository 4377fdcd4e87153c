"""What `mri-tumor serve` does below the application: the HTTP protocol it runs (a request
the HTTP parser refuses gets the JSON error body every other error has) and the port check
of `serve` and `app` (a busy port is one line and exit status 2, before anything loads)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient
from tests.conftest import run_cli
from tests.test_api import SAMPLES, free_port

from mri_tumor.api import Settings, create_app
from mri_tumor.api.protocol import (
    MALFORMED_DETAIL,
    PROTOCOL_PATH,
    JsonErrorsH11Protocol,
    refusal_detail,
)
from mri_tumor.api.uploads import BAD_LENGTH_DETAIL
from mri_tumor.card import ModelCard
from mri_tumor.inference import Predictor


# -- the protocol -----------------------------------------------------------------------------
@contextmanager
def live_server(app) -> Iterator[int]:
    """``app`` served by uvicorn with the protocol `mri-tumor serve` names, on a free port
    of 127.0.0.1 (in a thread); yields the port."""
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=PROTOCOL_PATH, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.fixture(scope="module")
def port(onnx_predictor: Predictor) -> Iterator[int]:
    app = create_app(Settings(preload_models=False), predictor=onnx_predictor)
    with live_server(app) as port:
        yield port


def test_a_non_numeric_content_length_gets_the_json_error_body(port: int) -> None:
    status, headers, body = raw_request(
        port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
              b"Content-Length: twelve\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": BAD_LENGTH_DETAIL}
    assert int(headers["content-length"]) == len(body)


def test_the_application_answers_a_bad_content_length_the_same_way(
        onnx_predictor: Predictor) -> None:
    """Where the HTTP layer lets one through (the test client has none), the application's
    own check gives the same answer."""
    with TestClient(create_app(Settings(preload_models=False),
                               predictor=onnx_predictor)) as client:
        answer = client.post("/v1/predict", content=b"\xff\xd8",
                             headers={"Content-Type": "image/jpeg", "Content-Length": "abc"})
    assert answer.status_code == 400 and answer.json() == {"detail": BAD_LENGTH_DETAIL}


def test_any_request_the_parser_refuses_gets_a_json_400(port: int) -> None:
    status, headers, body = raw_request(port, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": MALFORMED_DETAIL}
    status, headers, body = raw_request(  # a header value is never quoted back
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x01: PatientName\r\n\r\n")
    assert status == 400 and b"PatientName" not in body
    assert json.loads(body) == {"detail": MALFORMED_DETAIL}


def test_well_formed_requests_are_served_as_before(port: int) -> None:
    status, headers, body = raw_request(
        port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    image = (SAMPLES / "glioma.jpg").read_bytes()
    status, headers, body = raw_request(
        port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Type: image/jpeg\r\nContent-Length: " + str(len(image)).encode()
              + b"\r\n\r\n" + image)
    assert status == 200, body
    [result] = json.loads(body)
    assert result["model"] == "default" and "x-disclaimer" in headers


def test_the_refusal_detail_names_the_content_length_only_when_it_is_the_cause() -> None:
    assert refusal_detail("bad Content-Length") == BAD_LENGTH_DETAIL
    assert refusal_detail("conflicting Content-Length headers") == BAD_LENGTH_DETAIL
    assert refusal_detail("illegal header line") == MALFORMED_DETAIL
    assert refusal_detail("") == MALFORMED_DETAIL


def test_serve_runs_uvicorn_with_this_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from mri_tumor.api import serve

    given: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: given.update(kwargs))
    monkeypatch.setenv("MRI_TUMOR_MODEL_DIR", "")  # serve() records it: restored afterwards
    assert serve(port=free_port()) == 0
    assert given["http"] == PROTOCOL_PATH
    module, name = PROTOCOL_PATH.split(":")
    assert getattr(__import__(module, fromlist=[name]), name) is JsonErrorsH11Protocol


# -- the port check of serve and app ----------------------------------------------------------
@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that something listens on for the test's duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and blocks) every attempt to read a model card or load a model, to start
    uvicorn or to start a child process."""
    attempts: list[str] = []

    def refuse(what: str):
        def record(*args, **kwargs):
            attempts.append(what)
            raise AssertionError(f"{what} called")
        return record

    import subprocess

    monkeypatch.setattr(ModelCard, "load", refuse("ModelCard.load"))
    monkeypatch.setattr(Predictor, "load", refuse("Predictor.load"))
    monkeypatch.setattr(uvicorn, "run", refuse("uvicorn.run"))
    monkeypatch.setattr(subprocess, "Popen", refuse("Popen"))
    return attempts


@pytest.mark.parametrize("command", [["serve"], ["serve", "--model", "types"],
                                     ["app"], ["app", "--model", "types"]])
def test_a_busy_port_is_one_line_and_exit_2_before_anything_loads(
        command: list[str], busy_port: int, nothing_loads: list[str]) -> None:
    status, out, err = run_cli(*command, "--port", str(busy_port))
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mri-tumor {command[0]}: error: port {busy_port} ")
    assert "in use" in err and "--port" in err
    assert nothing_loads == [] and out == ""  # no card read, no uvicorn, no Streamlit child


def test_a_free_port_goes_on_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: given.update(kwargs))
    monkeypatch.setenv("MRI_TUMOR_MODEL_DIR", "")  # serve() records it: restored afterwards
    port = free_port()
    status, out, err = run_cli("serve", "--port", str(port))
    assert status == 0, err
    assert given["port"] == port and f":{port}/docs" in out


def test_a_free_port_goes_on_to_start_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from mri_tumor.app import launch

    commands: list[list[str]] = []
    monkeypatch.setattr(launch, "run_until_stopped",
                        lambda command: commands.append(list(command)) or 0)
    port = free_port()
    status, out, err = run_cli("app", "--port", str(port))
    assert status == 0, err
    [command] = commands
    assert command[command.index("--server.port") + 1] == str(port) and f":{port}" in out


def test_a_host_that_cannot_be_listened_on_is_one_line(nothing_loads: list[str]) -> None:
    status, _, err = run_cli("serve", "--host", "no-such-host.invalid", "--port", "8000")
    assert status == 2 and err.count("\n") == 1
    assert "--host no-such-host.invalid" in err and nothing_loads == []
