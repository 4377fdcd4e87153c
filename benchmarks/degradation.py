"""How a model holds up when images arrive at a lower quality than its training sources had:
blur, lower resolution, strong JPEG compression, noise, a tighter or a looser crop.

    python benchmarks/degradation.py MODEL_DIR DATA_DIR [DATA_DIR ...] [--json out.json]

Scores the validation rows of the model's own split, per source, after each change to the
image as stored (before the preprocessing's resize): a source the model never saw may store
its slices smaller, blurrier or more compressed. The public sets differ in sharpness by
source, so a model that loses much at a lower resolution has learnt some of that.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import read_image
from mri_tumor.data.rows import read_split_under, row_path, source_roots
from mri_tumor.inference import Predictor


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("L")


def _shrunk(factor: int) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.resize((max(1, image.width // factor),
                                       max(1, image.height // factor)),
                                      Image.Resampling.BILINEAR)


def _padded(image: Image.Image) -> Image.Image:
    canvas = Image.new("L", (image.width * 5 // 4, image.height * 5 // 4))
    canvas.paste(image, (image.width // 8, image.height // 8))
    return canvas


def changes(seed: int = 0) -> dict[str, Callable[[Image.Image], Image.Image]]:
    """The changes, by name; the noise is drawn from ``seed``."""
    rng = np.random.default_rng(seed)

    def noisy(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255)
                               .astype(np.uint8))

    return {
        "none": lambda image: image,
        "blur (sigma 1.5 px per 256)": lambda image: image.filter(
            ImageFilter.GaussianBlur(1.5 * image.width / 256)),
        "half resolution": _shrunk(2),
        "third resolution": _shrunk(3),
        "quarter resolution": _shrunk(4),
        "JPEG quality 15": lambda image: _jpeg(image, 15),
        "noise (sd 12 grey levels)": noisy,
        "crop to the middle 80%": lambda image: image.crop(
            (image.width // 10, image.height // 10, image.width * 9 // 10,
             image.height * 9 // 10)),
        "padded to 125%": _padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    predictor = Predictor.load(args.model)
    card = predictor.card
    rows = [r for r in read_split_under(card.split_path(args.model), args.data_dirs)
            if r.split == "val"]
    roots = source_roots(args.data_dirs)
    images = [read_image(row_path(row, roots)) for row in rows]
    labels = np.array([card.class_names.index(row.label) for row in rows])
    sources = np.array([row.source for row in rows])
    names = sorted(set(sources))
    result: dict[str, dict[str, float]] = {}
    print(f"{'change':28s} {'all':>7s} " + " ".join(f"{name[:24]:>24s}" for name in names))
    for key, change in changes().items():
        pixels = np.stack([to_model_pixels(change(image), card.image_size) for image in images])
        right = predictor.forward(pixels)[0].argmax(axis=1) == labels
        result[key] = {"all": float(right.mean()),
                       **{name: float(right[sources == name].mean()) for name in names}}
        print(f"{key:28s} {result[key]['all']:7.1%} "
              + " ".join(f"{result[key][name]:24.1%}" for name in names), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"n": len(rows), "accuracy": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
