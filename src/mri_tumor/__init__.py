"""Brain MRI tumour classification (glioma, meningioma, pituitary, no tumour) with explanations.

Research tool, not a diagnosis.
"""

__version__ = "0.1.0"

from mri_tumor.inference import Prediction, Predictor  # noqa: E402

__all__ = ["Prediction", "Predictor", "__version__"]
