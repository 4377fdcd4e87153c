"""`train --oversample SOURCE[:SEQUENCE]=N`: which training images go into an epoch how often,
and the clear refusals of a malformed option or of a key that names no training image."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import copy_dataset, run_cli

from mri_tumor.cli.common import UsageError
from mri_tumor.cli.modelling import oversample_factors
from mri_tumor.data.splitting import SplitRow
from mri_tumor.training.fit import describe_sources, oversampling


def rows() -> list[SplitRow]:
    def row(source: str, sequence: str, label: str = "glioma") -> SplitRow:
        return SplitRow(path=f"{source}/{sequence}/{label}.png", label=label, split="train",
                        group=0, phash="", source=source, sequence=sequence)
    return [row("lgg", "T1"), row("lgg", "T1", "notumor"), row("lgg", "FLAIR"),
            row("kaggle", ""), row("teaching", "T1")]


def test_a_source_and_sequence_key_repeats_only_that_sequence_of_that_source() -> None:
    # The teaching files' T1 image is another source's: not repeated.
    assert oversampling(rows(), {"lgg:T1": 2}) == [2, 2, 1, 1, 1]
    assert oversampling(rows(), {}) == [1] * 5


def test_factors_of_a_source_and_of_its_sequence_multiply() -> None:
    assert oversampling(rows(), {"lgg": 2, "lgg:T1": 3, "kaggle": 4}) == [6, 6, 2, 4, 1]


@pytest.mark.parametrize("key", ["lgg:T2", "spine"])
def test_a_key_without_training_images_is_an_error_that_lists_what_there_is(key: str) -> None:
    with pytest.raises(ValueError, match=f"oversample {key}: no training image") as error:
        oversampling(rows(), {key: 2})
    assert "lgg:T1" in str(error.value) and "kaggle" in str(error.value)


def test_the_card_records_each_sources_oversampling() -> None:
    described = describe_sources([Path("x/lgg"), Path("x/kaggle")], rows(), {"lgg": 1},
                                 {"lgg:T1": 2, "lgg": 3})
    assert described[0]["oversampled"] == {"T1": 2, "all": 3}
    assert "oversampled" not in described[1]


@pytest.mark.parametrize("text", ["lgg:T1", "lgg:T1=0", "lgg:T1=two", "=2", "lgg:T1=-1"])
def test_a_malformed_option_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--oversample"):
        oversample_factors([text])


def test_the_option_parses_several_and_refuses_a_repeated_key() -> None:
    assert oversample_factors(["lgg:T1=2", "kaggle=3"]) == {"lgg:T1": 2, "kaggle": 3}
    with pytest.raises(UsageError, match="given twice"):
        oversample_factors(["lgg=2", "lgg=3"])


def test_train_refuses_an_unknown_source_in_one_line_before_training(tmp_path: Path) -> None:
    data = copy_dataset(tmp_path / "data", per_class=3)
    status, _, err = run_cli("train", str(data), "--out", str(tmp_path / "run"),
                             "--oversample", "lgg-tcga:T1=2", "--epochs", "1")
    assert status == 2
    assert "oversample lgg-tcga:T1: no training image" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "card.json").exists()


def test_a_one_folder_run_names_its_rows_after_the_folder() -> None:
    unnamed = [SplitRow(path="a.png", label="glioma", split="train", group=0, phash="")]
    assert oversampling(unnamed, {"data": 2}, unnamed="data") == [2]
