"""Grad-CAM heat maps, the overlay and the per-class explanation texts (mri_tumor.explain)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tests.conftest import FIXTURE_IMAGES

from mri_tumor import Predictor
from mri_tumor.card import ModelCard
from mri_tumor.data import read_image
from mri_tumor.data.folders import TYPE_LABELS
from mri_tumor.explain import explanation, explanations
from mri_tumor.explain.gradcam import gradcam, overlay, torch_model
from mri_tumor.inference import OnnxBackend
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR


@pytest.fixture(scope="module")
def slice_image() -> Image.Image:
    """A fixture MRI slice cropped to a non-square size, so height and width differ."""
    image = read_image(sorted((FIXTURE_IMAGES / "glioma").glob("*.jpg"))[0])
    return image.crop((0, 0, image.width, image.height * 3 // 4))


def test_heatmap_has_the_original_size_and_is_a_normalised_map(
        predictor: Predictor, slice_image: Image.Image) -> None:
    predicted = predictor.predict([slice_image])[0]
    cam = gradcam(predictor, slice_image, predictor.class_names.index(predicted.label))
    assert cam.shape == (slice_image.height, slice_image.width)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() == pytest.approx(1.0)  # normalised: the strongest region reaches 1
    assert cam.std() > 0.05  # not constant: some regions matter more than others


def test_heatmaps_of_two_classes_differ(predictor: Predictor,
                                        slice_image: Image.Image) -> None:
    glioma = gradcam(predictor, slice_image, predictor.class_names.index("glioma"))
    pituitary = gradcam(predictor, slice_image, predictor.class_names.index("pituitary"))
    assert np.abs(glioma - pituitary).mean() > 0.02


def test_size_argument_gives_a_map_for_a_display_copy(predictor: Predictor,
                                                      slice_image: Image.Image) -> None:
    full = gradcam(predictor, slice_image, 0)
    small = gradcam(predictor, slice_image, 0, size=(100, 75))
    assert small.shape == (75, 100)
    # Same map, sampled coarser: the display copy's map matches the downsized full map.
    downsized = np.asarray(Image.fromarray(full).resize((100, 75), Image.Resampling.BILINEAR))
    assert np.abs(small - downsized).mean() < 0.05


def test_bad_class_index_is_refused(predictor: Predictor, slice_image: Image.Image) -> None:
    with pytest.raises(ValueError, match="out of range"):
        gradcam(predictor, slice_image, len(predictor.class_names))


def test_predictor_without_torch_model_loads_one_from_its_folder(
        predictor: Predictor, slice_image: Image.Image) -> None:
    # What an ONNX-backend predictor looks like to Grad-CAM: no torch model, a model folder.
    card = ModelCard.load(SHIPPED_MODEL_DIR)
    onnx_like = Predictor(card, OnnxBackend(session=None, ood_threshold=None),
                          model_dir=SHIPPED_MODEL_DIR)
    model = torch_model(onnx_like)
    assert model is torch_model(onnx_like)  # loaded once, then reused
    np.testing.assert_allclose(gradcam(onnx_like, slice_image, 1),
                               gradcam(predictor, slice_image, 1), atol=1e-4)


def test_overlay_keeps_the_size_and_leaves_unmarked_pixels_grey(
        slice_image: Image.Image) -> None:
    cam = np.zeros((slice_image.height, slice_image.width), dtype=np.float32)
    cam[:20, :20] = 1.0
    blended = overlay(slice_image, cam, opacity=0.6)
    assert blended.size == slice_image.size and blended.mode == "RGB"
    pixels = np.asarray(blended).astype(int)
    grey = np.asarray(slice_image).astype(int)
    assert (pixels[30:, 30:] == grey[30:, 30:, None]).all()  # cam 0: the image unchanged
    channels = pixels[:20, :20]
    assert np.abs(channels[..., 0] - channels[..., 2]).mean() > 20  # cam 1: coloured
    assert np.array_equal(np.asarray(overlay(slice_image, cam, opacity=0.0)),
                          np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8))


def test_every_class_has_an_explanation_with_public_sources(predictor: Predictor) -> None:
    assert set(predictor.class_names) <= set(explanations())
    assert set(TYPE_LABELS) <= set(explanations())  # the types model's classes too
    for name in predictor.class_names:
        about = explanation(name)
        assert len(about.summary) > 150 and about.on_mri
        assert about.sources
        assert all(source.url.startswith("https://") and source.title
                   for source in about.sources)
    with pytest.raises(KeyError, match="known"):
        explanation("lymphoma")
