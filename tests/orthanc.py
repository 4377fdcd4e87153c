"""A real Orthanc DICOM server (with its DICOMweb plugin) for end-to-end PACS tests.

Plain helpers, no pytest: ``conftest.py`` wraps ``OrthancServer`` in the ``orthanc`` fixture.
The server runs from a temporary folder on free ports, with HTTP basic authentication
(``USER``/``PASSWORD``) and REST access from 127.0.0.1 only.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER = "alice"
PASSWORD = "secret"
AET = "ORTHANC"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class OrthancServer:
    """One Orthanc process, its ports and an authenticated REST client (``client``).

    Start it with ``OrthancServer.start(folder)``; ``stop()`` or a ``with`` block ends it.
    """

    aet = AET
    auth = (USER, PASSWORD)

    def __init__(self, directory: Path, name: str, http_port: int, dicom_port: int,
                 process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.name = name
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.process = process
        self.log = directory / "orthanc.log"
        self.url = f"http://127.0.0.1:{http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.client = httpx.Client(base_url=self.url, auth=self.auth, timeout=30)

    @classmethod
    def start(cls, directory: Path, *,
              modalities: dict[str, tuple[str, str, int]] | None = None,
              timeout: float = 30) -> OrthancServer:
        """Write a configuration into ``directory`` (storage in ``directory/db``), launch
        Orthanc and wait until its REST API answers. ``modalities`` maps a name to the
        (AET, host, port) of a DICOM listener Orthanc may C-STORE to."""
        directory.mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = free_ports(2)
        storage = directory / "db"
        name = f"TEST-{secrets.token_hex(4)}"  # tells this server from any on a reused port
        config = {
            "Name": name, "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomModalities": {key: list(peer) for key, peer in (modalities or {}).items()},
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        config_path = directory / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with (directory / "orthanc.log").open("wb") as log:
            process = subprocess.Popen([str(ORTHANC), str(config_path)], cwd=directory,
                                       stdout=log, stderr=subprocess.STDOUT)
        server = cls(directory, name, http_port, dicom_port, process)
        try:
            server._wait_until_up(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                answer = self.client.get("/system", timeout=2)
                if answer.status_code == 200 and answer.json().get("Name") == self.name:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"Orthanc did not come up on port {self.http_port} "
                           f"(exit code {self.process.poll()}); log tail:\n{tail}")

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after 10 s) and close the client."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # REST helpers -------------------------------------------------------------------------

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """An authenticated REST call; raises RuntimeError with the answer unless 200."""
        response = self.client.request(method, path, **options)
        if response.status_code != 200:
            raise RuntimeError(f"Orthanc {method} {path}: HTTP {response.status_code} "
                               f"{response.text}")
        return response

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM Part 10 file (POST /instances); Orthanc's answer (ID, Status...)."""
        return self.request("POST", "/instances", content=data,
                            headers={"Content-Type": "application/dicom"}).json()

    def studies(self) -> list[str]:
        """The Orthanc IDs of the stored studies."""
        return self.request("GET", "/studies").json()

    def study_uids(self) -> list[str]:
        """The StudyInstanceUIDs of the stored studies."""
        studies = self.request("GET", "/studies", params={"expand": ""}).json()
        return [study["MainDicomTags"]["StudyInstanceUID"] for study in studies]

    def study_id(self, study_uid: str) -> str:
        """The Orthanc ID of the study with this StudyInstanceUID (LookupError if absent)."""
        matches = self.request("POST", "/tools/lookup", content=study_uid).json()
        for match in matches:
            if match["Type"] == "Study":
                return match["ID"]
        raise LookupError(f"no study {study_uid} in Orthanc")

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Each series of a study, by SeriesNumber: its MainDicomTags (Modality,
        SeriesInstanceUID, SeriesDescription...) plus ``ID`` (Orthanc's) and ``Instances``
        (their count)."""
        series = self.request("GET", f"/studies/{self.study_id(study_uid)}/series").json()
        rows = [{**item["MainDicomTags"], "ID": item["ID"], "Instances": len(item["Instances"])}
                for item in series]
        return sorted(rows, key=lambda row: int(row.get("SeriesNumber") or 0))

    def instances_of_series(self, series_id: str) -> list[dict[str, Any]]:
        """The instances of a series (Orthanc ID ``series_id``), by InstanceNumber: their
        MainDicomTags (SOPInstanceUID, InstanceNumber...) plus ``ID`` (Orthanc's)."""
        instances = self.request("GET", f"/series/{series_id}/instances").json()
        rows = [{**item["MainDicomTags"], "ID": item["ID"]} for item in instances]
        return sorted(rows, key=lambda row: int(row.get("InstanceNumber") or 0))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance (Orthanc ID)."""
        return self.request("GET", f"/instances/{instance_id}/file").content

    def delete_study(self, study_uid: str) -> None:
        """Delete a study, found by its StudyInstanceUID."""
        self.request("DELETE", f"/studies/{self.study_id(study_uid)}")

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or replace) a DICOM peer at run time, as ``modalities`` does at start."""
        self.request("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host,
                                                          "Port": port})

    def send_to_modality(self, modality: str, study_uid: str) -> dict[str, Any]:
        """Have Orthanc C-STORE a whole study to a declared modality; waits until done."""
        return self.request("POST", f"/modalities/{modality}/store",
                            content=self.study_id(study_uid)).json()

    def instance_count(self) -> int:
        """How many instances Orthanc stores (GET /statistics)."""
        return int(self.request("GET", "/statistics").json()["CountInstances"])
