"""``pacs listen``: a storage SCP that classifies what it receives and sends the results on,
tested with a real Orthanc server as the sender and the destination."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, StoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tests.dicom_factory import PATIENT, STUDY_IDENTIFIERS, make_mr_study
from tests.orthanc import OrthancServer, free_ports

from mri_tumor import Predictor
from mri_tumor.inference import OK
from mri_tumor.pacs.client import PacsError, study_key
from mri_tumor.pacs.listen import (
    NOT_AUTHORISED,
    Callers,
    Destination,
    SeriesCollector,
    is_loopback,
    listen,
    process_series,
    store,
)

LISTENER_AET = "MRITUMOR"
SECRETS = [*PATIENT.values(), *STUDY_IDENTIFIERS.values(), "Doe", "Sensitive"]


# -- Destination and SeriesCollector ----------------------------------------------------------
def test_destination_parse() -> None:
    assert Destination.parse("127.0.0.1:4242:ORTHANC") == Destination("127.0.0.1", 4242,
                                                                      "ORTHANC")
    assert Destination.parse("::1:104:STORE SCP") == Destination("::1", 104, "STORE SCP")
    for bad in ["", "127.0.0.1:4242", ":4242:AE", "host:port:AE", "host:0:AE", "host:65536:AE",
                "host:-1:AE", "host:4242:", "host:4242:   ", "host:4242:SEVENTEEN_CHARS_AE",
                "host:4242:A\\B", "host:4242:A\nB"]:
        with pytest.raises(ValueError) as error:
            Destination.parse(bad)
        assert "\n" not in str(error.value), bad


def _dataset(study: str, series: str) -> Dataset:
    dataset = Dataset()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    return dataset


def test_collector_pops_series_once_quiet() -> None:
    collector = SeriesCollector()
    collector.add(_dataset("1", "1.1"), now=10.0)
    collector.add(_dataset("1", "1.2"), now=10.0)
    collector.add(_dataset("1", "1.1"), now=13.0)  # series 1.1 is busy again
    collector.add(_dataset("2", "1.1"), now=14.0)  # same series UID, other study: apart
    assert len(collector) == 3
    assert collector.quiet(now=14.5, seconds=5) == []
    [quiet] = collector.quiet(now=15.0, seconds=5)
    assert [d.SeriesInstanceUID for d in quiet] == ["1.2"]
    [quiet] = collector.quiet(now=18.0, seconds=5)
    assert [(d.StudyInstanceUID, d.SeriesInstanceUID) for d in quiet] == [("1", "1.1")] * 2
    assert len(collector) == 1
    assert [[d.StudyInstanceUID for d in s] for s in collector.drain()] == [["2"]]
    assert len(collector) == 0 and collector.drain() == []


# -- the listener between two Orthanc roles ---------------------------------------------------
@dataclass
class Listener:
    """``listen`` running in a thread: its port, the lines it gave and how to stop it."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def wait_for_lines(self, count: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            assert not self.errors, self.errors
            time.sleep(0.2)
        assert len(self.lines) >= count, f"{self.lines} after {timeout} s"
        return self.lines

    def close(self) -> float:
        """Stop the listener; the seconds it took to return."""
        started = time.monotonic()
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the listener did not stop within 15 s"
        assert not self.errors, self.errors
        return time.monotonic() - started


@pytest.fixture
def start_listener(predictor: Predictor) -> Iterator[Callable[[Destination], Listener]]:
    """Starts ``listen`` on a free port in a thread (quiet after 1 s); stopped afterwards."""
    started: list[Listener] = []

    def start(destination: Destination) -> Listener:
        listener = Listener(free_ports(1)[0])

        def run() -> None:
            try:
                listen(predictor, listener.port, LISTENER_AET, destination,
                       stop=listener.stop, quiet_seconds=1, bind_address="127.0.0.1",
                       on_line=listener.lines.append)
            except BaseException as error:
                listener.errors.append(error)

        listener.thread = threading.Thread(target=run, name="listener", daemon=True)
        listener.thread.start()
        started.append(listener)
        _wait_for_port(listener)
        return listener

    yield start
    for listener in started:
        listener.stop.set()
        if listener.thread is not None:
            listener.thread.join(timeout=15)


def _wait_for_port(listener: Listener, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert not listener.errors, listener.errors
        try:
            with socket.create_connection(("127.0.0.1", listener.port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the listener did not open port {listener.port}")


def _connect(orthanc: OrthancServer, start_listener: Callable[[Destination], Listener]
             ) -> Listener:
    """A listener sending to ``orthanc``, declared there as modality "listener"."""
    listener = start_listener(Destination("127.0.0.1", orthanc.dicom_port, orthanc.aet))
    orthanc.add_modality("listener", LISTENER_AET, "127.0.0.1", listener.port)
    orthanc.request("POST", "/modalities/listener/echo", json={})  # the listener answers C-ECHO
    return listener


def _wait_for_instances(orthanc: OrthancServer, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while orthanc.instance_count() < count and time.monotonic() < deadline:
        time.sleep(0.5)
    assert orthanc.instance_count() == count


def _content_items(items: Any) -> Iterator[Dataset]:
    for item in items or []:
        yield item
        yield from _content_items(item.get("ContentSequence"))


def _code(item: Dataset, sequence: str) -> tuple[str, str]:
    code = item.get(sequence)[0]
    return code.CodeValue, code.CodingSchemeDesignator


def report_findings(report: Dataset) -> dict[str, str]:
    """Per-image findings of a report: source SOPInstanceUID -> class code value, read from
    each measurement group's "Finding" (121071, DCM) and its one source image."""
    findings = {}
    for group in _content_items(report.ContentSequence):
        if group.ValueType != "CONTAINER" or _code(group, "ConceptNameCodeSequence") != (
                "125007", "DCM"):  # Measurement Group
            continue
        children = list(group.get("ContentSequence", []))
        images = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in children
                  if c.ValueType == "IMAGE"]
        classes = [c.ConceptCodeSequence[0].CodeValue for c in children
                   if c.ValueType == "CODE"
                   and _code(c, "ConceptNameCodeSequence") == ("121071", "DCM")]
        if len(images) == 1 and classes:  # a series summary group references every image
            findings[images[0]] = classes[0]
    return findings


def test_listener_classifies_what_orthanc_sends_and_stores_results_back(
        orthanc: OrthancServer, start_listener: Callable[[Destination], Listener],
        predictor: Predictor, fixture_paths: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mri_tumor")
    images = [fixture_paths[i] for i in (0, 5, 10, 15)]  # one per class
    files = make_mr_study(images, series_count=2)
    uploaded = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID: data for data in files}
    for data in files:
        orthanc.upload(data)
    [study_uid] = orthanc.study_uids()
    expected = {uid: result.label if result.status == OK else None
                for uid, result in zip(uploaded, predictor.predict(list(uploaded.values())),
                                       strict=True)}
    assert all(expected.values()), expected  # every fixture slice is classified

    listener = _connect(orthanc, start_listener)
    orthanc.send_to_modality("listener", study_uid)
    _wait_for_instances(orthanc, len(files) + 2 + len(files))  # 2 reports, 1 overlay per image

    stored = [pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"])))
              for series in orthanc.series_of_study(study_uid)
              for instance in orthanc.instances_of_series(series["ID"])]
    reports = [ds for ds in stored if ds.SOPClassUID == ComprehensiveSRStorage]
    overlays = [ds for ds in stored if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert len(reports) == 2 and {ds.Modality for ds in reports} == {"SR"}
    assert len(overlays) == len(files)
    findings: dict[str, str] = {}
    for report in reports:
        assert report.VerificationFlag == "UNVERIFIED"
        findings.update(report_findings(report))
    assert findings == expected
    assert {ref.ReferencedSOPInstanceUID for ds in overlays
            for ref in ds.SourceImageSequence} == set(findings)

    lines = listener.wait_for_lines(2)
    key = study_key(study_uid)
    assert sorted(lines) == [
        f"study {key} series {n}: 2 MR image(s), 2 classified; stored 1 structured report "
        f"and 2 overlay image(s) at 127.0.0.1:{orthanc.dicom_port} (ORTHANC), marked "
        "unverified" for n in (1, 2)], lines
    assert listener.close() < 15
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert any(record.name == "mri_tumor.pacs.listen" for record in caplog.records)
    for secret in [*SECRETS, study_uid, *uploaded]:
        assert secret not in logged and secret not in "\n".join(lines)


def test_listener_skips_a_ct_series_and_stores_nothing(
        orthanc: OrthancServer, start_listener: Callable[[Destination], Listener],
        fixture_paths: list[Path]) -> None:
    files = make_mr_study(fixture_paths[:1], ct_slice=True)
    for data in files:
        orthanc.upload(data)
    [study_uid] = orthanc.study_uids()
    [_, ct] = orthanc.series_of_study(study_uid)
    assert ct["Modality"] == "CT"
    listener = _connect(orthanc, start_listener)
    orthanc.request("POST", "/modalities/listener/store", content=ct["ID"])
    [line] = listener.wait_for_lines(1)
    assert line == (f"study {study_key(study_uid)} series 2: skipped modality CT "
                    "(computed tomography), not MR; nothing stored")
    listener.close()
    assert orthanc.instance_count() == len(files)


def test_failing_series_is_logged_and_the_rest_still_processed(
        orthanc: OrthancServer, start_listener: Callable[[Destination], Listener],
        fixture_paths: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """Results for a destination where nothing listens: the error is one log line, and the
    listener still receives and answers the next series (a CT one)."""
    dead_port = free_ports(1)[0]
    listener = start_listener(Destination("127.0.0.1", dead_port, "NOBODY"))
    orthanc.add_modality("listener", LISTENER_AET, "127.0.0.1", listener.port)
    files = make_mr_study(fixture_paths[:1], ct_slice=True)
    for data in files:
        orthanc.upload(data)
    [study_uid] = orthanc.study_uids()
    mr, ct = orthanc.series_of_study(study_uid)
    orthanc.request("POST", "/modalities/listener/store", content=mr["ID"])
    deadline = time.monotonic() + 60
    errors: list[logging.LogRecord] = []
    while not errors:
        assert time.monotonic() < deadline, "no error logged"
        time.sleep(0.2)
        errors = [r for r in caplog.records
                  if r.name == "mri_tumor.pacs.listen" and r.levelno == logging.ERROR]
    [error] = errors
    message = error.getMessage()
    assert message.startswith(f"study {study_key(study_uid)} series 1: sending results to "
                              f"127.0.0.1:{dead_port}") and "\n" not in message
    assert not any(secret in message for secret in [*SECRETS, study_uid])
    assert listener.lines == []
    orthanc.request("POST", "/modalities/listener/store", content=ct["ID"])
    assert "skipped modality CT" in listener.wait_for_lines(1)[0]
    listener.close()


def test_series_still_held_at_stop_are_processed(
        orthanc: OrthancServer, predictor: Predictor, fixture_paths: list[Path]) -> None:
    """Stop right after receiving: what was received is still classified and sent on."""
    lines: list[str] = []
    stop = threading.Event()
    port = free_ports(1)[0]
    destination = Destination("127.0.0.1", orthanc.dicom_port, orthanc.aet)
    thread = threading.Thread(target=listen, args=(predictor, port, LISTENER_AET, destination),
                              kwargs={"stop": stop, "quiet_seconds": 3600,
                                      "bind_address": "127.0.0.1", "on_line": lines.append},
                              daemon=True)
    thread.start()
    orthanc.add_modality("listener", LISTENER_AET, "127.0.0.1", port)
    files = make_mr_study(fixture_paths[:1])
    orthanc.upload(files[0])
    [study_uid] = orthanc.study_uids()
    deadline = time.monotonic() + 10
    while True:  # until the listener is up
        try:
            orthanc.send_to_modality("listener", study_uid)
            break
        except RuntimeError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert lines == []  # quiet for an hour: nothing processed yet
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(lines) == 1 and "1 MR image(s), 1 classified; stored" in lines[0], lines
    assert orthanc.instance_count() == 3  # the image, its report and its overlay


def test_process_series_names_an_unreachable_destination(
        predictor: Predictor, fixture_paths: list[Path]) -> None:
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in make_mr_study(fixture_paths[:1])]
    port = free_ports(1)[0]
    with pytest.raises(PacsError) as error:
        process_series(predictor, datasets, Destination("127.0.0.1", port, "NOBODY"),
                       LISTENER_AET)
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "NOBODY" in message and "\n" not in message
    assert not any(secret in message for secret in SECRETS)


@pytest.fixture
def scp() -> Iterator[Callable[..., Destination]]:
    """Starts a pynetdicom storage SCP as a destination that refuses in one way or another."""
    servers: list[Any] = []

    def start(status: int = 0x0000, contexts: Any = StoragePresentationContexts,
              calling_aets: list[str] | None = None) -> Destination:
        ae = AE(ae_title="STORESCP")
        ae.supported_contexts = contexts
        ae.require_calling_aet = calling_aets or []
        servers.append(ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, lambda _: status)]))
        return Destination("127.0.0.1", servers[-1].server_address[1], "STORESCP")

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(("options", "problem"), [
    ({}, None),
    ({"status": 0xB000}, None),  # a warning (elements coerced): stored
    ({"status": 0xA700}, "an object was not stored (status 0xA700)"),
    ({"calling_aets": ["SOMEONE"]}, "the association was rejected"),
    ({"contexts": [build_context(Verification)]}, "the association was aborted"),
], ids=["success", "warning", "out-of-resources", "unknown-caller", "no-storage"])
def test_store_fails_as_one_line(scp: Callable[..., Destination], fixture_paths: list[Path],
                                 options: dict[str, Any], problem: str | None) -> None:
    destination = scp(**options)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in make_mr_study(fixture_paths[:2])]
    if problem is None:
        assert store(datasets, destination, LISTENER_AET) == 2
        return
    with pytest.raises(PacsError) as error:
        store(datasets, destination, LISTENER_AET)
    assert str(error.value).startswith(f"sending results to 127.0.0.1:{destination.port} "
                                       f"(STORESCP) as {LISTENER_AET}: {problem}")
    assert "\n" not in str(error.value)


def test_port_in_use_is_a_pacs_error(predictor: Predictor) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stop = threading.Event()
        stop.set()  # were the port free, listen would return at once instead of raising
        with pytest.raises(PacsError, match=f"^port {port} is already in use"):
            listen(predictor, port, LISTENER_AET, Destination("127.0.0.1", 4242, "X"),
                   stop=stop, bind_address="127.0.0.1")


# -- who may send: calling AE titles, addresses, the bind address ----------------------------
def _accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _echo_status(port: int, calling_ae: str) -> int | None:
    """C-ECHO to the listener as ``calling_ae``: the response status, None when rejected."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=LISTENER_AET)
    if not assoc.is_established:
        assert assoc.is_rejected
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


@pytest.mark.parametrize(("callers", "expected"), [
    (Callers(), {"GOOD": 0x0000, "STRANGER": 0x0000}),
    (Callers(("GOOD",)), {"GOOD": 0x0000, "STRANGER": None}),
    (Callers(("GOOD",), ("10.9.8.7",)), {"GOOD": NOT_AUTHORISED, "STRANGER": None}),
], ids=["anyone-local", "ae-allow-list", "address-allow-list"])
def test_the_listener_serves_only_allowed_callers_and_logs_the_others(
        predictor: Predictor, caplog: pytest.LogCaptureFixture, callers: Callers,
        expected: dict[str, int | None]) -> None:
    port, stop = free_ports(1)[0], threading.Event()
    thread = threading.Thread(target=listen, args=(predictor, port, LISTENER_AET,
                                                   Destination("127.0.0.1", 4242, "X")),
                              kwargs={"stop": stop, "callers": callers}, daemon=True)
    caplog.set_level(logging.WARNING, logger="mri_tumor.pacs.listen")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not _accepts_connections(port):
            assert time.monotonic() < deadline, "the listener did not start"
            time.sleep(0.1)
        assert {title: _echo_status(port, title) for title in expected} == expected
    finally:
        stop.set()
        thread.join(15)
    refused = [r.getMessage() for r in caplog.records]
    if expected["STRANGER"] is None:
        assert any("'STRANGER'" in line and "not allowed" in line for line in refused)
    if expected["GOOD"] == NOT_AUTHORISED:
        assert any("address is not allowed" in line for line in refused)
    if callers == Callers():
        assert refused == []


def test_a_listener_on_another_address_must_name_its_callers(capsys) -> None:
    from mri_tumor.cli import main

    assert main(["pacs", "listen", "--port", "11112", "--send-to", "pacs:4242:ORTHANC",
                 "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 lets other machines connect" in err and "--allow-ae" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["pacs", "listen", "--port", "11112", "--send-to", "pacs:4242:ORTHANC",
                 "--allow-address", "not-an-ip"]) == 2
    assert "--allow-address 'not-an-ip': not an IP address" in capsys.readouterr().err


def test_loopback_addresses_are_this_machine_only() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.8.9.1", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "10.0.0.1", "::", "pacs.example"))
