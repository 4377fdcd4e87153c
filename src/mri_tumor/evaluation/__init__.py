"""Evaluation stage: score labelled folders, compute metrics, check for leakage and
shortcuts, stress the model, report.

    evaluation = evaluate(predictor, collect_images([data_dir]), train_dirs=[train_dir])
    print(evaluation.metrics["accuracy"])

(the ``mri-tumor evaluate`` command in ``cli`` wraps this and ``report``; ``evaluate --scans``
wraps ``scans``, ``compare`` wraps ``comparison``.)

Probabilities come from the predictor's own network outputs on exactly the pixels it would
see (``read_image`` then ``to_model_pixels``), so the numbers describe the model as
users run it. Images are decoded in a small thread pool while the previous batch is scored.

Each data folder is a *source*. Metrics are also given per source and per MR sequence
(``by_group``) and per source x sequence x class (``by_cell``). With a split file only the
images on one side of it (default ``val``) are scored: that is how a model's own validation
images are measured.

With training folders, every evaluation image that has an exact or near-duplicate there
(perceptual hash, mirrored copies included) is flagged and all metrics are given twice: on
all images and on the leak-free rest. A classifier that sees nothing but brightness
statistics is fitted on the training images and scored on the evaluated ones (the shortcut
audit): when it does well, the labels can be read off the source's brightness. ``--stress``
scores the images again after histogram swaps, gamma changes and a mirror, and the model's
out-of-distribution scores tell whether the folder looks unlike its training data.
Modules, in the order an evaluation runs: ``images``, ``scoring``, ``leakage``, ``groups``,
``shortcut``, ``stress``, ``shift``, ``evaluate``; then ``report``. Research tool, not a
diagnosis.
"""

from mri_tumor.evaluation.evaluate import JSON_KEYS, Evaluation, Mistake, evaluate
from mri_tumor.evaluation.images import ImageSet, collect_images, split_training_rows
from mri_tumor.evaluation.scoring import ScoredImages, compute_metrics, score_images
from mri_tumor.evaluation.shift import SHIFT_RULE

__all__ = ["JSON_KEYS", "SHIFT_RULE", "Evaluation", "ImageSet", "Mistake", "ScoredImages",
           "collect_images", "compute_metrics", "evaluate", "score_images",
           "split_training_rows"]
