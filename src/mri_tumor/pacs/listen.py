"""A DICOM storage SCP (``pacs listen``): receive images by C-STORE, classify each series once
it has been quiet for a few seconds, and C-STORE the results (one Structured Report and the
Secondary Capture overlays) to a destination.

    stop = threading.Event()
    listen(predictor, 11112, "MRITUMOR", Destination.parse("pacs:4242:ORTHANC"), stop=stop)

Nothing here prints: steps are logged on ``mri_tumor.pacs.listen`` by study key (a hash) and
series number, never with a UID or anything from the patient module.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from mri_tumor.inference import OK, Predictor
from mri_tumor.pacs.client import PacsError, study_key
from mri_tumor.pacs.study import Outlining, results_for, skip_reason

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the listener looks for quiet series
SENDER_WAIT_SECONDS = 10.0  # on stop: how long associations still open may go on


def check_ae_title(title: str) -> str:
    """``title`` when it is a valid AE title (1-16 characters, no backslash or control
    characters, not only spaces); raises ValueError otherwise."""
    if not 1 <= len(title) <= 16 or not title.strip():
        raise ValueError(f"an AE title has 1 to 16 characters (got {len(title)})")
    if "\\" in title or any(ord(char) < 32 or ord(char) == 127 for char in title):
        raise ValueError("an AE title may not hold a backslash or control characters")
    return title


@dataclass(frozen=True)
class Destination:
    """Where results are C-STOREd: a DICOM node's host, port and AE title."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AE`` (the host may itself hold colons, as IPv6 addresses do)."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"a destination is HOST:PORT:AE (got {text[:80]!r})")
        host, port, title = parts
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"the port must be a number from 1 to 65535 (got {port[:20]!r})")
        return cls(host, int(port), check_ae_title(title))

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.ae_title})"


class SeriesCollector:
    """Received datasets by (StudyInstanceUID, SeriesInstanceUID), with the time of each
    series' last arrival (``time.monotonic()``). Safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], tuple[float, list[Dataset]]] = {}

    def add(self, dataset: Dataset, now: float | None = None) -> None:
        """Hold ``dataset`` in its series, which was last added to at ``now``."""
        key = (str(dataset.get("StudyInstanceUID", "")),
               str(dataset.get("SeriesInstanceUID", "")))
        with self._lock:
            _, datasets = self._series.get(key, (0.0, []))
            datasets.append(dataset)
            self._series[key] = (time.monotonic() if now is None else now, datasets)

    def quiet(self, now: float, seconds: float) -> list[list[Dataset]]:
        """Remove and return the series nothing was added to for at least ``seconds``."""
        with self._lock:
            keys = [key for key, (last, _) in self._series.items() if now - last >= seconds]
            return [self._series.pop(key)[1] for key in keys]

    def drain(self) -> list[list[Dataset]]:
        """Remove and return every series."""
        with self._lock:
            series = [datasets for _, datasets in self._series.values()]
            self._series.clear()
            return series

    def __len__(self) -> int:
        with self._lock:
            return len(self._series)


def series_label(datasets: list[Dataset]) -> str:
    """How a series is named in messages: its study's key and its SeriesNumber."""
    first = datasets[0]
    number = first.get("SeriesNumber", "") or "?"
    return f"study {study_key(str(first.get('StudyInstanceUID', '')))} series {number}"


def process_series(predictor: Predictor, datasets: list[Dataset], destination: Destination,
                   calling_ae: str, outlining: Outlining | None = None) -> str:
    """Classify one received series and C-STORE its report and overlays to ``destination``
    (one association, as ``calling_ae``); returns a one-line summary. A series that is not MR
    is skipped. Raises ``PacsError`` when the destination cannot be reached or refuses any
    object."""
    label = series_label(datasets)
    reason = skip_reason(str(datasets[0].get("Modality", "")).upper())
    if reason:
        return f"{label}: skipped {reason}; nothing stored"
    analysed, objects, outlines = results_for(predictor, datasets,
                                              scope=str(datasets[0].SeriesInstanceUID),
                                              outlining=outlining)
    classified = sum(item.result.status == OK for item in analysed)
    head = f"{label}: {len(analysed)} MR image(s), {classified} classified"
    outlined = "".join(f"; {outline.message}" for outline in outlines)
    if not objects:
        return f"{head}{outlined}; nothing to store"
    segmentations = sum(o.segmentation is not None for o in outlines)
    stored = store(objects, destination, calling_ae)
    also = f" and {segmentations} segmentation(s)" if segmentations else ""
    return (f"{head}{outlined}; stored 1 structured report and {stored - 1 - segmentations} "
            f"overlay image(s){also} at {destination}, marked unverified")


def store(objects: list[Dataset], destination: Destination, calling_ae: str) -> int:
    """C-STORE ``objects`` to ``destination`` in one association; how many were stored."""
    where = f"sending results to {destination} as {calling_ae}"
    ae = AE(ae_title=calling_ae)
    for pair in dict.fromkeys(_context(obj) for obj in objects):
        ae.add_requested_context(*pair)
    connected: list[bool] = []  # whether the TCP connection opened (else: aborted too)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, lambda _: connected.append(True))])
    if not assoc.is_established:
        why = ("cannot connect (is it running, and the host and port right?)" if not connected
               else "the association was rejected (check the AE titles on both sides)"
               if assoc.is_rejected else "the association was aborted (by the destination, or "
               "because it accepts none of the objects' SOP classes)")
        raise PacsError(f"{where}: {why}")
    try:
        for obj in objects:
            try:
                status = assoc.send_c_store(obj)
            except ValueError:  # no accepted presentation context for this SOP class
                raise PacsError(f"{where}: the destination does not accept "
                                f"{UID(obj.SOPClassUID).name}") from None
            code = int(status.get("Status", -1)) if status else None
            if code is None or code_to_category(code) not in ("Success", "Warning"):
                answer = "no answer" if code is None else f"status 0x{code:04X}"
                raise PacsError(f"{where}: an object was not stored ({answer})")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(objects)


def _context(obj: Dataset) -> tuple[str, str]:
    """The (SOP class, transfer syntax) ``obj`` is sent with: its file meta's, else explicit
    VR little endian (set in its file meta, which ``send_c_store`` reads)."""
    if getattr(obj, "file_meta", None) is None:
        obj.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in obj.file_meta:
        obj.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return str(obj.SOPClassUID), str(obj.file_meta.TransferSyntaxUID)


@dataclass(frozen=True)
class Callers:
    """Who may send to the listener: calling AE titles and source addresses (empty: any).
    Associations from another AE title are rejected; requests from another address are
    refused with status 0x0124 (not authorised). Both are logged, with nothing of the
    images."""

    ae_titles: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()

    def allows_address(self, address: str) -> bool:
        """Whether requests from ``address`` are served."""
        return not self.addresses or address in self.addresses

    def describe(self) -> str:
        """Who may connect, in words (for the start-up line and the log)."""
        titles = ", ".join(self.ae_titles) if self.ae_titles else "any calling AE title"
        where = f"from {', '.join(self.addresses)}" if self.addresses else "from any address"
        return f"{titles} {where}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


NOT_AUTHORISED = 0x0124  # DIMSE status "Refused: Not authorized"


def listen(predictor: Predictor, port: int, ae_title: str, destination: Destination, *,
           stop: threading.Event, quiet_seconds: float = 5.0, bind_address: str = "127.0.0.1",
           callers: Callers | None = None, on_line: Callable[[str], None] | None = None,
           outlining: Outlining | None = None) -> None:
    """Receive images by C-STORE (and answer C-ECHO) on ``bind_address:port`` as
    ``ae_title`` until ``stop`` is set, from ``callers`` only (default: anyone who can reach
    the address, which by default is this machine); classify each series ``quiet_seconds``
    after its last image and send the results to ``destination``. Each series' summary goes
    to ``on_line`` (to the log when None); a failing series is logged and the listener goes
    on. On stop, the series still held are processed before returning. Raises ``PacsError``
    when the port cannot be listened on, ValueError for a bad AE title."""
    check_ae_title(ae_title)
    callers = callers or Callers()
    for title in callers.ae_titles:
        check_ae_title(title)
    collector = SeriesCollector()

    def allowed(event: evt.Event, request: str) -> bool:
        address = event.assoc.requestor.address
        if callers.allows_address(address):
            return True
        logger.warning("refused a %s from %s (%s): the address is not allowed", request,
                       address, event.assoc.requestor.ae_title)
        return False

    def on_store(event: evt.Event) -> int:
        if not allowed(event, "C-STORE"):
            return NOT_AUTHORISED
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        collector.add(dataset)
        return 0x0000

    def on_echo(event: evt.Event) -> int:
        return 0x0000 if allowed(event, "C-ECHO") else NOT_AUTHORISED

    def on_rejected(event: evt.Event) -> None:
        logger.warning("rejected an association from %s as %r: the calling AE title is not "
                       "allowed", event.assoc.requestor.address,
                       event.assoc.requestor.ae_title)

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(callers.ae_titles)
    handlers: list[Any] = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo),
                (evt.EVT_REJECTED, on_rejected)]
    try:
        server = ae.start_server((bind_address, port), block=False, evt_handlers=handlers)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PacsError(f"port {port} is already in use (another listener or program?); "
                            "choose another port") from None
        raise PacsError(f"cannot listen on {bind_address}:{port} "
                        f"({error.strerror or type(error).__name__})") from None
    logger.info("listening on %s:%d as %s for %s; results go to %s", bind_address, port,
                ae_title, callers.describe(), destination)
    emit = on_line or logger.info

    def process(batches: list[list[Dataset]]) -> None:
        for datasets in batches:
            try:
                emit(process_series(predictor, datasets, destination, ae_title, outlining))
            except PacsError as error:
                logger.error("%s: %s", series_label(datasets), error)
            except Exception as error:  # one bad series must not stop the listener
                logger.error("%s: failed (%s)", series_label(datasets), type(error).__name__)

    assert server is not None  # non-blocking: start_server returns the running server
    try:
        while not stop.wait(POLL_SECONDS):
            process(collector.quiet(time.monotonic(), quiet_seconds))
    finally:
        server.shutdown()
        # Let senders finish the associations they hold; a bare TCP connection (a port check)
        # would otherwise keep its thread waiting for the ACSE timeout.
        deadline = time.monotonic() + SENDER_WAIT_SECONDS
        while (time.monotonic() < deadline
               and any(assoc.is_established for assoc in ae.active_associations)):
            time.sleep(0.1)
        for assoc in ae.active_associations:
            assoc.abort()
    logger.info("stopped listening; processing the %d series still held", len(collector))
    process(collector.drain())
