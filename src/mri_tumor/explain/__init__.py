"""Explanations of a prediction: the class texts (``texts``, no torch needed) and the Grad-CAM
heat map (``explain.gradcam``, which imports torch: import it where a heat map is drawn)."""

from mri_tumor.explain.texts import ClassExplanation, Source, explanation, explanations

__all__ = ["ClassExplanation", "Source", "explanation", "explanations"]
