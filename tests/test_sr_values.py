"""The numbers of the PACS Structured Report: each DS value says what it means (probabilities
in percent with two decimals, the guard's score with four), without the binary rounding of
100 * p ("0.39000000000000")."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from tests.conftest import FIXTURE_IMAGES
from tests.dicom_factory import make_mr_study

from mri_tumor.inference import OK, Prediction, Predictor
from mri_tumor.inference.scans import scan_summaries
from mri_tumor.pacs.results import (
    AnalysedImage,
    ModelIdentity,
    build_report,
    part10_bytes,
    percent,
)
from mri_tumor.pacs.study import results_for

PROBABILITIES = {"glioma": 0.9941, "meningioma": 0.0039, "notumor": 0.0017, "pituitary": 0.0003}


def numbers(report: pydicom.Dataset) -> list[tuple[str, str, str]]:
    """(concept code, DS text, unit code) of every NUM content item, in document order."""
    found = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                found.append((item.ConceptNameCodeSequence[0].CodeValue,
                              str(value.NumericValue),
                              value.MeasurementUnitsCodeSequence[0].CodeValue))
            walk(getattr(item, "ContentSequence", []))

    walk(report.ContentSequence)
    return found


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.load()


def test_probabilities_are_percent_with_two_decimals_and_the_score_has_four(
        shipped: Predictor) -> None:
    [source] = [pydicom.dcmread(io.BytesIO(data)) for data in
                make_mr_study(sorted(FIXTURE_IMAGES.glob("glioma/*.jpg"))[:1])]
    result = Prediction("series 1 image 1", OK, label="glioma", confidence=0.9941,
                        probabilities=dict(PROBABILITIES), ood_score=0.634812345)
    report = build_report([AnalysedImage(source, None, result)], shipped,
                          ModelIdentity("default", "0.1.0", "0" * 64), scope="1.2.3")
    report = pydicom.dcmread(io.BytesIO(part10_bytes(report)))  # as a PACS would hold it
    assert numbers(report) == [("P-glioma", "99.41", "%"), ("P-meningioma", "0.39", "%"),
                               ("P-notumor", "0.17", "%"), ("P-pituitary", "0.03", "%"),
                               ("OODSCORE", "0.6348", "1")]
    assert 100 * 0.0039 != 0.39  # the binary rounding the report used to carry


def test_every_number_of_a_real_study_is_written_as_it_is_meant(shipped: Predictor) -> None:
    files = make_mr_study(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[:4])  # one series
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    analysed, objects, _ = results_for(shipped, datasets, scope=datasets[0].StudyInstanceUID)
    report = pydicom.dcmread(io.BytesIO(part10_bytes(objects[0])))
    found = numbers(report)
    expected = []
    for item in analysed:
        assert item.result.status == OK
        expected += [(f"P-{name}", percent(p)) for name, p in item.result.probabilities.items()]
        expected.append(("OODSCORE", round(item.result.ood_score, 4)))
    [summary] = scan_summaries([item.result for item in analysed], shipped.card)
    expected.append(("SCANTUMOURP", percent(summary["tumour_probability"])))
    assert [(code, float(text)) for code, text, _ in found] == expected
    for code, text, unit in found:
        decimals = 4 if code == "OODSCORE" else 2
        assert re.fullmatch(rf"-?\d+(\.\d{{1,{decimals}}})?", text), (code, text)
        assert unit == ("1" if code == "OODSCORE" else "%")
    assert percent(0.0039) == 0.39 and percent(0.99996) == 100.0 and percent(0.0) == 0.0


def test_a_series_whose_description_names_t1_carries_the_cards_caution_in_the_report(
        shipped: Predictor, tmp_path) -> None:
    import shutil
    import subprocess

    files = make_mr_study(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[:4])  # "T1 axial"
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    _, objects, _ = results_for(shipped, datasets, scope=datasets[0].StudyInstanceUID)
    data = part10_bytes(objects[0])
    texts: list[str] = []

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                texts.append(str(item.TextValue))
            walk(getattr(item, "ContentSequence", []))

    walk(pydicom.dcmread(io.BytesIO(data)).ContentSequence)
    caution = shipped.card.scan_rule["cautions"]["T1"]
    assert f"Caution: {caution}" in texts
    if shutil.which("dciodvfy"):
        (tmp_path / "sr.dcm").write_bytes(data)
        checked = subprocess.run(["dciodvfy", str(tmp_path / "sr.dcm")], capture_output=True,
                                 text=True, timeout=60, check=False)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == []
