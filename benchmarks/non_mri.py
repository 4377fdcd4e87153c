"""A non-MRI image set for the out-of-distribution guard, built only from what PyPI packages
ship (scikit-image, matplotlib and pydicom sample data) plus synthetic images.

Used by ``benchmarks/ood_eval.py`` and, in a small slice, by the tests. Each image is a
(category, name, PIL image) triple; categories keep the report honest about what was tried.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

WORDS = ("patient", "report", "imaging", "department", "findings", "impression", "normal",
         "study", "contrast", "axial", "sagittal", "coronal", "sequence", "weighted", "lesion",
         "margin", "clinical", "history")


def _package_dir(module: str) -> Path:
    imported = __import__(module, fromlist=["__file__"])
    return Path(imported.__file__).parent


def photos() -> Iterator[tuple[str, str, Image.Image]]:
    """Photographs and scientific images bundled with scikit-image and matplotlib."""
    skimage_data = _package_dir("skimage.data")
    skip = {"phantom.png", "page.png", "text.png", "chessboard_GRAY.png", "chessboard_RGB.png"}
    for path in sorted(skimage_data.glob("*")):
        if path.suffix.lower() in (".png", ".jpg") and path.name not in skip:
            yield "photo", f"skimage/{path.name}", Image.open(path)
    faces = np.load(skimage_data / "lfw_subset.npy")
    for index in range(0, len(faces), 10):
        face = (faces[index] * 255).astype(np.uint8) if faces.dtype != np.uint8 else faces[index]
        yield "photo", f"skimage/lfw_subset#{index}", Image.fromarray(face)
    samples = _package_dir("matplotlib") / "mpl-data" / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        yield "photo", f"matplotlib/{name}", Image.open(samples / name)


def documents() -> Iterator[tuple[str, str, Image.Image]]:
    """Scanned-text pages and rendered documents and screenshots."""
    skimage_data = _package_dir("skimage.data")
    for name in ("page.png", "text.png"):
        yield "document", f"skimage/{name}", Image.open(skimage_data / name)
    rng = random.Random(0)
    font = ImageFont.load_default()
    for index in range(12):
        page = Image.new("L", (600, 800), 255 if index % 3 else 235)
        draw = ImageDraw.Draw(page)
        for line in range(30):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            draw.text((30, 20 + line * 25), words, fill=0, font=font)
        yield "document", f"synthetic/page-{index}", page
    for index in range(8):
        screen = Image.new("RGB", (1024, 640), (rng.randint(200, 255),) * 3)
        draw = ImageDraw.Draw(screen)
        for _ in range(14):
            x, y = rng.randint(0, 900), rng.randint(0, 560)
            colour = tuple(rng.randint(0, 255) for _ in range(3))
            draw.rectangle([x, y, x + rng.randint(40, 300), y + rng.randint(20, 80)], fill=colour)
            draw.text((x + 5, y + 5), rng.choice(WORDS).upper(), fill=(0, 0, 0), font=font)
        yield "screenshot", f"synthetic/screen-{index}", screen


def other_modalities() -> Iterator[tuple[str, str, Image.Image]]:
    """CT, phantom and other non-MR medical images that pydicom and scikit-image ship.

    The DICOM files are decoded despite their header (the predictor refuses them by their
    Modality), so that the pixel-level guard is still tried on them, as on a CT exported
    to PNG."""
    from mri_tumor.data.dicom import read_dicom
    from mri_tumor.data.reading import ImageReadError

    phantom = _package_dir("skimage.data") / "phantom.png"
    yield "ct/phantom", "skimage/phantom.png", Image.open(phantom)
    test_files = _package_dir("pydicom.data") / "test_files"
    for name in ("CT_small.dcm", "rtdose_1frame.dcm", "SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "examples_ybr_color.dcm", "US1_J2KR.dcm", "liver_1frame.dcm"):
        path = test_files / name
        if not path.is_file():
            continue
        try:
            for frame in read_dicom(path.read_bytes(), name, any_modality=True)[:3]:
                label = name if frame.frame is None else f"{name}#{frame.frame}"
                yield "ct/other-dicom", f"pydicom/{label}", frame.image
        except ImageReadError:
            continue


def synthetic() -> Iterator[tuple[str, str, Image.Image]]:
    """Blank, noise, gradient and pattern images."""
    rng = np.random.default_rng(0)
    size = 256
    for value in (0, 40, 128, 255):
        yield "blank", f"blank-{value}", Image.fromarray(np.full((size, size), value, np.uint8))
    for index in range(6):
        uniform = rng.integers(0, 256, (size, size), dtype=np.uint8)
        yield "noise", f"uniform-noise-{index}", Image.fromarray(uniform)
        gauss = np.clip(rng.normal(128, 40 + 10 * index, (size, size)), 0, 255).astype(np.uint8)
        yield "noise", f"gaussian-noise-{index}", Image.fromarray(gauss)
        colour = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        yield "noise", f"colour-noise-{index}", Image.fromarray(colour)
    y, x = np.mgrid[0:size, 0:size] / size
    patterns = {
        "gradient-h": x, "gradient-v": y, "gradient-radial": np.hypot(x - 0.5, y - 0.5),
        "stripes": (np.sin(x * 40) > 0),
        "checker-8": ((x * 8).astype(int) + (y * 8).astype(int)) % 2,
        "checker-32": ((x * 32).astype(int) + (y * 32).astype(int)) % 2,
        "rings": np.sin(np.hypot(x - 0.5, y - 0.5) * 60) > 0,
    }
    for name, pattern in patterns.items():
        yield "pattern", name, Image.fromarray((np.asarray(pattern, float) * 255).astype(np.uint8))


def variants(image: Image.Image, seed: int) -> Iterator[tuple[str, Image.Image]]:
    """The image plus a crop, a grayscale copy and a rotation: more inputs from one source."""
    rng = random.Random(seed)
    yield "", image
    rgb = image.convert("RGB")
    width, height = rgb.size
    left, top = rng.randint(0, width // 4), rng.randint(0, height // 4)
    yield "+crop", rgb.crop((left, top, left + width * 3 // 4, top + height * 3 // 4))
    yield "+grey", ImageOps.grayscale(rgb)
    yield "+rot", rgb.rotate(rng.choice((90, 180, 270)), expand=True)


def non_mri_images(expand: bool = True) -> list[tuple[str, str, Image.Image]]:
    """All non-MRI images (with variants of photos and documents when ``expand``)."""
    out: list[tuple[str, str, Image.Image]] = []
    for index, (category, name, image) in enumerate(
            [*photos(), *documents(), *other_modalities(), *synthetic()]):
        if expand and category in ("photo", "document", "screenshot"):
            for suffix, variant in variants(image, index):
                out.append((category, name + suffix, variant))
        else:
            out.append((category, name, image))
    return out


def may_be_fitted_on(category: str, name: str) -> bool:
    """True for the images a guard may be fitted on: made here (pages, screens, noise,
    patterns) or the DICOM files of pydicom; never the samples of scikit-image or matplotlib,
    which are kept as the check."""
    return name.startswith(("synthetic/", "pydicom/")) or category in ("noise", "pattern")


def export(directory: Path, fit_only: bool = False) -> int:
    """Write every non-blank image as an 8-bit grey PNG into ``directory`` (as the predictor
    sees it), named ``<category>__<name>.png``, to fit the guard's refusal direction on
    (``mri-tumor calibrate ... --refuse DIR``); with ``fit_only`` only those that
    ``may_be_fitted_on``. Returns how many were written."""
    from mri_tumor.data.reading import to_grayscale

    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for category, name, image in non_mri_images():
        if fit_only and not may_be_fitted_on(category, name):
            continue
        grey = to_grayscale(image)
        if np.asarray(grey).std() < 2.0:  # blank: refused before the guard anyway
            continue
        safe = "".join(c if c.isalnum() or c in "-_.#+" else "_" for c in f"{category}__{name}")
        grey.save(directory / f"{safe}.png")
        written += 1
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export the non-MRI image set as PNG files.")
    parser.add_argument("--export", type=Path, required=True, metavar="DIR")
    parser.add_argument("--fit-only", action="store_true",
                        help="only the images a guard may be fitted on (no scikit-image or "
                             "matplotlib samples)")
    arguments = parser.parse_args()
    print(f"wrote {export(arguments.export, arguments.fit_only)} images")
