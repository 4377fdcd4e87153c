"""`POST /v1/predict?gradcam=png`: a base64 PNG of the Grad-CAM overlay of the predicted
class in each classified result, the same picture as ``explain.gradcam`` makes, with the
research-tool line burned in; nothing changes without the parameter."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests.test_api import SAMPLES, as_files, encode, jpeg, serving

from mri_tumor.api import DISCLAIMER_HEADER, Settings, create_app
from mri_tumor.api import overlays as overlays_module
from mri_tumor.api.overlays import BURNED_IN, MAX_SIDE
from mri_tumor.card import DISCLAIMER
from mri_tumor.explain.gradcam import gradcam, overlay
from mri_tumor.inference import RESULT_KEYS, Predictor


@pytest.fixture(scope="module")
def client(predictor: Predictor, types_predictor: Predictor) -> Iterator[TestClient]:
    app = create_app(Settings(), predictor=predictor, models={"types": types_predictor})
    with serving(app) as test_client:
        yield test_client


def decode_png(text: str) -> Image.Image:
    data = base64.b64decode(text, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def banner_rows(image: Image.Image) -> int:
    """The height of the burned-in line (as ``api.overlays`` draws it)."""
    return max(8, image.height // 28) + 5


def test_gradcam_png_is_the_overlay_of_the_predicted_class(client: TestClient,
                                                           predictor: Predictor) -> None:
    source = SAMPLES / "meningioma.jpg"
    answer = client.post("/v1/predict?gradcam=png", files=as_files([jpeg(source)]))
    assert answer.status_code == 200, answer.text
    assert answer.headers[DISCLAIMER_HEADER] == DISCLAIMER
    [result] = answer.json()
    assert result["status"] == "ok"
    assert tuple(result) == (*RESULT_KEYS, "gradcam_png")
    picture = decode_png(result["gradcam_png"])
    original = Image.open(source)
    assert picture.mode == "RGB" and picture.size == original.size  # small: its own size
    assert picture.text["Disclaimer"] == DISCLAIMER
    assert result["label"] in picture.text["Description"]
    # Below the burned-in line: the overlay explain.gradcam makes for the predicted class.
    index = predictor.class_names.index(result["label"])
    expected = np.asarray(overlay(original, gradcam(predictor, original, index)), dtype=int)
    rows = banner_rows(picture)
    shown = np.asarray(picture, dtype=int)
    assert np.abs(shown[rows:] - expected[rows:]).max() <= 2
    assert not np.array_equal(shown[rows:, :, 0], shown[rows:, :, 2])  # coloured, not grey
    # The top line is burned in: black with yellow text, not the image.
    top = shown[:rows]
    assert (top == 0).all(axis=2).mean() > 0.5
    assert ((top[:, :, 0] > 200) & (top[:, :, 1] > 200) & (top[:, :, 2] < 80)).any()
    assert BURNED_IN == "RESEARCH TOOL - NOT FOR DIAGNOSIS"


def test_another_class_gives_another_picture(client: TestClient, predictor: Predictor) -> None:
    """The heat map is the predicted class's: a different label, a different map."""
    uploads = [jpeg(SAMPLES / "glioma.jpg"), jpeg(SAMPLES / "pituitary.jpg")]
    results = client.post("/v1/predict?gradcam=png", files=as_files(uploads)).json()
    assert [r["status"] for r in results] == ["ok", "ok"]
    first, second = (np.asarray(decode_png(r["gradcam_png"])) for r in results)
    assert not np.array_equal(first, second)


def test_without_the_parameter_nothing_changes(client: TestClient) -> None:
    upload = as_files([jpeg(SAMPLES / "glioma.jpg")])
    plain = client.post("/v1/predict", files=upload)
    explained = client.post("/v1/predict?gradcam=png", files=upload)
    [result] = plain.json()
    assert tuple(result) == RESULT_KEYS and "gradcam_png" not in plain.text
    [with_picture] = explained.json()
    assert {k: v for k, v in with_picture.items() if k != "gradcam_png"} == result


def test_only_classified_results_get_a_picture(client: TestClient) -> None:
    answer = client.post("/v1/predict?gradcam=png", files=as_files([
        jpeg(SAMPLES / "glioma.jpg"), ("broken.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")]))
    assert answer.status_code == 200
    good, bad = answer.json()
    assert good["status"] == "ok" and good["gradcam_png"]
    assert bad["status"] == "error" and "gradcam_png" not in bad


def test_a_large_image_gives_a_picture_of_at_most_the_maximum_side(client: TestClient) -> None:
    big = Image.open(SAMPLES / "glioma.jpg").convert("L").resize((1024, 768))
    answer = client.post("/v1/predict?gradcam=png&filename=big.png", content=encode(big, "PNG"),
                         headers={"Content-Type": "image/png"})
    [result] = answer.json()
    if result["status"] != "ok":  # (the guard may refuse the resampled slice)
        pytest.skip("the resized slice was not classified")
    assert decode_png(result["gradcam_png"]).size == (MAX_SIDE, MAX_SIDE * 768 // 1024)


def test_the_types_model_on_onnx_gives_a_picture(client: TestClient) -> None:
    answer = client.post("/v1/predict?model=types&gradcam=png",
                         files=as_files([jpeg(SAMPLES / "meningioma.jpg")]))
    assert answer.status_code == 200, answer.text
    [result] = answer.json()
    assert result["model"] == "types"
    if result["status"] == "ok":
        assert decode_png(result["gradcam_png"]).size == (224, 224)
        assert "sequence" in result  # the other fields are still there
    else:
        assert "gradcam_png" not in result


def test_an_unknown_gradcam_value_is_a_clear_422(client: TestClient) -> None:
    answer = client.post("/v1/predict?gradcam=jpeg",
                         files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "gradcam" in detail and "png" in detail and "\n" not in detail


def test_a_failed_overlay_is_null_and_the_prediction_still_answers(
        client: TestClient, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("no torch today")

    monkeypatch.setattr(overlays_module, "_picture", fail)
    caplog.set_level(logging.WARNING, logger="mri_tumor.api.overlays")
    answer = client.post("/v1/predict?gradcam=png", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
    assert answer.status_code == 200
    [result] = answer.json()
    assert result["status"] == "ok" and result["gradcam_png"] is None
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)
    assert "no torch today" not in answer.text


def test_scans_answers_have_no_picture(client: TestClient) -> None:
    answer = client.post("/v1/scans", files=as_files([jpeg(SAMPLES / "glioma.jpg")]))
    assert answer.status_code == 200, answer.text
    assert all("gradcam_png" not in s for s in answer.json()["slices"])


def test_the_parameter_and_the_field_are_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/v1/predict"]["post"]
    [parameter] = [p for p in predict["parameters"] if p["name"] == "gradcam"]
    assert parameter["in"] == "query" and not parameter.get("required", False)
    assert "png" in str(parameter["schema"]) and "Grad-CAM" in parameter["description"]
    assert "?gradcam=png" in predict["description"] and DISCLAIMER in predict["description"]
    result = schema["components"]["schemas"]["PredictionOut"]
    assert "gradcam_png" in result["properties"] and "gradcam_png" not in result["required"]
    assert "base64" in result["properties"]["gradcam_png"]["description"]
