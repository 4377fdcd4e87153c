"""``mri-tumor pacs run`` and ``watch`` against a real Orthanc server (DICOMweb), and the
DICOM objects they write: one SR and one Secondary Capture series per study, valid by
dciodvfy, naming the classes the CLI gives, never twice, never leaking patient data."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
from PIL import Image
from tests.conftest import FIXTURE_IMAGES
from tests.dicom_factory import PATIENT, STUDY_IDENTIFIERS, dicom_bytes, make_mr_study
from tests.orthanc import PASSWORD, USER, OrthancServer, free_ports

from mri_tumor.cli import main
from mri_tumor.inference import Predictor
from mri_tumor.pacs import client as pacs_client
from mri_tumor.pacs.results import SCHEME, part10_bytes
from mri_tumor.pacs.study import WatchState, results_for, watch

IMAGES = sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[::4]  # 5 images, one or two per class
SECRETS = [*map(str, PATIENT.values()), *map(str, STUDY_IDENTIFIERS.values())]


def upload_study(orthanc: OrthancServer, images: list[Path] = IMAGES, **options) -> list[bytes]:
    files = make_mr_study(images, **options)
    for data in files:
        orthanc.upload(data)
    return files


def run_cli(orthanc: OrthancServer, *extra: str, user: str = f"{USER}:{PASSWORD}") -> int:
    return main(["pacs", "run", "--url", orthanc.dicomweb_url, "--user", user, *extra])


def series_by_modality(orthanc: OrthancServer, study_uid: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for series in orthanc.series_of_study(study_uid):
        found.setdefault(series["Modality"], []).append(series)
    return found


def instance_files(orthanc: OrthancServer, series: dict) -> list[bytes]:
    return [orthanc.instance_file(item["ID"]) for item in orthanc.instances_of_series(series["ID"])]


def findings(report: pydicom.Dataset) -> dict[str, str]:
    """SOP Instance UID of each source image -> the class code of its "Finding" in the SR's
    per-image measurement groups."""
    result: dict[str, str] = {}

    def walk(items, group_sources: list[str] | None = None) -> None:
        for item in items:
            children = getattr(item, "ContentSequence", [])
            if item.ValueType == "CONTAINER" and children:
                sources = [ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                           for ref in children if ref.ValueType == "IMAGE"]
                walk(children, sources or group_sources)
            elif (item.ValueType == "CODE" and group_sources and len(group_sources) == 1
                  and item.ConceptNameCodeSequence[0].CodeValue == "121071"):
                result[group_sources[0]] = code_value(item.ConceptCodeSequence[0])

    walk(report.ContentSequence)
    return result


def code_value(code: pydicom.Dataset) -> str:
    """A coded concept's value (LongCodeValue for the card's names over 16 characters)."""
    return str(code.get("CodeValue") or code.get("LongCodeValue"))


def texts(report: pydicom.Dataset) -> list[str]:
    found = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.append(item.TextValue)
            walk(getattr(item, "ContentSequence", []))

    walk(report.ContentSequence)
    return found


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "check.dcm"
    path.write_bytes(data)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (checked.stdout + checked.stderr).splitlines()
            if line.startswith("Error")]


def test_run_stores_one_report_and_one_overlay_series_and_never_twice(
        orthanc, tmp_path, capsys, caplog) -> None:
    if not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy (Debian package dicom3tools) is needed to validate the SR and SC")
    caplog.set_level("DEBUG")
    files = upload_study(orthanc, series_count=2, ct_slice=True)
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID

    assert run_cli(orthanc) == 0
    first = capsys.readouterr()
    series = series_by_modality(orthanc, study_uid)
    assert sorted((m, len(s)) for m, s in series.items()) == [
        ("CT", 1), ("MR", 2), ("OT", 1), ("SR", 1)]
    assert "skipped series 3: modality CT (computed tomography), not MR" in first.out
    assert "stored 6 object(s): 1 structured report, 5 overlay image(s)" in first.out

    # The SR names, per image, the class `mri-tumor predict` gives for the same file.
    mr_files = [data for data in files
                if pydicom.dcmread(io.BytesIO(data)).Modality == "MR"]
    for index, data in enumerate(mr_files):
        (tmp_path / f"{index}.dcm").write_bytes(data)
    assert main(["predict", *(str(tmp_path / f"{i}.dcm") for i in range(len(mr_files))),
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    predicted = [row for row in rows if "path" in row]  # not the series summaries
    expected = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID: row["label"]
                for data, row in zip(mr_files, predicted, strict=True)}
    [report_bytes] = instance_files(orthanc, series["SR"][0])
    report = pydicom.dcmread(io.BytesIO(report_bytes))
    assert findings(report) == expected
    assert report.VerificationFlag == "UNVERIFIED"
    assert any("not a diagnosis" in text and "UNVERIFIED" in text for text in texts(report))
    assert report.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME
    assert dciodvfy_errors(report_bytes, tmp_path) == []

    overlays = instance_files(orthanc, series["OT"][0])
    assert len(overlays) == len(mr_files)
    overlay = pydicom.dcmread(io.BytesIO(overlays[0]))
    assert overlay.BurnedInAnnotation == "YES" and "DERIVED" in overlay.ImageType
    assert "NOT FOR DIAGNOSIS" in overlay.SeriesDescription
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID in expected
    assert dciodvfy_errors(overlays[0], tmp_path) == []

    count = orthanc.instance_count()
    assert run_cli(orthanc) == 0
    second = capsys.readouterr()
    assert "already processed by this model; nothing stored" in second.out
    assert orthanc.instance_count() == count

    # Every log line of the product and its libraries (not of this test's own HTTP client).
    records = [r.getMessage() for r in caplog.records if not r.name.startswith("http")]
    logged = "\n".join([first.out, first.err, second.out, second.err, *records])
    for secret in [*SECRETS, study_uid]:
        assert secret not in logged


def test_dry_run_prints_each_image_and_stores_nothing(orthanc, capsys) -> None:
    upload_study(orthanc, IMAGES[:3])
    count = orthanc.instance_count()
    assert run_cli(orthanc, "--dry-run") == 0
    out = capsys.readouterr().out
    assert orthanc.instance_count() == count
    assert "would store 1 structured report and 3 overlay image(s)" in out
    assert out.count("series 1 image ") == 3


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_unreachable_server_and_wrong_password_are_one_line_errors(orthanc, capsys) -> None:
    port = free_ports(1)[0]
    assert main(["pacs", "run", "--url", f"http://127.0.0.1:{port}/dicom-web"]) == 1
    assert "cannot connect to" in one_line_error(capsys)
    assert run_cli(orthanc, user=f"{USER}:wrong") == 1
    assert "refused the credentials (HTTP 401)" in one_line_error(capsys)
    assert main(["pacs", "run", "--url", "ftp://example/dicom-web"]) == 2
    assert "http:// or https://" in one_line_error(capsys)


def test_a_study_that_vanishes_mid_run_or_is_unknown(orthanc, capsys, monkeypatch) -> None:
    files = upload_study(orthanc, IMAGES[:2])
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    assert run_cli(orthanc, "--study", "1.2.3.4.5.6") == 1
    assert "not found on the server" in one_line_error(capsys)

    original = pacs_client.PacsServer.retrieve

    def delete_then_retrieve(self, uid, series):
        orthanc.delete_study(uid)
        return original(self, uid, series)

    monkeypatch.setattr(pacs_client.PacsServer, "retrieve", delete_then_retrieve)
    assert run_cli(orthanc, "--study", study_uid) == 1
    line = one_line_error(capsys)
    assert "not found" in line and study_uid not in line


def test_a_corrupt_instance_is_reported_and_the_rest_stored(orthanc, capsys) -> None:
    files = make_mr_study(IMAGES[:3])
    damaged = pydicom.dcmread(io.BytesIO(files[2]))
    damaged.PixelData = damaged.PixelData[:100]  # truncated pixel data: header intact
    buffer = io.BytesIO()
    damaged.save_as(buffer, enforce_file_format=True)
    for data in [*files[:2], buffer.getvalue()]:
        orthanc.upload(data)
    assert run_cli(orthanc) == 1
    out = capsys.readouterr().out
    assert "3 MR image(s): 2 classified, 0 refused as not brain MRI, 1 unreadable" in out
    assert "series 1 image 3: DICOM pixel data is damaged" in out
    assert "stored 3 object(s): 1 structured report, 2 overlay image(s)" in out


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _RecordingHandler.seen.append(self.headers.get("Authorization"))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_bearer_token_from_the_environment(monkeypatch, capsys) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MRI_TUMOR_PACS_TOKEN", "tok-123")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        assert main(["pacs", "run", "--url", url]) == 0
    finally:
        server.shutdown()
    assert _RecordingHandler.seen and set(_RecordingHandler.seen) == {"Bearer tok-123"}
    assert "no MR study found" in capsys.readouterr().out


def test_watch_processes_new_studies_once_and_remembers_across_restarts(
        orthanc, tmp_path, predictor) -> None:
    server = pacs_client.PacsServer.connect(orthanc.dicomweb_url, USER, PASSWORD)
    state_path = tmp_path / "state.json"
    upload_study(orthanc, IMAGES[:2])

    def run_watch_until(condition, timeout: float = 60.0) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=watch, args=(server, predictor,
                                                      WatchState.load(state_path)),
                                  kwargs={"interval": 0.3, "stop": stop})
        thread.start()
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        thread.join(15)
        assert not thread.is_alive()

    def reports() -> int:
        return sum(len(series_by_modality(orthanc, uid).get("SR", []))
                   for uid in orthanc.study_uids())

    run_watch_until(lambda: reports() == 1)
    assert reports() == 1
    upload_study(orthanc, IMAGES[2:4])
    run_watch_until(lambda: reports() == 2)
    assert reports() == 2
    assert len(json.loads(state_path.read_text())["done"]) == 2
    count = orthanc.instance_count()
    run_watch_until(lambda: False, timeout=1.5)  # restarted: nothing new to do
    assert orthanc.instance_count() == count


def test_watch_state_backs_off_and_forgets_retries_once_done(tmp_path) -> None:
    from mri_tumor.pacs.results import ModelIdentity

    state = WatchState(tmp_path / "s.json")
    delays = [state.mark_failed("k", 100.0, 30.0, 100.0) for _ in range(4)]
    assert delays == [30.0, 60.0, 100.0, 100.0]
    assert not state.is_due("k", 150.0) and state.is_due("k", 200.0)
    model = ModelIdentity("default", "1", "abc")
    state.mark_done("k", model)
    state.save()
    again = WatchState.load(state.path)
    assert again.is_done("k", model) and again.retry == {}
    assert not again.is_done("k", ModelIdentity("default", "1", "other-weights"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable watch state file"):
        WatchState.load(tmp_path / "bad.json")


def test_watch_command_stops_cleanly_on_sigterm(orthanc, tmp_path) -> None:
    upload_study(orthanc, IMAGES[:1])
    env = {**os.environ, "MRI_TUMOR_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mri-tumor"), "pacs", "watch", "--url",
         orthanc.dicomweb_url, "--user", f"{USER}:{PASSWORD}", "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not list((tmp_path / "home").glob("pacs-watch-*")):
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "stored 2 object(s)" in out and "stopped; progress saved" in out
    assert "Traceback" not in err
    for secret in SECRETS:
        assert secret not in out + err


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--port", "11112", "--send-to", "pacs:4242"], "a destination is HOST:PORT:AE"),
    (["--port", "11112", "--send-to", "pacs:99999:ORTHANC"], "port must be a number"),
    (["--port", "0", "--send-to", "pacs:4242:ORTHANC"], "--port must be 1-65535"),
    (["--port", "11112", "--send-to", "pacs:4242:ORTHANC", "--ae-title", "A" * 17],
     "1 to 16 characters"),
])
def test_listen_usage_errors_are_one_line(arguments, expected, capsys) -> None:
    assert main(["pacs", "listen", *arguments]) == 2
    assert expected in one_line_error(capsys)


def test_dry_run_names_each_series_class(orthanc, capsys) -> None:
    upload_study(orthanc, IMAGES[:4], series_count=2)
    assert run_cli(orthanc, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "series 1 (2 slices): " in out and "series 2 (2 slices): " in out
    assert "100.0%" not in out  # probabilities as every front end shows them


def test_watch_retries_a_failing_study_after_a_delay(orthanc, predictor, tmp_path,
                                                     monkeypatch, caplog) -> None:
    server = pacs_client.PacsServer.connect(orthanc.dicomweb_url, USER, PASSWORD)
    upload_study(orthanc, IMAGES[:2])
    original, calls = pacs_client.PacsServer.retrieve, []

    def fail_once(self, uid, series):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise pacs_client.PacsError("study x series 1: the server answered HTTP 503")
        return original(self, uid, series)

    monkeypatch.setattr(pacs_client.PacsServer, "retrieve", fail_once)
    state = WatchState.load(tmp_path / "state.json")
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(server, predictor, state), kwargs={
        "interval": 0.2, "stop": stop, "retry_delay": 1.0})
    thread.start()
    deadline = time.monotonic() + 60
    while not state.done and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(15)
    assert len(state.done) == 1 and state.retry == {}
    assert len(calls) == 2 and calls[1] - calls[0] >= 1.0  # waited for the retry delay
    assert "HTTP 503; will retry in 1 s" in caplog.text


def test_report_of_the_types_model_names_type_and_sequence_per_image() -> None:
    files = make_mr_study(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[:3])
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    types = Predictor.load("types")
    analysed, objects, _ = results_for(types, datasets, scope=datasets[0].StudyInstanceUID)
    report = pydicom.dcmread(io.BytesIO(part10_bytes(objects[0])))  # as a PACS would hold it
    assert findings(report) == {item.source.SOPInstanceUID: item.result.label
                                for item in analysed}
    sequences = [code_value(item.ConceptCodeSequence[0]) for item in _items(report)
                 if item.ValueType == "CODE"
                 and item.ConceptNameCodeSequence[0].CodeValue == "MRSEQUENCE"]
    assert sequences == [item.result.sequence for item in analysed]
    assert set(sequences) <= set(types.card.sequence_names)


def _items(report: pydicom.Dataset) -> list[pydicom.Dataset]:
    found: list[pydicom.Dataset] = []

    def walk(items) -> None:
        for item in items:
            found.append(item)
            walk(getattr(item, "ContentSequence", []))

    walk(report.ContentSequence)
    return found


def test_results_are_built_for_images_without_patient_and_study_attributes(tmp_path) -> None:
    """Some archives leave Type 2 attributes out; the SR and SC copy them, empty."""
    datasets = []
    for number, path in enumerate(IMAGES[:2], 1):
        bare = pydicom.dcmread(io.BytesIO(dicom_bytes(
            np.asarray(Image.open(path).convert("L")), bits=8, instance=number)))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            delattr(bare, keyword)
        datasets.append(bare)
    _, objects, _ = results_for(Predictor.load(), datasets, scope="1.2.3")
    assert [o.Modality for o in objects] == ["SR", "OT", "OT"]
    assert not objects[0].PatientName and "PatientName" in objects[0] and "PatientSex" in objects[1]
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(part10_bytes(objects[1]), tmp_path) == []


@pytest.mark.parametrize(("url", "status", "hinted"), [
    ("http://localhost:8042", 404, True), ("http://localhost:8042", 400, True),  # Orthanc: 400
    ("http://localhost:8042/dicom-web", 404, False), ("http://localhost:8042", 500, False)])
def test_a_url_without_dicom_web_that_fails_says_where_the_root_usually_is(
        url: str, status: int, hinted: bool) -> None:
    import requests

    response = requests.Response()
    response.status_code = status

    def not_found() -> None:
        raise requests.HTTPError(response=response)

    server = pacs_client.PacsServer(client=None, url=url)
    with pytest.raises(pacs_client.PacsError) as error:
        server._call("searching for MR studies", not_found)
    message = str(error.value)
    assert message.startswith(f"searching for MR studies: the server answered HTTP {status}")
    assert ("usually ends in /dicom-web" in message) == hinted
    assert "\n" not in message
