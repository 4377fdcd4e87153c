"""The evaluation report: ``report.md`` with figures beside it, and the console summary.

Everything written carries a mark (a first-line comment in ``report.md``, a PNG text chunk,
the CSV header), and a file in the output folder is only ever overwritten when it carries
that mark: a user's own ``report.md`` is never replaced.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, PngImagePlugin

from mri_tumor import figures, metrics
from mri_tumor.card import DISCLAIMER
from mri_tumor.columns import probability_columns
from mri_tumor.data.reading import ImageReadError, read_image
from mri_tumor.data.splitting import NEAR_DUPLICATE_BITS
from mri_tumor.evaluation.tables import (
    cell_rows,
    confusion_rows,
    display_names,
    group_rows,
    headline,
    interval_note,
    metrics_rows,
    number,
    render_table,
    sequence_headline,
    sequence_rows,
    stress_rows,
    stress_subset,
    with_interval,
)

if TYPE_CHECKING:
    from mri_tumor.evaluation.evaluate import Evaluation

REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FIGURE = "confusion_matrix.png"
CONFUSION_LEAK_FREE_FIGURE = "confusion_matrix_leak_free.png"
ROC_FIGURE = "roc_curves.png"
RELIABILITY_FIGURE = "reliability.png"
TRAINING_FIGURE = "training_curves.png"
MISTAKES_FIGURE = "worst_mistakes.png"
FIGURES = (CONFUSION_FIGURE, CONFUSION_LEAK_FREE_FIGURE, ROC_FIGURE, RELIABILITY_FIGURE,
           TRAINING_FIGURE, MISTAKES_FIGURE)
OUTPUT_FILES = (REPORT_FILE, PREDICTIONS_FILE, *FIGURES)

SIGNATURE = "mri-tumor evaluate"
REPORT_MARK = f"<!-- written by {SIGNATURE}: running it again overwrites this file -->"
PREDICTION_COLUMNS_START = ["path", "true_label", "predicted_label", "confidence", "correct"]
MAX_GALLERY = 12
MAX_LISTED_DUPLICATES = 50


# -- output folder safety ------------------------------------------------------------------
def is_own_output(path: Path) -> bool:
    """True when ``path`` is a regular file that an earlier report run wrote."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        if path.suffix == ".png":
            with Image.open(path) as image:
                return getattr(image, "text", {}).get("Software") == SIGNATURE
        with path.open(encoding="utf-8", errors="replace") as handle:
            first_line = handle.readline().rstrip("\r\n")
    except (OSError, SyntaxError, ValueError):
        return False
    if path.name == REPORT_FILE:
        return first_line == REPORT_MARK
    return first_line.split(",")[:len(PREDICTION_COLUMNS_START)] == PREDICTION_COLUMNS_START


def check_output_dir(out: Path) -> None:
    """Raise ValueError unless the report can be written into ``out`` without destroying
    anything but its own earlier outputs. Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out}: exists and is not a folder")
    if not out.exists():
        return
    foreign = [name for name in OUTPUT_FILES
               if ((out / name).exists() or (out / name).is_symlink())
               and not is_own_output(out / name)]
    if foreign:
        raise ValueError(f"report folder {out}: would overwrite {', '.join(foreign)}, which "
                         f"{SIGNATURE} did not write; choose another folder or move them")


def _png_metadata() -> dict[str, str]:
    return {"Software": SIGNATURE}


def _remove_stale(out: Path, written: set[str]) -> None:
    """Delete own outputs of an earlier run that this run did not produce (e.g. a leak-free
    confusion matrix from a run with --train-dir), so the folder matches report.md."""
    for name in OUTPUT_FILES:
        path = out / name
        if name not in written and is_own_output(path):
            path.unlink()


def write_training_curves(model_dir: Path | None, path: Path) -> str | None:
    """Copy the model run's ``curves.png`` or plot its ``history.json`` into ``path``.

    Returns where the curves came from, or None when the model folder has neither.
    """
    if model_dir is None:
        return None
    curves, history_file = Path(model_dir) / "curves.png", Path(model_dir) / "history.json"
    if curves.is_file():
        try:
            with Image.open(curves) as image:
                info = PngImagePlugin.PngInfo()
                info.add_text("Software", SIGNATURE)
                image.save(path, format="PNG", pnginfo=info)  # re-saved to carry our mark
            return str(curves)
        except (OSError, SyntaxError, ValueError):
            pass
    if history_file.is_file():
        try:
            history = json.loads(history_file.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(history, dict):  # {"sources": [...], "epochs": [...]} since multi-source
            history = history.get("epochs")
        if isinstance(history, list) and history and all(isinstance(r, dict) for r in history):
            figures.plot_history(history, path, metadata=_png_metadata())
            return str(history_file)
    return None


def _thumbnail(path: Path) -> np.ndarray | None:
    """A mistake's picture for the gallery: at most 256 px a side, None when unreadable."""
    try:
        image = read_image(path)
    except (ImageReadError, OSError):
        return None
    image.thumbnail((256, 256))
    return np.asarray(image)


def _shortcut_sentence(evaluation: Evaluation) -> str | None:
    """The shortcut audit in one or two sentences (None without --train-dir)."""
    baseline = evaluation.shortcut_accuracy
    if baseline is None:
        return None
    labels = evaluation.scored.labels
    chance = float(np.bincount(labels).max() / len(labels))  # always guessing the largest class
    model = evaluation.metrics["accuracy"]
    lead = (f"Shortcut audit: a classifier that sees only brightness statistics (a 32-bin "
            f"histogram, the mean, the spread and percentiles of the grey levels; nothing "
            f"spatial), fitted on the training folder(s), reaches {baseline:.1%} here, against "
            f"the model's {model:.1%} (always guessing the largest class: {chance:.1%}). ")
    if baseline >= chance + (1 - chance) / 3:
        sentence = (f"Brightness alone reaching {baseline:.0%} means the labels of this data "
                    "can largely be read off the source's brightness, so a model's accuracy "
                    "here can overstate how it does on other sources.")
        if evaluation.predictor.spec.intensity == "equalize":
            sentence += (" This model equalises every input's histogram, so it never sees the "
                         "raw brightness; other traces of the source (texture, framing, "
                         "sequence) can still carry the label: compare sources and sequences.")
        return lead + sentence
    return lead + ("Brightness alone says little about the labels of this data, so the model's "
                   "accuracy here is not explained by that shortcut.")


def _shift_line(evaluation: Evaluation) -> str:
    from mri_tumor.evaluation.shift import SHIFT_RULE  # the rule's wording lives with the rule

    checks = evaluation.shift
    if not checks:
        return ("Distribution shift: not checked (the model has no out-of-distribution "
                "guard).")
    if evaluation.shift_warning:
        return f"**Warning.** {evaluation.shift_warning} (Rule: {SHIFT_RULE}.)"
    overall = checks[0]
    threshold = evaluation.predictor.ood_threshold or 1.0
    return (f"Distribution shift: none flagged ({overall.rejected_share:.1%} rejected, median "
            f"OOD score {overall.median_score:.2f} = {overall.median_score / threshold:.0%} of "
            f"the threshold; rule: {SHIFT_RULE}).")


def _guard_line(evaluation: Evaluation) -> str:
    rejected = evaluation.rejected
    if rejected is None:
        return ("Out-of-distribution guard: this model has none, so no image would be "
                "rejected as 'not a brain MRI'.")
    return (f"Out-of-distribution guard: {rejected} of {evaluation.metrics['n']} images would be "
            "rejected as 'not a brain MRI' by the predictor; they are still scored above.")


def _leak_line(evaluation: Evaluation) -> str | None:
    leaked = evaluation.leaked
    if leaked is None or evaluation.training is None or evaluation.leak_free is None:
        return None
    return (f"Leakage: {int(leaked.sum())} of {len(leaked)} images have an exact or near "
            f"duplicate among the {len(evaluation.training.relative_paths)} training images; "
            f"leak-free subset ({evaluation.leak_free['n']} images): "
            f"{headline(evaluation.leak_free, _intervals(evaluation, 'leak_free'))}")


def _intervals(evaluation: Evaluation, part: str) -> Any:
    """The bootstrap intervals of ``part`` (``all``, ``leak_free``, ``by_group``), or None."""
    return (evaluation.intervals or {}).get(part)


def format_summary(evaluation: Evaluation, report_path: Path | None = None) -> str:
    """The console summary: headline, tables, guard and leakage lines, then the disclaimer."""
    m = evaluation.metrics
    names, shown = evaluation.class_names, evaluation.display_names
    selection = evaluation.scored.selection
    lines = [f"Evaluated {m['n']} images of {evaluation.scored.location}"
             + (f" ({selection})" if selection else "") + f" in "
             f"{evaluation.seconds:.1f} s ({m['n'] / max(evaluation.seconds, 1e-9):.0f} images/s"
             f", {evaluation.predictor.backend.name} backend, "
             f"TTA {'on' if evaluation.tta else 'off'})"]
    skipped = evaluation.scored.skipped
    if skipped:
        lines.append(f"Skipped {len(skipped)} file(s):")
        lines += [f"  {path}: {reason}" for path, reason in skipped]
    lines += ["", f"All images: {headline(m, _intervals(evaluation, 'all'))}"]
    lines += [line for line in (interval_note(evaluation.intervals),
                                evaluation.small_group_warning) if line]
    lines += ["",
              render_table(metrics_rows(m, names, shown), markdown=False), "",
              "Confusion matrix (rows = true class, columns = predicted class):",
              render_table(confusion_rows(m, names, shown), markdown=False), "",
              _guard_line(evaluation)]
    leak_line = _leak_line(evaluation)
    if leak_line:
        lines += [leak_line]
    lines += [_shift_line(evaluation).replace("**", "")]
    shortcut = _shortcut_sentence(evaluation)
    if shortcut:
        lines += ["", shortcut]
    if evaluation.by_group:
        lines += ["", "By group (source, MR sequence):",
                  render_table(group_rows(evaluation.by_group,
                                          _intervals(evaluation, "by_group")), markdown=False)]
    if evaluation.sequence is not None:
        lines += ["", sequence_headline(evaluation.sequence),
                  render_table(sequence_rows(evaluation.sequence), markdown=False)]
    if evaluation.stress is not None:
        lines += ["", f"Stress test on {stress_subset(evaluation.stress)}:",
                  render_table(stress_rows(evaluation.stress), markdown=False)]
    if report_path is not None:
        lines += ["", f"Report: {report_path}"]
    lines += ["", DISCLAIMER]
    return "\n".join(lines)


# -- report.md -----------------------------------------------------------------------------
def _metrics_section(result: dict[str, Any], class_names: Sequence[str],
                     display: Mapping[str, str], intervals: Any = None) -> list[str]:
    return [f"**{result['n']} images**: {headline(result, intervals)}.", "",
            render_table(metrics_rows(result, class_names, display), markdown=True), "",
            "Confusion matrix (rows = true class, columns = predicted class):", "",
            render_table(confusion_rows(result, class_names, display), markdown=True), ""]


def _model_lines(evaluation: Evaluation) -> list[str]:
    card = evaluation.predictor.card
    validation, trained = card.metrics.validation, card.training
    lines = [f"- Model: `{card.architecture}` version {card.version or '-'} "
             f"(created {card.created or '-'}), folder `{evaluation.predictor.model_dir}`",
             f"- Input {card.image_size} x {card.image_size}, {card.color_mode}, intensity "
             f"`{card.intensity}`; calibration temperature T = {card.temperature:.4f}"]
    if trained.epochs_run is not None:
        train_counts = trained.split_counts.get("train")
        lines.append(f"- Trained for {trained.epochs_run} epoch(s) on {trained.hardware or '-'}"
                     + (f"; training images per class: {json.dumps(train_counts)}"
                        if train_counts else ""))
    if len(trained.sources) > 1:
        lines.append("- Sources: " + ", ".join(f"`{s.get('name')}`" for s in trained.sources))
    if validation is not None:
        lines.append("- Validation (from the model card): accuracy "
                     f"{number(validation.accuracy)}, macro-F1 {number(validation.macro_f1)}")
    return lines


def _write_predictions(evaluation: Evaluation, path: Path) -> None:
    probabilities = evaluation.probabilities()
    predicted = evaluation.predicted
    names = evaluation.class_names
    duplicates = evaluation.duplicates
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*PREDICTION_COLUMNS_START, *probability_columns(names), "ood_score",
                         "ood_rejected", "training_duplicate", "source", "sequence"])
        scores = evaluation.scored.ood_scores
        threshold = evaluation.predictor.ood_threshold
        for i, relative in enumerate(evaluation.scored.relative_paths):
            true_label, label = names[evaluation.scored.labels[i]], names[predicted[i]]
            duplicate = ""
            if duplicates is not None:
                duplicate = (f"{duplicates[i][0].train_path} ({duplicates[i][0].kind})"
                             if duplicates[i] else "none")
            writer.writerow([relative, true_label, label, f"{probabilities[i, predicted[i]]:.4f}",
                             "yes" if true_label == label else "no",
                             *(f"{p:.4f}" for p in probabilities[i]),
                             "" if scores is None else f"{scores[i]:.4f}",
                             "" if scores is None or threshold is None
                             else "yes" if scores[i] > threshold else "no", duplicate,
                             evaluation.scored.sources[i], evaluation.scored.sequences[i]])


def write_report(evaluation: Evaluation, out: Path) -> Path:
    """Write ``report.md``, its figures and ``predictions.csv`` into ``out``; returns the
    report's path. Refuses (ValueError) to overwrite files it did not write itself."""
    out = Path(out)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    names, shown = evaluation.class_names, evaluation.display_names
    m = evaluation.metrics
    scored = evaluation.scored
    written = {REPORT_FILE, PREDICTIONS_FILE}
    calibrated, uncalibrated = evaluation.probabilities(), evaluation.probabilities(False)

    mark = _png_metadata()
    figures.plot_confusion_matrix(np.array(m["confusion_matrix"]), names, out / CONFUSION_FIGURE,
                                  f"Confusion matrix, all {m['n']} images", shown, mark)
    figures.plot_roc_curves(calibrated, scored.labels, names, out / ROC_FIGURE, shown, mark)
    figures.plot_reliability(uncalibrated, calibrated, scored.labels, evaluation.temperature,
                             out / RELIABILITY_FIGURE, mark)
    written |= {CONFUSION_FIGURE, ROC_FIGURE, RELIABILITY_FIGURE}
    _write_predictions(evaluation, out / PREDICTIONS_FILE)

    folders = ", ".join(f"`{root}`" for root in scored.roots)
    lines = [REPORT_MARK, f"# Evaluation report: `{evaluation.predictor.card.architecture}` on "
             f"{folders}", "", f"> **{DISCLAIMER}**", "",
             f"- Data: {folders}"
             + (f" ({scored.selection})" if scored.selection else "")
             + f": {m['n']} images scored, {len(scored.skipped)} file(s) skipped",
             *_model_lines(evaluation),
             f"- Backend {evaluation.predictor.backend.name}, test-time augmentation "
             f"{'on (image + mirror, logits averaged)' if evaluation.tta else 'off'}; "
             f"{evaluation.seconds:.1f} s for decoding and scoring "
             f"({m['n'] / max(evaluation.seconds, 1e-9):.0f} images/s)",
             f"- Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]

    lines += ["## Summary", ""]
    def summary_row(label: str, result: dict[str, Any], intervals: Any) -> list[str]:
        return [label, str(result["n"]),
                *(with_interval(result[key], (intervals or {}).get(key))
                  for key in ("accuracy", "macro_f1", "ece")),
                number(result["ece_uncalibrated"])]

    summary = [["images", "n", "accuracy", "macro-F1", "ECE", "ECE before calibration"],
               summary_row("all", m, _intervals(evaluation, "all"))]
    leak_free = evaluation.leak_free
    if leak_free is not None:
        summary.append(summary_row("leak-free (no duplicate in training)", leak_free,
                                   _intervals(evaluation, "leak_free")))
    shortcut = _shortcut_sentence(evaluation)
    if evaluation.shortcut_accuracy is not None:
        summary.append(["all, brightness-only classifier (shortcut audit)", str(m["n"]),
                        number(evaluation.shortcut_accuracy), "-", "-", "-"])
    lines += [render_table(summary, markdown=True), ""]
    if note := interval_note(evaluation.intervals):
        lines += [note, ""]
    if evaluation.small_group_warning:
        lines += [f"**{evaluation.small_group_warning}**", ""]
    if shortcut:
        lines += [shortcut, ""]
    lines += [_guard_line(evaluation), "", _shift_line(evaluation), ""]
    if evaluation.shift:
        shift = [["images", "n", "rejected by the guard", "median OOD score",
                  "share of the threshold", "flagged"]]
        threshold = evaluation.predictor.ood_threshold or 1.0
        shift += [[c.group if c.group == "all images" else f"`{c.group}`", str(c.n),
                   f"{c.rejected_share:.1%}", f"{c.median_score:.3f}",
                   f"{c.median_score / threshold:.0%}", "yes" if c.flagged else "no"]
                  for c in evaluation.shift]
        lines += [render_table(shift, markdown=True), ""]
    if leak_free is None:
        lines += ["No training folder was given (`--train-dir`), so these images were not "
                  "checked for duplicates of training images. If any are, these numbers are "
                  "optimistic.", ""]

    if evaluation.by_group or evaluation.by_cell:
        lines += ["## By source and sequence", ""]
        if evaluation.by_group:
            lines += ["Per source (when there are several) and per MR sequence (where the "
                      "folder names tell it):", "",
                      render_table(group_rows(evaluation.by_group,
                                              _intervals(evaluation, "by_group")),
                                   markdown=True), ""]
        lines += ["Source x sequence x class (the accuracy of a cell is the recall of its "
                  "class there):", "",
                  render_table(cell_rows(evaluation.by_cell, shown), markdown=True), ""]

    lines += ["## All images", "", *_metrics_section(m, names, shown,
                                                      _intervals(evaluation, "all")),
              f"![Confusion matrix]({CONFUSION_FIGURE})", "",
              "### ROC curves", "",
              "One class against the rest, on the calibrated probabilities. The AUC is "
              "computed from ranks, ties counting one half.", "",
              f"![ROC curves]({ROC_FIGURE})", "",
              "### Calibration", "",
              f"Expected calibration error ({metrics.ECE_BINS} equal-width bins of the top-class "
              f"confidence): "
              f"{number(m['ece_uncalibrated'])} before and {number(m['ece'])} after temperature "
              f"scaling with T = {evaluation.temperature:.4f} from the model card. Bars below "
              "the diagonal mean over-confidence.", "",
              f"![Reliability diagram]({RELIABILITY_FIGURE})", ""]

    if evaluation.sequence is not None:
        lines += ["## MR sequence", "", sequence_headline(evaluation.sequence), "",
                  render_table(sequence_rows(evaluation.sequence), markdown=True), ""]

    if leak_free is not None and evaluation.training is not None:
        lines += _leak_section(evaluation, out, written)

    if evaluation.stress is not None:
        lines += ["## Stress test", "",
                  f"Accuracy on {stress_subset(evaluation.stress)} after each change of the "
                  "model-size grey pixels, scored through the model's own preprocessing. The "
                  "histogram swap gives each image the grey-level histogram of a random image "
                  "of another class: a model that reads the class off the brightness falls "
                  "there, while the same-class swap (the control) should cost little. Random "
                  "choices use a fixed seed.", "",
                  render_table(stress_rows(evaluation.stress), markdown=True), ""]

    mistakes = evaluation.worst_mistakes(MAX_GALLERY)
    lines += ["## Worst mistakes", ""]
    if mistakes:
        figures.plot_mistakes(mistakes, [_thumbnail(x.path) for x in mistakes],
                              out / MISTAKES_FIGURE, shown, _png_metadata())
        written.add(MISTAKES_FIGURE)
        wrong = int((evaluation.predicted != scored.labels).sum())
        lines += [f"The {len(mistakes)} most confident of {wrong} mistakes:", "",
                  f"![Worst mistakes]({MISTAKES_FIGURE})", ""]
        table = [["file", "true class", "predicted class", "confidence"]]
        table += [[f"`{x.relative_path}`", *display_names([x.true_label, x.predicted_label], shown),
                   f"{x.confidence:.1%}"] for x in mistakes]
        lines += [render_table(table, markdown=True), ""]
    else:
        lines += ["No image was misclassified.", ""]

    lines += ["## Training curves", ""]
    source = write_training_curves(evaluation.predictor.model_dir, out / TRAINING_FIGURE)
    if source:
        written.add(TRAINING_FIGURE)
        lines += [f"From `{source}`:", "", f"![Training curves]({TRAINING_FIGURE})", ""]
    else:
        lines += ["The model folder holds no `curves.png` or `history.json` from its training "
                  "run.", ""]

    if scored.skipped:
        lines += ["## Skipped files", "", f"{len(scored.skipped)} file(s) could not be "
                  "evaluated:", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in scored.skipped] + [""]

    lines += ["---", "", f"*{DISCLAIMER}*", ""]
    (out / REPORT_FILE).write_text("\n".join(lines), encoding="utf-8")
    _remove_stale(out, written)
    return out / REPORT_FILE


def _leak_section(evaluation: Evaluation, out: Path, written: set[str]) -> list[str]:
    leak_free, training = evaluation.leak_free, evaluation.training
    duplicates, leaked = evaluation.duplicates, evaluation.leaked
    assert leak_free is not None and training is not None
    assert duplicates is not None and leaked is not None
    names, shown = evaluation.class_names, evaluation.display_names
    kinds = [found[0].kind.split(" (")[0] for found in duplicates if found]
    counts = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    lines = ["## Leak-free subset", "",
             f"Training folder(s) {', '.join(f'`{r}`' for r in training.roots)}: "
             f"{len(training.relative_paths)} images hashed"
             f"{f', {len(training.skipped)} file(s) skipped' if training.skipped else ''}. "
             f"{int(leaked.sum())} of {len(leaked)} evaluation images have a duplicate there "
             f"({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}): a 256-bit "
             f"perceptual hash of the image or of its mirror within {NEAR_DUPLICATE_BITS} bits "
             "of a training image's. Metrics on the remaining images, which the model cannot have "
             "memorised:", ""]
    if leak_free["n"]:
        lines += _metrics_section(leak_free, names, shown, _intervals(evaluation, "leak_free"))
        figures.plot_confusion_matrix(np.array(leak_free["confusion_matrix"]), names,
                                      out / CONFUSION_LEAK_FREE_FIGURE,
                                      f"Confusion matrix, {leak_free['n']} leak-free images",
                                      shown, _png_metadata())
        written.add(CONFUSION_LEAK_FREE_FIGURE)
        lines += [f"![Confusion matrix, leak-free images]({CONFUSION_LEAK_FREE_FIGURE})", ""]
    else:
        lines += ["Every evaluation image has a duplicate in the training folder: there is no "
                  "leak-free subset to score.", ""]
    if leaked.any():
        table = [["evaluation image", "training duplicate", "match"]]
        for relative, found in zip(evaluation.scored.relative_paths, duplicates, strict=True):
            if found and len(table) <= MAX_LISTED_DUPLICATES:
                more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
                table.append([f"`{relative}`", f"`{found[0].train_path}`{more}", found[0].kind])
        listed = len(table) - 1
        lines += [f"Duplicates found ({listed} of {int(leaked.sum())} listed; all are in "
                  f"`{PREDICTIONS_FILE}`):", "", render_table(table, markdown=True), ""]
    return lines
