"""Brain MRI tumour classification (glioma, meningioma, pituitary, no tumour) with explanations.

Research tool, not a diagnosis.

    from mri_tumor import Predictor
    predictor = Predictor.load()
    predictor.predict(["slice.jpg", "series/IM0001.dcm"])
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mri_tumor.inference import Prediction, Predictor


def __getattr__(name: str) -> object:
    # Imported lazily so that light commands (``--help``, the server's parent process) do
    # not pay for importing torch.
    if name in ("Predictor", "Prediction"):
        from mri_tumor import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mri_tumor' has no attribute {name!r}")


__all__ = ["Prediction", "Predictor", "__version__"]
