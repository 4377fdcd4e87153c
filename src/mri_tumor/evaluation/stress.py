"""``--stress``: the images scored again after histogram swaps, gamma changes, a mirror and
half resolution."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from mri_tumor import metrics
from mri_tumor.evaluation.images import progress_bar
from mri_tumor.evaluation.scoring import network_scores
from mri_tumor.inference import Predictor

# --stress: the perturbations, in the order of the JSON object; the random choices of the
# histogram swaps are fixed by the seed, so a run can be repeated.
STRESS_KEYS = ("histogram_swap_other_class", "histogram_swap_same_class", "gamma_0.5",
               "gamma_2.0", "flip", "half_resolution")


STRESS_SEED = 0


# -- stress test -----------------------------------------------------------------------------
def gamma_pixels(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """``255 * (p / 255) ** gamma``, rounded back to uint8 (gamma < 1 brightens)."""
    table = np.rint(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[np.asarray(pixels, dtype=np.uint8)]


def half_resolution_pixels(pixels: np.ndarray) -> np.ndarray:
    """Each uint8 (H, W) image shrunk to half its size (PIL's antialiased bilinear) and
    enlarged back to H x W."""
    out = np.empty_like(pixels)
    for i, image in enumerate(np.asarray(pixels, dtype=np.uint8)):
        height, width = image.shape
        small = Image.fromarray(image).resize((max(1, width // 2), max(1, height // 2)),
                                              Image.Resampling.BILINEAR)
        out[i] = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    return out


def match_histogram_pixels(pixels: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Each uint8 image of ``pixels`` given the grey-level histogram of the matching image of
    ``references`` (``skimage.exposure.match_histograms``), rounded back to uint8."""
    from skimage.exposure import match_histograms

    out = np.empty_like(pixels, dtype=np.uint8)
    for i, (image, reference) in enumerate(zip(pixels, references, strict=True)):
        out[i] = np.clip(np.rint(match_histograms(image, reference)), 0, 255).astype(np.uint8)
    return out


def pick_references(labels: np.ndarray, rng: np.random.Generator,
                    same_class: bool) -> np.ndarray:
    """For each image, a random other image of the same class (``same_class``; itself when
    its class has no other image) or of a different class (-1 when there is none)."""
    labels = np.asarray(labels)
    chosen = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels.tolist()):
        pool = np.flatnonzero(labels == label) if same_class else np.flatnonzero(labels != label)
        if same_class:
            pool = pool[pool != i]
        chosen[i] = rng.choice(pool) if len(pool) else (i if same_class else -1)
    return chosen


def stress_test(predictor: Predictor, pixels: np.ndarray, labels: np.ndarray,
                tta: bool = False, batch_size: int = 64, seed: int = STRESS_SEED,
                progress: bool = True) -> dict[str, float | None]:
    """Accuracy (in ``STRESS_KEYS`` order) on uint8 model pixels after each perturbation,
    scored by ``predictor.forward`` so the model's own preprocessing applies:

    - ``histogram_swap_other_class``: each image given the histogram of a random image of
      another class of the same set; a model that reads the class off the brightness fails;
    - ``histogram_swap_same_class``: the control, a random other image of the same class;
    - ``gamma_0.5`` / ``gamma_2.0``: gamma curves on [0, 1] pixels;
    - ``flip``: left-right mirror;
    - ``half_resolution``: shrunk to half the size and enlarged back, the detail a coarser
      acquisition or a smaller stored image lacks (sharpness differs by source too).

    None where undefined (a swap with another class when all images are of one class).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    other = pick_references(labels, rng, same_class=False)
    same = pick_references(labels, rng, same_class=True)
    perturbations: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "histogram_swap_other_class": lambda at: match_histogram_pixels(pixels[at],
                                                                        pixels[other[at]]),
        "histogram_swap_same_class": lambda at: match_histogram_pixels(pixels[at],
                                                                       pixels[same[at]]),
        "gamma_0.5": lambda at: gamma_pixels(pixels[at], 0.5),
        "gamma_2.0": lambda at: gamma_pixels(pixels[at], 2.0),
        "flip": lambda at: pixels[at][:, :, ::-1],
        "half_resolution": lambda at: half_resolution_pixels(pixels[at]),
    }
    result: dict[str, float | None] = {}
    with progress_bar(len(labels) * len(perturbations), "stress test", progress) as bar:
        for key, perturb in perturbations.items():
            if key == "histogram_swap_other_class" and (other < 0).any():
                result[key] = None
                bar.update(len(labels))
                continue
            predicted = []
            for start in range(0, len(labels), batch_size):
                at = np.arange(start, min(start + batch_size, len(labels)))
                logits = network_scores(predictor, np.ascontiguousarray(perturb(at)), tta)[0]
                predicted.append(logits.argmax(axis=1))
                bar.update(len(at))
            result[key] = metrics.accuracy(labels, np.concatenate(predicted))
    return result
