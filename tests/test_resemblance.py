"""What a refusal says the image looks like (models.resemblance): the classifier itself,
its file, and the words it adds to a refusal by content, in the JSON result too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mri_tumor import Predictor
from mri_tumor.card import CARD_FILE, ModelCard
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR
from mri_tumor.models.resemblance import Resemblance, fit_resemblance


def test_it_learns_separable_kinds_and_survives_its_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = {"ct": np.r_[3.0, 0, 0, 0], "xray": np.r_[0, 3.0, 0, 0], "mri": np.r_[0, 0, 3.0, 0]}
    kinds = {k: c + rng.normal(0, 0.5, (40, 4)) for k, c in centres.items()}
    fitted = fit_resemblance(kinds)
    probe = np.stack([centres["xray"], centres["ct"], centres["mri"]])
    assert fitted.nearest(probe) == ["xray", "ct", "mri"]
    assert np.allclose(fitted.probabilities(probe).sum(axis=1), 1.0)
    fitted.save(tmp_path)
    loaded = Resemblance.load(tmp_path, fitted.kinds)
    assert loaded is not None and loaded.nearest(probe) == ["xray", "ct", "mri"]
    # Below the least probability nothing is named; a card naming other kinds is refused.
    halfway = (centres["ct"] + centres["xray"]) / 2
    assert fitted.nearest(halfway, min_probability=0.99) == [None]
    with pytest.raises(ValueError, match="3 kinds, the card names 2"):
        Resemblance.load(tmp_path, ["ct", "xray"])
    assert Resemblance.load(tmp_path / "none", ["ct"]) is None


def chart(path: Path) -> Path:
    """A bar chart on white: nothing like a brain MRI; the guard refuses it."""
    image = Image.new("L", (300, 300), 255)
    draw = ImageDraw.Draw(image)
    for i, height in enumerate((80, 200, 140, 260)):
        draw.rectangle((30 + 60 * i, 290 - height, 70 + 60 * i, 290), fill=40)
    image.save(path)
    return path


def test_a_refusal_by_content_says_what_the_image_looks_like(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, folder)
    card = ModelCard.load(folder)
    width = 1280
    for name in ("resemblance.safetensors",):
        (folder / name).unlink(missing_ok=True)
    # Whatever the features, "drawing" wins (its bias), "brain" never does.
    Resemblance(["brain", "drawing"], np.zeros(width, np.float32), np.ones(width, np.float32),
                np.zeros((2, width), np.float32), np.array([0.0, 5.0], np.float32)).save(folder)
    card.resemblance = {"kinds": ["brain", "drawing"], "min_probability": 0.5,
                        "phrases": {"brain": "a brain MRI", "drawing": "a chart or drawing"}}
    (folder / CARD_FILE).write_text(json.dumps(card.to_dict()))
    predictor = Predictor.load(folder, backend="onnx", threads=2)
    refused, accepted = predictor.predict([chart(tmp_path / "chart.png"),
                                           sorted(SHIPPED_MODEL_DIR.parents[1].glob(
                                               "samples/*.jpg"))[0]])
    assert refused.status == "rejected" and refused.resembles == "drawing"
    assert refused.message.endswith("it looks most like a chart or drawing.")
    assert refused.to_dict()["resembles"] == "drawing"
    assert accepted.status == "ok" and accepted.resembles is None
    assert "resembles" not in accepted.to_dict()


def test_the_pacs_report_says_what_a_refused_image_looks_like(tmp_path: Path) -> None:
    """The shipped model's card has a resemblance section: an MR instance that is a chart
    gets, in the SR, the guard's REFUSED verdict and a "Looks most like" evaluation in the
    card's words."""
    import io

    import pydicom
    from tests.dicom_factory import make_mr_study

    from mri_tumor.pacs.results import SCHEME
    from mri_tumor.pacs.study import results_for

    shipped = ModelCard.load(SHIPPED_MODEL_DIR)
    assert shipped.resemblance is not None and "head-ct" in shipped.resemblance["kinds"]
    picture = chart(tmp_path / "chart.png")
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in make_mr_study([picture])]
    analysed, objects, _ = results_for(Predictor.load(), datasets, scope="1.2.3")
    [item] = analysed
    assert item.result.status == "rejected" and item.result.resembles is not None
    phrase = shipped.resemblance["phrases"][item.result.resembles]
    assert phrase in item.result.message

    def walk(items):
        for entry in items:
            yield entry
            yield from walk(getattr(entry, "ContentSequence", []))

    looks = [e.ConceptCodeSequence[0] for e in walk(objects[0].ContentSequence)
             if e.ValueType == "CODE" and e.ConceptNameCodeSequence[0].CodeValue == "RESEMBLES"]
    assert [(c.CodingSchemeDesignator, c.CodeMeaning) for c in looks] == [(SCHEME, phrase)]
