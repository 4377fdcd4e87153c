"""The per-class explanation texts (mri_tumor.explain, class_texts.json): one for every class of
both models, each with a short summary, its MRI appearance and public sources."""

from __future__ import annotations

import pytest

from mri_tumor.explain import ClassExplanation, explanation, explanations

FOUR_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
# The labels of the tumour-type model, exactly as its card names them.
TYPE_CLASSES = (
    "astrocytoma", "carcinoma (metastasis)", "ependymoma", "ganglioglioma", "germinoma",
    "glioblastoma", "granuloma", "medulloblastoma", "meningioma", "neurocytoma", "normal",
    "oligodendroglioma", "papilloma (choroid plexus)", "schwannoma", "tuberculoma",
)
ALL_CLASSES = tuple(dict.fromkeys(FOUR_CLASSES + TYPE_CLASSES))  # meningioma serves both
# Short enough to read at a glance; the longest of the first four texts is ~460 characters.
MAX_SUMMARY_CHARS = 600
MAX_ON_MRI_CHARS = 300


def test_the_type_model_has_fifteen_distinct_labels() -> None:
    assert len(TYPE_CLASSES) == len(set(TYPE_CLASSES)) == 15
    assert len(ALL_CLASSES) == 18


@pytest.mark.parametrize("class_name", ALL_CLASSES)
def test_every_class_of_both_models_has_an_explanation(class_name: str) -> None:
    about = explanation(class_name)
    assert isinstance(about, ClassExplanation)
    assert about is explanations()[class_name]
    assert about.title.strip() and about.summary.strip() and about.on_mri.strip()


@pytest.mark.parametrize("class_name", ALL_CLASSES)
def test_sources_are_one_to_three_distinct_https_pages(class_name: str) -> None:
    sources = explanation(class_name).sources
    assert 1 <= len(sources) <= 3
    urls = [source.url for source in sources]
    assert all(url.startswith("https://") for url in urls), urls
    assert all(source.title.strip() for source in sources)
    assert len(set(urls)) == len(urls), f"a page is listed twice for {class_name}: {urls}"


@pytest.mark.parametrize("class_name", sorted(explanations()))
def test_texts_stay_short(class_name: str) -> None:
    about = explanations()[class_name]
    assert 150 < len(about.summary) <= MAX_SUMMARY_CHARS, len(about.summary)
    assert len(about.on_mri) <= MAX_ON_MRI_CHARS, len(about.on_mri)
    assert "  " not in about.summary + about.on_mri  # no glued-string double spaces


@pytest.mark.parametrize("class_name", ["granuloma", "tuberculoma"])
def test_inflammatory_lesions_are_said_not_to_be_tumours(class_name: str) -> None:
    summary = explanation(class_name).summary.lower()
    assert "not a tumour" in summary
    assert "inflammatory" in summary


def test_the_normal_classes_say_a_slice_does_not_rule_out_disease() -> None:
    for name in ("notumor", "normal"):
        assert "does not rule out disease" in explanation(name).summary


def test_an_unknown_class_raises_key_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known") as raised:
        explanation("lymphoma")
    message = str(raised.value)
    assert "'lymphoma'" in message
    assert all(name in message for name in ALL_CLASSES)
    # Keys are the exact model labels: no case folding, no partial names.
    for near_miss in ("Glioblastoma", "carcinoma", "papilloma", "no tumor"):
        with pytest.raises(KeyError, match="no explanation for class"):
            explanation(near_miss)


def test_the_texts_are_read_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from mri_tumor.explain import explanation; "
            "assert explanation('glioma').title == 'Glioma'; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
