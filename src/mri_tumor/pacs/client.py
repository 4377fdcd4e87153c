"""A DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) as the PACS steps need it, over
``dicomweb-client``, with every failure turned into one line that names no patient.

    server = PacsServer.connect("http://pacs:8042/dicom-web", user="alice", password="...")
    for study in server.mr_studies(): ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset

Result = TypeVar("Result")

# Seconds to wait for the server to connect and to answer one request.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
# Matches asked for per QIDO-RS request.
QIDO_PAGE = 200


class PacsError(RuntimeError):
    """A failure talking to the server, with a one-line message and no patient data."""


class StudyGoneError(PacsError):
    """The study (or a series of it) is not on the server (any more)."""


def study_key(study_uid: str) -> str:
    """How a study is named in logs and state files: the first 12 hex digits of its UID's
    SHA-256 (UIDs can identify a patient's examination, so they are never printed)."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SeriesInfo:
    """A series as QIDO-RS lists it."""

    uid: str
    modality: str
    number: str
    instances: int | None


def _tag(item: dict[str, Any], tag: str) -> str:
    """A DICOM JSON attribute's first value as text, "" when absent."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


STUDY_UID, SERIES_UID, MODALITY = "0020000D", "0020000E", "00080060"
SERIES_NUMBER, INSTANCE_COUNT = "00200011", "00201209"


class PacsServer:
    """The few DICOMweb transactions the PACS steps use, each failing as a ``PacsError``."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.url = url

    @classmethod
    def connect(cls, url: str, user: str | None = None, password: str | None = None,
                token: str | None = None) -> PacsServer:
        """A client for the DICOMweb root ``url`` with basic (``user``/``password``) or bearer
        (``token``) authentication; nothing is sent until the first request."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise PacsError(f"a DICOMweb URL starts with http:// or https:// (got {url[:80]!r})")
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            session.auth = (user, password or "")
        client = DICOMwebClient(url.rstrip("/"), session=session,
                                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        return cls(client, url)

    def _call(self, what: str, call: Callable[[], Result], missing_means_gone: bool = False
              ) -> Result:
        """Run one transaction; every failure becomes a one-line ``PacsError``."""
        import requests

        try:
            return call()
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 401:
                raise PacsError(f"{what}: the server at {self.url} refused the credentials "
                                "(HTTP 401); check the user name and password, or the "
                                "token") from None
            if status == 403:
                raise PacsError(f"{what}: the server at {self.url} does not allow this "
                                "(HTTP 403)") from None
            if status == 404 and missing_means_gone:
                raise StudyGoneError(f"{what}: not found on the server (HTTP 404); it was "
                                     "deleted or moved") from None
            hint = ""
            if status in (400, 404) and "dicom-web" not in self.url and "dicomweb" not in self.url:
                hint = ("; a DICOMweb root usually ends in /dicom-web (Orthanc: "
                        "http://HOST:8042/dicom-web)")
            raise PacsError(f"{what}: the server answered HTTP {status}{hint}") from None
        except requests.ConnectionError:
            raise PacsError(f"{what}: cannot connect to {self.url} (is the server running and "
                            "the URL right?)") from None
        except requests.Timeout:
            raise PacsError(f"{what}: {self.url} did not answer in time") from None
        except requests.RequestException as error:
            raise PacsError(f"{what}: request failed ({type(error).__name__})") from None
        except (ValueError, KeyError, TypeError, EOFError) as error:
            # dicomweb-client parses JSON and multipart bodies; a damaged answer lands here.
            raise PacsError(f"{what}: the server's answer could not be read "
                            f"({type(error).__name__})") from None

    def _search_all(self, what: str, search: Callable[..., list[dict[str, Any]]],
                    key: str, **query: Any) -> list[dict[str, Any]]:
        """Every match of a QIDO-RS search, page by page. Stops at a short page or at one
        that brings nothing new: some servers (Orthanc's DICOMweb plugin 1.7) ignore
        ``offset`` and answer every page with the same first matches."""
        found: dict[str, dict[str, Any]] = {}
        while True:
            page = self._call(what, lambda: search(limit=QIDO_PAGE, offset=len(found), **query),
                              missing_means_gone=True)
            new = {_tag(item, key): item for item in page if _tag(item, key) not in found}
            found.update(new)
            if len(page) < QIDO_PAGE or not new:
                return [item for uid, item in found.items() if uid]

    def mr_studies(self) -> list[str]:
        """Study Instance UIDs of every study holding MR images (QIDO-RS)."""
        found = self._search_all("searching for MR studies", self.client.search_for_studies,
                                 STUDY_UID, search_filters={"ModalitiesInStudy": "MR"},
                                 fields=["StudyInstanceUID"])
        return [_tag(item, STUDY_UID) for item in found]

    def series(self, study_uid: str) -> list[SeriesInfo]:
        """The study's series (QIDO-RS); ``StudyGoneError`` when the study is not there."""
        key = study_key(study_uid)
        found = self._search_all(
            f"study {key}", self.client.search_for_series, SERIES_UID,
            study_instance_uid=study_uid,
            fields=["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"])
        if not found:
            raise StudyGoneError(f"study {key}: not found on the server")
        series = []
        for item in found:
            count = _tag(item, INSTANCE_COUNT)
            series.append(SeriesInfo(_tag(item, SERIES_UID), _tag(item, MODALITY).upper(),
                                     _tag(item, SERIES_NUMBER) or "?",
                                     int(count) if count.isdigit() else None))
        return series

    def retrieve(self, study_uid: str, series: SeriesInfo) -> list[Dataset]:
        """Every instance of one series (WADO-RS), as pydicom datasets."""
        what = f"study {study_key(study_uid)} series {series.number}"
        return self._call(what, lambda: self.client.retrieve_series(study_uid, series.uid),
                          missing_means_gone=True)

    def store(self, study_uid: str, datasets: Sequence[Dataset]) -> int:
        """Store ``datasets`` into the study (STOW-RS); the number the server accepted.
        Raises ``PacsError`` when it refused any."""
        what = f"storing results in study {study_key(study_uid)}"
        answer = self._call(what, lambda: self.client.store_instances(list(datasets),
                                                                      study_uid))
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            raise PacsError(f"{what}: the server refused {len(failed)} of {len(datasets)} "
                            "objects")
        return len(answer.get("ReferencedSOPSequence") or [])
