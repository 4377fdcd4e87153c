"""The test PACS itself: a real Orthanc server (``orthanc`` fixture) and ``make_mr_study``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from tests.dicom_factory import PATIENT, STUDY_IDENTIFIERS, make_mr_study
from tests.orthanc import OrthancServer

from mri_tumor.data.reading import NotMRIError, read_frames


def test_server_needs_authentication(orthanc: OrthancServer) -> None:
    assert httpx.get(f"{orthanc.dicomweb_url}/studies").status_code == 401
    assert httpx.get(f"{orthanc.url}/system", auth=("alice", "wrong")).status_code == 401
    answer = httpx.get(f"{orthanc.dicomweb_url}/studies", auth=orthanc.auth)
    assert answer.status_code == 200 and answer.json() == []
    assert orthanc.request("GET", "/system").json()["DicomPort"] == orthanc.dicom_port


def test_uploaded_study_has_two_mr_series_and_a_ct(orthanc: OrthancServer,
                                                    fixture_paths: list[Path]) -> None:
    files = make_mr_study(fixture_paths[:4], series_count=2, ct_slice=True)
    assert len(files) == 5
    assert all(orthanc.upload(data)["Status"] == "Success" for data in files)
    [study_uid] = orthanc.study_uids()
    series = orthanc.series_of_study(study_uid)
    assert [(s["Modality"], s["SeriesDescription"], s["Instances"]) for s in series] == [
        ("MR", "T1 axial", 2), ("MR", "T2 axial", 2), ("CT", "CT head", 1)]
    assert len({s["SeriesInstanceUID"] for s in series}) == 3
    assert orthanc.instance_count() == 5
    instances = orthanc.instances_of_series(series[1]["ID"])
    assert [int(i["InstanceNumber"]) for i in instances] == [1, 2]

    # What comes back is what went in: the third fixture image, shown exactly.
    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instances[0]["ID"])))
    assert stored.StudyInstanceUID == study_uid and stored.PatientID == PATIENT["PatientID"]
    assert stored.AccessionNumber == STUDY_IDENTIFIERS["AccessionNumber"]
    [frame] = read_frames(orthanc.instance_file(instances[0]["ID"]))
    expected = np.asarray(Image.open(fixture_paths[2]).convert("L"))
    assert np.array_equal(np.asarray(frame.image), expected)
    with pytest.raises(NotMRIError):
        read_frames(files[-1])

    orthanc.delete_study(study_uid)
    assert orthanc.studies() == [] and orthanc.instance_count() == 0


def test_given_study_uid_and_more_series_than_descriptions(fixture_paths: list[Path]) -> None:
    files = make_mr_study(fixture_paths[:6], study_uid="1.2.3.4", series_count=5)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert [int(ds.SeriesNumber) for ds in datasets] == [1, 1, 2, 3, 4, 5]
    assert [int(ds.InstanceNumber) for ds in datasets] == [1, 2, 1, 1, 1, 1]
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 5
    assert len({ds.SOPInstanceUID for ds in datasets}) == 6


@pytest.mark.parametrize("index", [0, -1], ids=["MR", "CT"])
def test_factory_files_are_valid_iods(tmp_path: Path, fixture_paths: list[Path],
                                      index: int) -> None:
    if shutil.which("dciodvfy") is None:
        missing = "dciodvfy (Debian package dicom3tools) is not installed"
        if os.environ.get("MRI_TUMOR_REQUIRE_ORTHANC"):  # set by .ci/run, which installs it
            pytest.fail(missing)
        pytest.skip(missing)
    data = make_mr_study(fixture_paths[:2], ct_slice=True)[index]
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                             timeout=60, check=False)
    report = checked.stdout + checked.stderr
    assert ("MRImage" if index == 0 else "CTImage") in report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
