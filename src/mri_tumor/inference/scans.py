"""One answer per scan (a NIfTI volume or a DICOM series) and per study, from its slices.

The rule (``ScanRule``, stored in the model card as ``scan_rule``):

1. the scan's readable slices in stack order give a curve of tumour probability, ``1 -
   p(normal class)`` per slice;
2. its statistic is the highest mean of that curve over ``window`` consecutive readable
   slices: a tumour spans several neighbouring slices, a stray slice does not;
3. a logistic map of the statistic's logit (``slope``, ``intercept``, fitted on the scans of
   training patients and healthy training volumes, ``fit_scan_rule``) gives the scan's
   calibrated tumour probability; at ``threshold`` or above the answer is the tumour class
   with the most probability over those slices, else the normal class;
4. a scan with fewer than ``min_slices`` readable slices, or with more than
   ``max_refused_share`` of its slices refused, is ``not_assessable``, with the reason.

The answer is never one slice's maximum. A study (several series given together, e.g. T1,
FLAIR and T1C+ of one patient) takes the answer of its series with the highest tumour
probability. Research tool, not a diagnosis.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCAN_OK = "ok"
NOT_ASSESSABLE = "not_assessable"
# A slice called a tumour class this surely, in a scan answered "no tumour", is reported as
# a disagreement, with its index.
DISAGREE_SLICE_PROBABILITY = 0.9
# In a tumour answer, the slices called a tumour name several classes when the runner-up
# holds at least this share of them.
DISAGREE_CLASS_SHARE = 0.25


@dataclass(frozen=True)
class ScanRule:
    """How slice probabilities become one scan answer (see the module docstring)."""

    window: int = 3
    slope: float = 1.0
    intercept: float = 0.0
    threshold: float = 0.5
    min_slices: int = 3
    max_refused_share: float = 0.5
    fitted_on: str = "not fitted: the window statistic itself"
    # Per MR sequence, what was measured about this model's scan answers on it, said with
    # every answer for a scan whose file name or header names that sequence.
    cautions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_card(cls, card: Any) -> ScanRule:
        """The card's rule, or the unfitted default for a card without one."""
        raw = getattr(card, "scan_rule", None) or {}
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def probability(self, statistic: float) -> float:
        """Calibrated scan tumour probability from the window statistic."""
        p = min(max(statistic, 1e-6), 1 - 1e-6)
        z = self.slope * math.log(p / (1 - p)) + self.intercept
        return 1.0 / (1.0 + math.exp(-z))


def window_statistic(curve: Sequence[float], window: int) -> tuple[float, int]:
    """Highest mean of ``curve`` over ``window`` consecutive values, and where that window
    starts (the mean of all values when there are fewer)."""
    values = np.asarray(curve, dtype=np.float64)
    if len(values) == 0:
        return 0.0, 0
    if len(values) <= window:
        return float(values.mean()), 0
    sums = np.convolve(values, np.ones(window), mode="valid") / window
    start = int(np.argmax(sums))
    return float(sums[start]), start


def fit_scan_rule(curves: Sequence[Sequence[float]], has_tumour: Sequence[bool],
                  window: int = 3, fitted_on: str = "") -> ScanRule:
    """Fit the rule's logistic map on scans whose answer is known (balanced classes, a
    little L2 so that separable data still gives finite values)."""
    from scipy.optimize import minimize

    stats = np.array([window_statistic(c, window)[0] for c in curves])
    x = np.log(np.clip(stats, 1e-6, 1 - 1e-6) / (1 - np.clip(stats, 1e-6, 1 - 1e-6)))
    y = np.asarray(has_tumour, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("fitting a scan rule needs scans with and without tumour")
    weights = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))

    def loss(theta: np.ndarray) -> float:
        z = theta[0] * x + theta[1]
        nll = np.logaddexp(0, z) - y * z
        return float((weights * nll).mean() + 1e-3 * theta[0] ** 2)

    slope, intercept = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead").x
    return ScanRule(window=window, slope=round(float(slope), 4),
                    intercept=round(float(intercept), 4), fitted_on=fitted_on)


def summarise_scan(slices: Sequence[Any], refused: int, rule: ScanRule,
                   normal_class: str | None, source: str, series: str | None = None,
                   note: str = "", named_sequence: str = "") -> dict[str, Any]:
    """One scan's answer from its readable slice results (``Prediction``s with
    probabilities, in stack order) and the number of its slices that were refused. A scan
    whose name or header names a sequence with a caution in the rule carries it
    (``caution``, and at the end of ``message``)."""
    caution = rule.cautions.get(named_sequence, "")
    if caution:
        note = "; ".join(part for part in (note, f"caution: {caution}") if part)
    total = len(slices) + refused
    base: dict[str, Any] = {"source": source, "series": series, "slices": len(slices),
                            "refused": refused}
    if caution:
        base.update(named_sequence=named_sequence, caution=caution)
    why = ""
    if total and refused / total > rule.max_refused_share:
        why = f"most slices ({refused} of {total}) were refused as not brain MRI"
    elif len(slices) < rule.min_slices:
        why = (f"too few readable brain slices ({len(slices)} of {total}; at least "
               f"{rule.min_slices} are needed)")
    if why:
        return {**base, "status": NOT_ASSESSABLE, "label": None, "probability": None,
                "message": f"not assessable: {why}" + (f"; {note}" if note else "")}
    names = list(slices[0].probabilities)
    matrix = np.array([[s.probabilities[n] for n in names] for s in slices])
    tumour_columns = [i for i, n in enumerate(names) if n != normal_class]
    curve = (1 - matrix[:, names.index(normal_class)] if normal_class in names
             else matrix.max(axis=1))
    statistic, start = window_statistic(curve.tolist(), rule.window)
    key = list(range(start, min(start + rule.window, len(slices))))
    p_tumour = rule.probability(statistic) if normal_class in names else statistic
    called = [names[tumour_columns[int(np.argmax(row[tumour_columns]))]]
              for row, c in zip(matrix, curve, strict=True) if c >= 0.5]
    if normal_class in names and p_tumour < rule.threshold:
        label, probability = normal_class, 1 - p_tumour
        sure = [i for i, c in enumerate(curve) if c >= DISAGREE_SLICE_PROBABILITY]
        disagree = bool(sure)
        key = sure[:5] if sure else [int(np.argmax(curve))]
        detail = (f"; {len(sure)} slice(s) called a tumour class with >= "
                  f"{DISAGREE_SLICE_PROBABILITY:.0%} (review them)" if sure else "")
    else:
        label = names[tumour_columns[int(np.argmax(matrix[key][:, tumour_columns].sum(0)))]]
        probability = p_tumour
        votes = Counter(called).most_common()
        disagree = len(votes) > 1 and votes[1][1] >= DISAGREE_CLASS_SHARE * len(called)
        detail = ("; the tumour slices name several classes ("
                  + ", ".join(f"{n} {c}" for n, c in votes) + ")" if disagree else "")
    message = (f"scan answer {label}: scan-level probability {probability:.1%} from the "
               f"{rule.window} most tumour-like consecutive slices{detail}")
    if note:
        message += f"; {note}"
    return {**base, "status": SCAN_OK, "label": label, "probability": round(probability, 4),
            "tumour_probability": round(p_tumour, 4),
            "key_slices": [_slice_id(slices[i]) for i in key], "disagree": disagree,
            # How they disagree, in words ("" when they do not): what a front end shows.
            "disagreement": detail.removeprefix("; "),
            "slice_labels": dict(Counter(s.label for s in slices)), "message": message}


def _slice_id(result: Any) -> int | str:
    return result.slice_index if result.slice_index is not None else result.path


def scan_summaries(results: Iterable[Any], card: Any) -> list[dict[str, Any]]:
    """One summary per scan among the results: every NIfTI volume and every DICOM series of
    two or more slices (``Prediction.series``); two or more DICOM files of one series
    refused by their header form one ``not_assessable`` scan ("not an MR series")."""
    rule = ScanRule.from_card(card)
    normal = getattr(card, "normal_class", None)
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for result in results:
        if result.series is None:
            continue
        key = (result.scan or "", result.series)
        group = groups.setdefault(key, {"ok": [], "refused": 0, "header": [], "note": "",
                                        "sequence": "", "first": result.path})
        group["note"] = group["note"] or getattr(result, "note", "")
        group["sequence"] = group["sequence"] or getattr(result, "named_sequence", "")
        if result.status == SCAN_OK:
            group["ok"].append(result)
        elif getattr(result, "by_header", False):
            group["header"].append(result)
        elif result.status == "rejected":
            group["refused"] += 1
    summaries = []
    for (scan, series), group in groups.items():
        source = scan or group["first"]
        if len(group["header"]) >= 2 and not group["ok"]:
            reason = group["header"][0].message.split(": ", 1)[-1].split(";")[0]
            summaries.append({"source": source, "series": series, "status": NOT_ASSESSABLE,
                              "label": None, "probability": None, "slices": 0,
                              "refused": len(group["header"]) + group["refused"],
                              "message": f"not assessable: not an MR series ({reason})"})
            continue
        ordered = sorted(group["ok"], key=lambda r: (r.slice_index is None,
                                                     r.slice_index or 0, r.instance or 0))
        if len(ordered) + group["refused"] < 2:
            continue
        summaries.append(summarise_scan(ordered, group["refused"], rule, normal, source,
                                        series, group["note"], group["sequence"]))
    return summaries


def study_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One answer for several series of one study: the answer of the assessable series with
    the highest tumour probability, with how many series agree; None for fewer than two."""
    assessable = [s for s in summaries if s["status"] == SCAN_OK]
    if len(summaries) < 2:
        return None
    if not assessable:
        return {"status": NOT_ASSESSABLE, "label": None, "probability": None,
                "series": len(summaries), "message": "not assessable: no series of the study "
                                                     "could be assessed"}
    lead = max(assessable, key=lambda s: s.get("tumour_probability", 0.0))
    agree = sum(1 for s in assessable if s["label"] == lead["label"])
    return {"status": SCAN_OK, "label": lead["label"], "probability": lead["probability"],
            "series": len(summaries), "agreeing_series": agree,
            "message": f"study answer {lead['label']}: {agree} of {len(assessable)} "
                       "assessable series agree; the series with the highest tumour "
                       "probability decides"}


def study_summaries(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A study answer (``study_summary``, with its ``source``) for every source given that
    holds several scans."""
    studies = []
    for source in dict.fromkeys(s["source"] for s in summaries):
        study = study_summary([s for s in summaries if s["source"] == source])
        if study:
            studies.append({"source": source, **study})
    return studies
