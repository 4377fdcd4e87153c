"""`mri-tumor evaluate`: metrics against hand-computed values, the JSON contract, the
leakage check, calibration and the report files."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from tests.conftest import FIXTURE_IMAGES, run_cli

from mri_tumor import metrics
from mri_tumor.card import DISCLAIMER
from mri_tumor.data.folders import class_of_folder, source_name
from mri_tumor.data.reading import read_image
from mri_tumor.data.splitting import NEAR_DUPLICATE_BITS, SplitRow, write_split_csv
from mri_tumor.evaluation import JSON_KEYS, Evaluation, ScoredImages, compute_metrics, evaluate
from mri_tumor.evaluation.images import ordered_parallel_map
from mri_tumor.evaluation.report import (
    FIGURES,
    PREDICTIONS_FILE,
    REPORT_FILE,
    check_output_dir,
    write_report,
)
from mri_tumor.evaluation.scoring import network_scores
from mri_tumor.evaluation.shift import shift_checks, shift_message
from mri_tumor.evaluation.shortcut import fit_shortcut_classifier, intensity_features
from mri_tumor.evaluation.stress import (
    STRESS_KEYS,
    gamma_pixels,
    match_histogram_pixels,
    pick_references,
)
from mri_tumor.inference import Predictor
from mri_tumor.models.calibration import fit_temperature, group_weights

FIXTURE_TYPES = Path(__file__).parent / "fixtures" / "types"  # '<Type> <Sequence>' layout
# In-scope images of the type-and-sequence fixture per sequence (Schwannoma T1 is skipped).
TYPES_PER_SEQUENCE = {"T1": 6, "T1C+": 3, "T2": 9}
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def copy_fixtures(target: Path) -> Path:
    shutil.copytree(FIXTURE_IMAGES, target)
    return target


@pytest.fixture(scope="module")
def fixture_evaluation(predictor: Predictor) -> Evaluation:
    return evaluate(predictor, FIXTURE_IMAGES, progress=False)


# -- metrics on a small fixed prediction set --------------------------------------------
# 3 classes, 8 images. Confusion matrix (rows true, columns predicted):
#   [[2, 1, 0],
#    [0, 3, 0],
#    [1, 0, 1]]
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 1, 2, 0])


def test_classification_report_matches_hand_computed_values() -> None:
    report = metrics.classification_report(Y_TRUE, Y_PRED, 3)
    per_class = report["per_class"]
    np.testing.assert_allclose(per_class["precision"], [2 / 3, 3 / 4, 1])
    np.testing.assert_allclose(per_class["recall"], [2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(per_class["f1"], [2 / 3, 6 / 7, 2 / 3])
    np.testing.assert_array_equal(per_class["support"], [3, 3, 2])
    assert report["macro"]["precision"] == pytest.approx(float(Fraction(29, 36)))
    assert report["macro"]["recall"] == pytest.approx(float(Fraction(13, 18)))
    assert report["macro"]["f1"] == pytest.approx(float(Fraction(46, 63)))
    assert report["weighted"]["precision"] == pytest.approx(float(Fraction(25, 32)))
    assert report["weighted"]["recall"] == pytest.approx(3 / 4)
    assert report["weighted"]["f1"] == pytest.approx(float(Fraction(31, 42)))


def test_compute_metrics_gives_accuracy_confusion_matrix_and_json_ready_values() -> None:
    logits = np.eye(3)[Y_PRED] * 3.0
    result = compute_metrics(logits, Y_TRUE, ["a", "b", "c"], temperature=1.0)
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["macro_f1"] == pytest.approx(float(Fraction(46, 63)))
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert result["per_class"]["b"] == {"precision": pytest.approx(0.75), "recall": 1.0,
                                        "f1": pytest.approx(6 / 7), "support": 3}
    json.dumps(result)  # plain Python values only


def test_average_ranks_share_ties() -> None:
    np.testing.assert_allclose(metrics.average_ranks(np.array([3, 1, 3, 2])),
                               [3.5, 1, 3.5, 2])


@pytest.mark.parametrize(("scores", "positives", "expected"), [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    # positive 0.6 ties negative 0.6 (counts 1/2): (1 + 0.5 + 1 + 1) / 4
    ([0.2, 0.6, 0.6, 0.9], [0, 1, 0, 1], 0.875),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied: chance
    ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
])
def test_binary_auc_by_hand_including_ties(scores: list[float], positives: list[int],
                                           expected: float) -> None:
    scores_a, positives_a = np.array(scores), np.array(positives, dtype=bool)
    assert metrics.binary_roc_auc(scores_a, positives_a) == pytest.approx(expected)
    fpr, tpr = metrics.roc_curve(scores_a, positives_a)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected)  # the curve agrees with the ranks


def test_auc_is_undefined_without_both_classes_and_one_vs_rest_uses_each_column() -> None:
    assert np.isnan(metrics.binary_roc_auc(np.array([0.1, 0.9]), np.array([True, True])))
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3],
                              [0.1, 0.8, 0.1]])
    labels = np.array([0, 1, 1, 1])  # class 2 absent
    auc = metrics.roc_auc_ovr(probabilities, labels)
    # class 0: positive 0.7 beats negatives 0.6, 0.2, 0.1; class 1: positives 0.3, 0.5, 0.8
    # against negative 0.2: all above.
    assert auc[0] == pytest.approx(1.0)
    assert auc[1] == pytest.approx(1.0)
    assert np.isnan(auc[2])
    result = compute_metrics(np.log(probabilities), labels, ["a", "b", "c"], 1.0)
    assert result["auc"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}


def test_ece_and_reliability_bins_by_hand() -> None:
    # Confidences 0.95 (right), 0.95 (wrong), 0.62 (right), 0.71 (right), in 15 bins:
    # 2/4 * |0.5 - 0.95| + 1/4 * |1 - 0.62| + 1/4 * |1 - 0.71| = 0.3925
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.62, 0.38], [0.29, 0.71]])
    labels = np.array([0, 1, 0, 1])
    result = compute_metrics(np.log(probabilities), labels, ["a", "b"], temperature=1.0)
    assert result["ece_uncalibrated"] == pytest.approx(0.3925)
    assert result["ece"] == pytest.approx(0.3925)  # T = 1: the same probabilities
    bins = metrics.reliability_bins(probabilities, labels, 15)
    assert bins["count"].sum() == 4
    assert bins["count"][14] == 2 and bins["accuracy"][14] == pytest.approx(0.5)
    assert bins["confidence"][14] == pytest.approx(0.95)
    assert np.isnan(bins["accuracy"][0])
    filled = bins["count"] > 0
    weights = bins["count"][filled] / 4
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    assert (weights * gaps).sum() == pytest.approx(0.3925)  # same binning as the ECE


def test_temperature_scaling_lowers_ece_of_an_over_confident_model() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=2000)
    honest = rng.normal(size=(2000, 4)) + 1.5 * np.eye(4)[labels]
    over_confident = honest * 5.0
    temperature = fit_temperature(over_confident, labels)
    assert temperature > 2.0
    result = compute_metrics(over_confident, labels, CLASSES, temperature)
    assert result["ece"] < result["ece_uncalibrated"] / 2
    assert result["ece_uncalibrated"] > 0.1


def test_a_source_balanced_temperature_weighs_each_source_the_same() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=1200)
    logits = rng.normal(size=(1200, 4)) + 1.5 * np.eye(4)[labels]
    logits[1000:] *= 4.0  # the last 200 (a second source) are over-confident
    sources = np.array(["large"] * 1000 + ["small"] * 200)
    balanced = fit_temperature(logits, labels, groups=sources)
    # The same as a pooled fit on data where the small source is repeated to the large's size.
    repeated = np.r_[np.arange(1000), np.tile(np.arange(1000, 1200), 5)]
    assert balanced == pytest.approx(fit_temperature(logits[repeated], labels[repeated]),
                                     rel=1e-4)
    assert balanced > fit_temperature(logits, labels) * 1.1  # pooled: the small one counts less
    # A source of 10 images weighs a tenth of one of at least MIN_SOURCE_IMAGES (100).
    weights = group_weights(1010, np.array(["large"] * 1000 + ["tiny"] * 10))
    assert weights.sum() == pytest.approx(1.0)
    assert weights[1000:].sum() == pytest.approx(0.1 / 1.1)


# -- scoring shares the predictor's path ----------------------------------------------------
def test_ordered_parallel_map_keeps_order() -> None:
    assert list(ordered_parallel_map(lambda x: x * x, range(50), workers=3, window=4)) == [
        x * x for x in range(50)]


def test_evaluation_probabilities_match_the_predictor(predictor: Predictor,
                                                      fixture_evaluation: Evaluation) -> None:
    paths = fixture_evaluation.scored.paths
    assert len(paths) == 20
    predictions = predictor.predict(paths)
    probabilities = fixture_evaluation.probabilities()
    for row, prediction in zip(probabilities, predictions, strict=True):
        expected = [prediction.probabilities[name] for name in predictor.class_names]
        np.testing.assert_allclose(row, expected, atol=1e-4)
    assert fixture_evaluation.to_json()["leak_free"] is None  # no --train-dir
    labels = [CLASSES[i] for i in fixture_evaluation.scored.labels]
    assert labels == [path.parent.name for path in paths]


def test_tta_averages_the_logits_of_the_image_and_its_mirror(predictor: Predictor) -> None:
    size = predictor.spec.image_size
    pixels = np.stack([np.asarray(read_image(p).resize((size, size)))
                       for p in sorted(FIXTURE_IMAGES.glob("glioma/*.jpg"))[:2]])
    plain, _, plain_scores = predictor.forward(pixels)
    mirrored, _, _ = predictor.forward(np.ascontiguousarray(pixels[:, :, ::-1]))
    averaged, scores, _ = network_scores(predictor, pixels, tta=True)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-4)
    np.testing.assert_allclose(scores, plain_scores, rtol=1e-4)


# -- the command -------------------------------------------------------------------------------
def test_command_json_has_exactly_the_documented_keys_and_writes_the_report(tmp_path: Path) -> None:
    data = copy_fixtures(tmp_path / "data")
    (data / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "notumor" / "notes.txt").write_text("not an image")
    planted = planted_training_folder(tmp_path / "train")
    out = tmp_path / "report"
    status, stdout, stderr = run_cli("evaluate", str(data), "--json", "--batch-size", "8",
                                     "--train-dir", str(tmp_path / "train"), "--out", str(out))
    assert status == 0, stderr
    result = json.loads(stdout)  # nothing but the one JSON object on stdout
    assert tuple(result) == JSON_KEYS
    assert result["n"] == 20
    assert result["classes"] == CLASSES
    assert set(result["per_class"]) == set(result["auc"]) == set(CLASSES)
    assert {k for v in result["per_class"].values() for k in v} == {
        "precision", "recall", "f1", "support"}
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (4, 4) and list(matrix.sum(axis=1)) == [5, 5, 5, 5]
    assert result["accuracy"] == pytest.approx(np.trace(matrix) / 20)
    assert 0 <= result["ece"] <= 1 and 0 <= result["ece_uncalibrated"] <= 1
    assert set(result["leak_free"]) == {"n", "accuracy", "macro_f1"}
    assert result["leak_free"]["n"] == 20 - len(planted)
    assert result["by_group"] == {}  # one source, and the Kaggle layout tells no sequence
    assert [(c["class"], c["n"]) for c in result["by_cell"]] == [(c, 5) for c in CLASSES]
    assert result["stress"] is None  # not asked for
    assert 0 <= result["shortcut_baseline_accuracy"] <= 1
    skipped = {item["path"]: item["reason"] for item in result["skipped"]}
    assert skipped.keys() == {"glioma/broken.jpg", "notumor/notes.txt"}
    assert "damaged" in skipped["glioma/broken.jpg"] or "not a supported" in skipped[
        "glioma/broken.jpg"]
    assert skipped["notumor/notes.txt"] == "unsupported file type"
    assert DISCLAIMER in stderr
    report = (out / REPORT_FILE).read_text()
    assert "## Leak-free subset" in report and "(confusion_matrix_leak_free.png)" in report
    assert all(f"`{path}`" in report for path in planted)
    assert "`glioma/broken.jpg`" in report  # skipped files are listed in the report too


def test_text_summary_shows_tables_and_ends_with_the_disclaimer() -> None:
    status, stdout, _ = run_cli("evaluate", str(FIXTURE_IMAGES), "--backend", "onnx")
    assert status == 0
    assert "precision" in stdout and "macro average" in stdout and "weighted average" in stdout
    assert "Confusion matrix" in stdout and "Pituitary tumor" in stdout
    assert stdout.rstrip().endswith(DISCLAIMER)


@pytest.mark.parametrize("problem", ["missing", "unknown_class", "out_is_file", "foreign"])
def test_usage_problems_exit_2_with_one_line(tmp_path: Path, problem: str) -> None:
    data, out = FIXTURE_IMAGES, tmp_path / "report"
    if problem == "missing":
        data = tmp_path / "nowhere"
    elif problem == "unknown_class":
        data = copy_fixtures(tmp_path / "data")
        (data / "astrocytoma").mkdir()
    elif problem == "out_is_file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / REPORT_FILE).write_text("# my own notes\n")
    status, stdout, stderr = run_cli("evaluate", str(data), "--out", str(out))
    assert status == 2 and stdout == ""
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("mri-tumor evaluate: error:")
    expected = {"missing": "no such folder", "unknown_class": "astrocytoma",
                "out_is_file": "not a folder", "foreign": "did not write"}[problem]
    assert expected in message
    if problem == "foreign":
        assert (out / REPORT_FILE).read_text() == "# my own notes\n"  # untouched
    if problem == "out_is_file":
        assert out.read_text() == "mine"


def first_fixture(label: str) -> Path:
    return sorted((FIXTURE_IMAGES / label).glob("*.jpg"))[0]


def planted_training_folder(root: Path) -> dict[str, str]:
    """A training folder with three copies of evaluation images (exact; re-encoded at JPEG
    quality 70 and resized to 200 x 200; mirrored) and three distinct images (the bundled
    samples, from another split). Returns evaluation path -> expected kind of match."""
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    exact, resaved, mirrored = (first_fixture(n) for n in ("glioma", "meningioma", "pituitary"))
    shutil.copy(exact, root / "glioma" / "copy.jpg")
    with Image.open(resaved) as image:
        image.convert("L").resize((200, 200)).save(root / "meningioma" / "resaved.jpg",
                                                   quality=70)
    with Image.open(mirrored) as image:
        ImageOps.mirror(image).save(root / "pituitary" / "mirrored.png")
    for sample in sorted((Path(__file__).parents[1] / "src" / "mri_tumor" / "samples")
                         .glob("*.jpg"))[:3]:
        shutil.copy(sample, root / sample.stem / f"distinct_{sample.name}")
    return {f"glioma/{exact.name}": "identical file",
            f"meningioma/{resaved.name}": "near-duplicate",
            f"pituitary/{mirrored.name}": "mirrored copy"}


def test_leakage_check_finds_planted_duplicates_and_only_those(predictor: Predictor,
                                                               tmp_path: Path) -> None:
    planted = planted_training_folder(tmp_path / "train")
    evaluation = evaluate(predictor, FIXTURE_IMAGES, train_dirs=tmp_path / "train",
                          batch_size=16, progress=False)
    found = {path: matches for path, matches in
             zip(evaluation.scored.relative_paths, evaluation.duplicates, strict=True) if matches}
    assert found.keys() == planted.keys()
    for path, kind in planted.items():
        assert found[path][0].kind.startswith(kind)
        assert found[path][0].bits <= NEAR_DUPLICATE_BITS
    exact = found[f"glioma/{first_fixture('glioma').name}"][0]
    assert (exact.train_path, exact.bits, exact.identical) == ("glioma/copy.jpg", 0, True)
    assert evaluation.leak_free["n"] == 17
    clean = np.array([not m for m in evaluation.duplicates])
    expected = compute_metrics(evaluation.scored.logits[clean], evaluation.scored.labels[clean],
                               CLASSES, evaluation.temperature)
    assert evaluation.leak_free == expected
    payload = evaluation.to_json()["leak_free"]
    assert payload == {"n": 17, "accuracy": expected["accuracy"],
                       "macro_f1": expected["macro_f1"]}


def test_report_files_exist_and_figures_open(fixture_evaluation: Evaluation,
                                             tmp_path: Path) -> None:
    out = tmp_path / "new" / "report"
    report = write_report(fixture_evaluation, out)
    text = report.read_text()
    assert report == out / REPORT_FILE
    assert DISCLAIMER in text
    assert "| macro average |" in text and "| weighted average |" in text
    for required in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert f"({required})" in text
    linked = [name for name in FIGURES if f"({name})" in text]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(linked)
    for name in linked:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    mistakes = fixture_evaluation.worst_mistakes()
    assert ("worst_mistakes.png" in linked) == bool(mistakes)
    for mistake in mistakes:
        assert f"`{mistake.relative_path}`" in text
    rows = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert len(rows) == 1 + 20
    assert "training curves" in text.lower()


def test_report_rewrites_its_own_files_but_never_a_users(fixture_evaluation: Evaluation,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(fixture_evaluation, out)
    (out / "my_notes.md").write_text("keep me")
    write_report(fixture_evaluation, out)  # a second run over its own outputs is fine
    assert (out / "my_notes.md").read_text() == "keep me"
    (out / "roc_curves.png").unlink()
    Image.new("L", (10, 10)).save(out / "roc_curves.png")  # now the user's own picture
    before = (out / "roc_curves.png").read_bytes()
    with pytest.raises(ValueError, match=r"roc_curves\.png"):
        check_output_dir(out)
    with pytest.raises(ValueError, match="did not write"):
        write_report(fixture_evaluation, out)
    assert (out / "roc_curves.png").read_bytes() == before


@pytest.mark.parametrize("left_by_training", ["history.json", "curves.png"])
def test_training_curves_come_from_the_model_folder(fixture_evaluation: Evaluation, tmp_path: Path,
                                                    left_by_training: str) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if left_by_training == "history.json":
        history = [{"epoch": e, "train_loss_epoch": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                    "train_acc": 0.5 + e / 10, "val_acc": 0.45 + e / 10} for e in range(3)]
        (model_dir / "history.json").write_text(json.dumps(history))
    else:
        Image.new("RGB", (400, 300), "white").save(model_dir / "curves.png")
    predictor = copy.copy(fixture_evaluation.predictor)
    predictor.model_dir = model_dir
    report = write_report(dataclasses.replace(fixture_evaluation, predictor=predictor),
                          tmp_path / "out")
    text = report.read_text()
    assert "(training_curves.png)" in text and str(model_dir / left_by_training) in text
    with Image.open(tmp_path / "out" / "training_curves.png") as image:
        assert image.format == "PNG" and image.size[0] >= 400
    assert (model_dir / left_by_training).exists()  # the model folder is left as it was


# -- need the real trained model (near-random stand-in until it ships) ------------------------
def test_real_model_is_accurate_on_the_fixtures(fixture_evaluation: Evaluation) -> None:
    assert fixture_evaluation.metrics["accuracy"] >= 0.9
    assert all(v is not None and v >= 0.95 for v in fixture_evaluation.metrics["auc"].values())


def test_real_model_guard_is_active_and_keeps_real_mris(fixture_evaluation: Evaluation) -> None:
    assert fixture_evaluation.rejected is not None  # the model ships an OOD guard
    assert fixture_evaluation.rejected <= 1


# -- several sources, groups and cells ----------------------------------------------------------
@pytest.fixture(scope="module")
def two_source_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``evaluate --json --stress --train-dir`` on both fixture folders (38 images)."""
    train = tmp_path_factory.mktemp("planted") / "train"
    planted_training_folder(train)
    status, stdout, stderr = run_cli("evaluate", str(FIXTURE_IMAGES), str(FIXTURE_TYPES),
                                     "--json", "--stress", "--batch-size", "16",
                                     "--backend", "onnx", "--train-dir", str(train))
    assert status == 0, stderr
    return json.loads(stdout)


def test_by_group_has_each_source_and_sequence_and_the_counts_add_up(
        two_source_json: dict) -> None:
    result = two_source_json
    assert tuple(result) == JSON_KEYS
    in_types = sum(TYPES_PER_SEQUENCE.values())
    assert result["n"] == 20 + in_types
    groups = result["by_group"]
    sources = {name: g["n"] for name, g in groups.items() if name.startswith("source:")}
    sequences = {name.removeprefix("sequence:"): g["n"] for name, g in groups.items()
                 if name.startswith("sequence:")}
    assert sources == {f"source:{source_name(FIXTURE_IMAGES)}": 20,
                       f"source:{source_name(FIXTURE_TYPES)}": in_types}
    assert sum(sources.values()) == result["n"]
    assert sequences == TYPES_PER_SEQUENCE  # Kaggle images have no sequence group
    assert len(groups) == len(sources) + len(sequences)
    for group in groups.values():
        assert set(group) == {"n", "accuracy", "macro_f1"}
        assert 0 <= group["accuracy"] <= 1 and 0 <= group["macro_f1"] <= 1
    # the cells partition the images, and every group's accuracy is its cells' weighted mean
    cells = result["by_cell"]
    assert sum(cell["n"] for cell in cells) == result["n"]
    assert len({(c["source"], c["sequence"], c["class"]) for c in cells}) == len(cells)
    for name, group in groups.items():
        kind, value = name.split(":", 1)
        members = [cell for cell in cells if cell[kind] == value]
        assert sum(cell["n"] for cell in members) == group["n"]
        assert (sum(cell["n"] * cell["accuracy"] for cell in members) / group["n"]
                == pytest.approx(group["accuracy"]))
    assert (sum(cell["n"] * cell["accuracy"] for cell in cells) / result["n"]
            == pytest.approx(result["accuracy"]))
    types_cells = {(c["sequence"], c["class"]): c["n"] for c in cells
                   if c["source"] == source_name(FIXTURE_TYPES)}
    assert types_cells == {("T1", "meningioma"): 3, ("T1", "notumor"): 3, ("T1C+", "glioma"): 3,
                           ("T2", "glioma"): 3, ("T2", "meningioma"): 3, ("T2", "notumor"): 3}


def test_stress_json_has_the_six_perturbations_on_the_leak_free_images(
        two_source_json: dict) -> None:
    stress = two_source_json["stress"]
    assert set(stress) == {*STRESS_KEYS, "n", "subset", "unperturbed"}
    assert len(STRESS_KEYS) == 6
    # with --train-dir the stress test runs on the leak-free images (3 planted duplicates)
    assert stress["subset"] == "leak_free"
    assert stress["n"] == two_source_json["leak_free"]["n"] == 38 - 3
    assert stress["unperturbed"] == pytest.approx(two_source_json["leak_free"]["accuracy"])
    for key in STRESS_KEYS:
        assert 0 <= stress[key] <= 1
        assert stress[key] * stress["n"] == pytest.approx(round(stress[key] * stress["n"]))


def test_train_dir_gives_a_shortcut_baseline_and_the_shift_check_runs(
        two_source_json: dict) -> None:
    assert 0 <= two_source_json["shortcut_baseline_accuracy"] <= 1
    warning = two_source_json["shift_warning"]
    assert warning is None or warning.startswith("Distribution shift:")


def test_stress_flip_equals_scoring_a_folder_of_mirrored_images(onnx_predictor: Predictor,
                                                                tmp_path: Path) -> None:
    predictor = onnx_predictor
    mirrored = tmp_path / "types"
    for path in FIXTURE_TYPES.glob("*/*.jpg"):
        (mirrored / path.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:  # mirrored at full size, saved losslessly
            ImageOps.mirror(image).save(mirrored / path.parent.name / f"{path.stem}.png")
    original = evaluate(predictor, FIXTURE_TYPES, batch_size=8, progress=False, stress=True)
    flipped = evaluate(predictor, mirrored, batch_size=8, progress=False)
    assert original.stress is not None
    assert (original.stress["subset"], original.stress["n"]) == ("all", 18)
    assert original.stress["unperturbed"] == pytest.approx(original.metrics["accuracy"])
    # the mirror does change the network's output, and the stress test sees the same change
    assert np.abs(original.scored.logits - flipped.scored.logits).max() > 1e-3
    assert original.stress["flip"] == pytest.approx(flipped.metrics["accuracy"])
    assert original.scored.pixels is None  # the kept pixels are dropped afterwards


def test_perturbations_gamma_histogram_swap_and_reference_choice() -> None:
    levels = np.array([[[0, 64, 255]]], dtype=np.uint8)
    assert gamma_pixels(levels, 0.5).tolist() == [[[0, 128, 255]]]  # 255 * sqrt(64/255)
    assert gamma_pixels(levels, 2.0).tolist() == [[[0, 16, 255]]]  # 255 * (64/255)^2
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 100, size=(1, 32, 32)).astype(np.uint8)
    bright = rng.integers(150, 256, size=(1, 32, 32)).astype(np.uint8)
    swapped = match_histogram_pixels(dark, bright)
    assert swapped.dtype == np.uint8 and swapped.min() >= 150
    assert abs(float(swapped.mean()) - float(bright.mean())) < 2
    order = np.argsort(dark.ravel(), kind="stable")  # brighter stays brighter
    assert (np.diff(swapped.ravel()[order].astype(int)) >= 0).all()
    labels = np.array([0, 0, 0, 1, 1, 2])
    other = pick_references(labels, rng, same_class=False)
    assert (labels[other] != labels).all()
    same = pick_references(labels, rng, same_class=True)
    assert (labels[same] == labels).all()
    assert (same[:5] != np.arange(5)).all() and same[5] == 5  # class 2 has no other image
    assert (pick_references(np.zeros(3, dtype=int), rng, same_class=False) == -1).all()


# -- shortcut audit -----------------------------------------------------------------------------
def synthetic_images(rng: np.random.Generator, means: np.ndarray) -> np.ndarray:
    """24 x 24 noise images around the given mean grey levels."""
    return np.clip(rng.normal(means[:, None, None], 25.0, size=(len(means), 24, 24)),
                   0, 255).astype(np.uint8)


def test_intensity_features_are_histogram_mean_spread_and_percentiles() -> None:
    pixels = np.stack([np.full((8, 8), 200, dtype=np.uint8),
                       np.arange(64, dtype=np.uint8).reshape(8, 8) * 4])
    features = intensity_features(pixels)
    assert features.shape == (2, 41)
    np.testing.assert_allclose(features[:, :32].sum(axis=1), 1.0)
    assert features[0, 200 * 32 // 256] == 1.0
    assert features[0, 32] == pytest.approx(200 / 255) and features[0, 33] == 0
    assert features[1, 32] == pytest.approx(pixels[1].mean() / 255)
    assert features[1, 34 + 3] == pytest.approx(np.median(pixels[1]) / 255)  # 50th percentile


def test_shortcut_classifier_reads_the_class_when_the_class_is_brightness() -> None:
    rng = np.random.default_rng(0)
    levels = np.array([50.0, 100.0, 150.0, 200.0])
    train, test = np.repeat(np.arange(4), 60), np.repeat(np.arange(4), 60)
    classifier = fit_shortcut_classifier(
        intensity_features(synthetic_images(rng, levels[train])), train, 4)
    predicted = classifier.predict(intensity_features(synthetic_images(rng, levels[test])))
    assert np.mean(predicted == test) > 0.9


def test_shortcut_classifier_is_near_chance_when_brightness_says_nothing() -> None:
    rng = np.random.default_rng(1)
    train, test = np.repeat(np.arange(4), 100), np.repeat(np.arange(4), 100)
    # every class draws its images' brightness from the same distribution
    classifier = fit_shortcut_classifier(
        intensity_features(synthetic_images(rng, rng.uniform(60, 200, len(train)))), train, 4)
    predicted = classifier.predict(
        intensity_features(synthetic_images(rng, rng.uniform(60, 200, len(test)))))
    assert 0.15 <= np.mean(predicted == test) <= 0.37  # chance: 0.25


# -- distribution shift ---------------------------------------------------------------------
def scored_with_ood(scores: list[float], sources: list[str] | None = None) -> ScoredImages:
    n = len(scores)
    return ScoredImages(roots=[Path("data")], paths=[], relative_paths=[],
                        labels=np.zeros(n, dtype=int), logits=np.zeros((n, 4)),
                        ood_scores=np.array(scores), sources=sources or ["data"] * n,
                        sequences=[""] * n)


def test_shift_rule_rejected_share_against_validation_or_median_score() -> None:
    threshold = 10.0
    tail = scored_with_ood([1.0] * 97 + [11.0] * 3)  # 3% rejected, median 10% of threshold
    assert shift_checks(tail, threshold, 0.005)[0].flagged  # 3% > 2% and > 3 x 0.5%
    assert not shift_checks(tail, threshold, 0.02)[0].flagged  # 3% is not above 3 x 2%
    assert not shift_checks(scored_with_ood([1.0] * 99 + [11.0]), threshold, 0.0)[0].flagged
    assert shift_checks(scored_with_ood([6.5] * 100), threshold, 0.0)[0].flagged  # median 65%
    assert not shift_checks(scored_with_ood([5.5] * 100), threshold, 0.0)[0].flagged
    mixed = scored_with_ood([1.0] * 50 + [7.0] * 50, ["kaggle"] * 50 + ["other"] * 50)
    checks = shift_checks(mixed, threshold, 0.005)
    assert [(c.group, c.n, c.flagged) for c in checks] == [
        ("all images", 100, False), ("kaggle", 50, False), ("other", 50, True)]
    message = shift_message(checks, threshold, 0.005)
    assert message is not None and "other (50 images)" in message and "kaggle" not in message
    assert "70% of the threshold" in message
    quiet = shift_checks(scored_with_ood([1.0] * 10), threshold, 0.0)
    assert shift_message(quiet, threshold, 0.0) is None
    assert shift_checks(scored_with_ood([1.0]), None, 0.0) == []  # no guard: no check


# -- --split -----------------------------------------------------------------------------------
def fixture_split_rows() -> list[SplitRow]:
    """Every third fixture image of each folder on the val side; half of the rows carry the
    sequence column, the other half leave it empty as older split files do."""
    rows = []
    for root in (FIXTURE_IMAGES, FIXTURE_TYPES):
        paths = sorted(p for p in root.glob("*/*.jpg") if class_of_folder(p.parent.name)[0])
        for i, path in enumerate(paths):
            label, sequence, _ = class_of_folder(path.parent.name)
            rows.append(SplitRow(path.relative_to(root).as_posix(), str(label),
                                 "val" if i % 3 == 0 else "train", i, "0" * 64,
                                 source_name(root), sequence if i % 2 else ""))
    return rows


@pytest.mark.parametrize("subset", ["val", "train"])
def test_split_scores_only_the_rows_of_the_subset(tmp_path: Path, subset: str) -> None:
    rows = fixture_split_rows()
    write_split_csv(rows, tmp_path / "split.csv")
    status, stdout, stderr = run_cli("evaluate", str(FIXTURE_IMAGES), str(FIXTURE_TYPES),
                                     "--split", str(tmp_path / "split.csv"), "--subset", subset,
                                     "--json", "--backend", "onnx")
    assert status == 0, stderr
    result = json.loads(stdout)
    chosen = [row for row in rows if row.split == subset]
    assert 0 < len(chosen) < len(rows)
    assert result["n"] == len(chosen)
    expected: dict[tuple[str, str, str], int] = {}
    for row in chosen:
        sequence = class_of_folder(row.path.split("/")[0])[1]  # known even where "" in the CSV
        key = (row.source, sequence, row.label)
        expected[key] = expected.get(key, 0) + 1
    assert {(c["source"], c["sequence"], c["class"]): c["n"]
            for c in result["by_cell"]} == expected


def test_split_sources_without_a_folder_are_left_out_and_named(tmp_path: Path) -> None:
    rows = fixture_split_rows()
    rows[0] = dataclasses.replace(rows[0], source="lgg-tcga", split="val")
    write_split_csv(rows, tmp_path / "split.csv")
    given = [str(FIXTURE_IMAGES), str(FIXTURE_TYPES), "--split", str(tmp_path / "split.csv"),
             "--backend", "onnx"]
    status, stdout, stderr = run_cli("evaluate", *given, "--json")
    assert status == 0, stderr
    assert json.loads(stdout)["n"] == sum(row.split == "val" for row in rows) - 1
    status, stdout, stderr = run_cli("evaluate", *given)
    assert status == 0, stderr
    assert "1 of source(s) lgg-tcga left out (no folder given)" in stdout


@pytest.mark.parametrize("problem", ["missing_file", "unknown_source", "empty_side",
                                     "no_file"])
def test_split_problems_exit_2_with_one_line(tmp_path: Path, problem: str) -> None:
    rows = fixture_split_rows()
    if problem == "missing_file":
        rows[0] = dataclasses.replace(rows[0], path="glioma/not_there.jpg", split="val")
    elif problem == "unknown_source":  # no val row comes from a folder given
        rows = [dataclasses.replace(row, source="elsewhere") for row in rows]
    elif problem == "empty_side":
        rows = [dataclasses.replace(row, split="train") for row in rows]
    if problem != "no_file":
        write_split_csv(rows, tmp_path / "split.csv")
    status, stdout, stderr = run_cli("evaluate", str(FIXTURE_IMAGES), str(FIXTURE_TYPES),
                                     "--split", str(tmp_path / "split.csv"))
    assert status == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("mri-tumor evaluate: error: --split",
                                                    "mri-tumor evaluate: error: split file"))
    expected = {"missing_file": "not_there.jpg", "unknown_source": "elsewhere",
                "empty_side": "no images on the 'val' side", "no_file": "no such file"}[problem]
    assert expected in lines[0]

