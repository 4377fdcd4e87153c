"""The shift check: does a set of images look unlike the training data, by the model's
out-of-distribution scores?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mri_tumor.inference import Predictor

if TYPE_CHECKING:
    from mri_tumor.evaluation.scoring import ScoredImages

# Distribution shift: a set of images is flagged as unlike the training data when
#   (a) the out-of-distribution guard rejects more than SHIFT_MIN_REJECTED (2%) of it AND more
#       than SHIFT_REJECT_FACTOR (3) times the share it rejected on the model's own validation
#       images (card: metrics.validation.ood_rejected; 0 when the card does not record it), or
#   (b) its median OOD score is above SHIFT_MEDIAN_FRACTION (60%) of the rejection threshold.
# (a) catches a folder with a tail of clearly foreign images, (b) one that is shifted as a
# whole while most images still pass the guard. Checked on all images, and per source when
# there are several.
SHIFT_REJECT_FACTOR = 3.0


SHIFT_MIN_REJECTED = 0.02


SHIFT_MEDIAN_FRACTION = 0.6


SHIFT_RULE = (f"flagged when the guard rejects more than {SHIFT_MIN_REJECTED:.0%} of the images "
              f"and more than {SHIFT_REJECT_FACTOR:g}x its rejection rate on the model's "
              f"validation images, or when the median OOD score is above "
              f"{SHIFT_MEDIAN_FRACTION:.0%} of the rejection threshold")


# -- distribution shift ----------------------------------------------------------------------
@dataclass(frozen=True)
class ShiftCheck:
    """How one set of images (all of them, or one source) fares with the OOD guard."""

    group: str  # "all images" or a source name
    n: int
    rejected_share: float
    median_score: float
    flagged: bool


def validation_rejected_share(predictor: Predictor) -> float | None:
    """The share of its validation images the guard rejected, from the model card."""
    validation = predictor.card.metrics.validation
    return None if validation is None else validation.ood_rejected


def shift_checks(scored: ScoredImages, threshold: float | None,
                 validation_share: float | None) -> list[ShiftCheck]:
    """The rule of ``SHIFT_RULE`` (see the constants) on all images and, with two or more
    sources, on each source; empty without a guard."""
    if threshold is None or scored.ood_scores is None:
        return []
    scores = np.asarray(scored.ood_scores, dtype=np.float64)
    sources = np.array(scored.sources)
    groups = [("all images", np.ones(len(scores), dtype=bool))]
    if len(set(scored.sources)) > 1:
        groups += [(name, sources == name) for name in sorted(set(scored.sources))]
    bar = max(SHIFT_MIN_REJECTED, SHIFT_REJECT_FACTOR * (validation_share or 0.0))
    checks = []
    for name, mask in groups:
        rejected = float((scores[mask] > threshold).mean())
        median = float(np.median(scores[mask]))
        flagged = rejected > bar or median > SHIFT_MEDIAN_FRACTION * threshold
        checks.append(ShiftCheck(name, int(mask.sum()), rejected, median, flagged))
    return checks


def shift_message(checks: list[ShiftCheck], threshold: float | None,
                  validation_share: float | None) -> str | None:
    """One warning naming every flagged set of images, or None."""
    flagged = [c for c in checks if c.flagged]
    if not flagged or threshold is None:
        return None
    # with several sources, the sources tell where the shift is; "all images" adds nothing
    named = [c for c in flagged if c.group != "all images"] or flagged
    validation = "not recorded" if validation_share is None else f"{validation_share:.1%}"
    parts = []
    for c in named:
        which = f"all {c.n} images" if c.group == "all images" else f"{c.group} ({c.n} images)"
        parts.append(f"{which}: {c.rejected_share:.1%} rejected by the out-of-distribution "
                     f"guard (validation: {validation}), median OOD score "
                     f"{c.median_score:.2f} = {c.median_score / threshold:.0%} of the "
                     f"threshold {threshold:.2f}")
    return ("Distribution shift: the images look unlike the model's training data; expect "
            "accuracy below its validation figure. " + "; ".join(parts) + ".")
