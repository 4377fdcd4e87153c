"""The guard's borderline band (issue #33): a verdict whose score lies within the card's band of
the threshold stands, and says that it is close; slices keep their verdict from 208 to 512 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tests.conftest import FIXTURE_IMAGES

from mri_tumor.card import BORDERLINE_BAND, ModelCard
from mri_tumor.inference import Predictor
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.inference.results import BORDERLINE_ACCEPTED, BORDERLINE_REFUSED, NOT_MRI_MESSAGE

SIZES = (208, 224, 256, 320, 512)


@pytest.fixture
def own_predictor() -> Predictor:
    """A predictor of its own: the tests move its threshold."""
    return Predictor.load(backend="onnx", threads=2)


def _image() -> Image.Image:
    return Image.open(sorted(FIXTURE_IMAGES.glob("*/*.jpg"))[0]).convert("L")


@pytest.mark.parametrize(("factor", "status", "note"), [
    (1 / 1.05, "rejected", BORDERLINE_REFUSED),  # the score just above the threshold
    (1 / 2.0, "rejected", None),  # far above: a plain refusal
    (1.05, "ok", BORDERLINE_ACCEPTED),  # just below
    (2.0, "ok", None),  # far below: no note
])
def test_a_score_in_the_band_keeps_its_verdict_and_says_it_is_close(
        own_predictor: Predictor, factor: float, status: str, note: str | None) -> None:
    [first] = own_predictor.predict([_image()], names=["slice.jpg"])
    assert first.ood_score is not None
    own_predictor.ood_threshold = first.ood_score * factor
    [result] = own_predictor.predict([_image()], names=["slice.jpg"])
    assert result.status == status
    if status == "rejected":
        assert result.message.startswith(NOT_MRI_MESSAGE) and result.label is None
    if note is None:
        assert "Borderline" not in result.message
    else:
        assert result.message.endswith(note)


def test_the_band_comes_from_the_card_and_is_left_out_of_it_by_default(tmp_path: Path) -> None:
    card = ModelCard.load(SHIPPED_MODEL_DIR)
    assert card.ood_borderline is None and card.borderline_band == BORDERLINE_BAND
    assert "ood_borderline" not in card.to_dict()
    card.ood_borderline = 0.02
    card.save(tmp_path)
    assert json.loads((tmp_path / "card.json").read_text())["ood_borderline"] == 0.02
    assert ModelCard.load(tmp_path).borderline_band == 0.02


def test_fixture_slices_keep_their_verdict_from_208_to_512_px(own_predictor: Predictor) -> None:
    threshold = own_predictor.ood_threshold
    assert threshold is not None
    for path in sorted(FIXTURE_IMAGES.glob("*/*.jpg")):
        grey = Image.open(path).convert("L")
        copies = [grey.resize((size, size), Image.Resampling.LANCZOS) for size in SIZES]
        results = own_predictor.predict(copies, names=[f"{path.name}@{s}" for s in SIZES])
        assert len({r.status for r in results}) == 1, path.name
        scores = [r.ood_score for r in results if r.ood_score is not None]
        # The score moves with the size by less than the band: a verdict can only change
        # between sizes where it is marked borderline.
        assert (max(scores) - min(scores)) < 2 * BORDERLINE_BAND * threshold, path.name
