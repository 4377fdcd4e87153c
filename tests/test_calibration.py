"""The low-confidence ("unsure") note: its level comes from calibrated validation answers."""

from __future__ import annotations

import dataclasses

import numpy as np

from mri_tumor import Predictor
from mri_tumor.card import ModelMetrics
from mri_tumor.inference import unsure_message
from mri_tumor.models.calibration import UNSURE_MIN_COUNT, fit_low_confidence


def test_threshold_is_where_validation_answers_stop_being_right_often_enough() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 5000)
    correct = rng.uniform(size=5000) < confidence  # a calibrated model
    fitted = fit_low_confidence(confidence, correct, target=0.7)
    # Answers below t are right about (0.5 + t) / 2 of the time: < 70% while t < 0.9.
    assert 0.86 <= fitted.threshold <= 0.92
    below = confidence < fitted.threshold
    assert fitted.n_below == below.sum()
    assert fitted.accuracy_below < 0.7
    assert np.isclose(fitted.accuracy_below, correct[below].mean())


def test_too_few_mistakes_give_the_lowest_level() -> None:
    confidence = np.linspace(0.5, 1.0, 200)
    fitted = fit_low_confidence(confidence, np.ones(200, dtype=bool))
    assert fitted.threshold == 0.5 and fitted.n_below == 0
    few = np.zeros(200, dtype=bool)
    few[UNSURE_MIN_COUNT:] = True  # mistakes only among the very least confident answers
    assert fit_low_confidence(confidence, few).threshold > 0.5


def test_a_74_percent_answer_is_flagged_and_the_note_says_what_it_means(
        predictor: Predictor) -> None:
    card = predictor.card
    assert card.low_confidence_threshold > 0.74, "the shipped card flags a 74% answer"
    message = unsure_message(0.74, card)
    measured = card.metrics.low_confidence
    assert measured is not None
    # The card's figure for 0.74 (format_probability) and the level it is below.
    assert message.startswith("Unsure (74.0% confidence, below this model's "
                              f"{card.low_confidence_threshold:.0%} level)")
    assert f"right {measured.accuracy_below:.0%} of the time" in message
    old_card = dataclasses.replace(card, metrics=ModelMetrics())  # a card from before
    assert f"below this model's {card.low_confidence_threshold:.0%}" in unsure_message(
        0.74, old_card)
