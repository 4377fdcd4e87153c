"""Reading images as users have them, folder layouts, and the duplicate-aware split."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tests.conftest import copy_dataset, png_header

from mri_tumor.data import (
    ImageReadError,
    PreprocessSpec,
    UnknownClassFolderError,
    normalize,
    normalize_array,
    read_image,
    scan_folder,
    to_model_pixels,
)
from mri_tumor.data.augment import augment_batch
from mri_tumor.data.preprocess import preprocess
from mri_tumor.data.rows import load_pixels
from mri_tumor.data.splitting import (
    duplicate_groups,
    hash_folder,
    read_split_csv,
    split_folder,
    write_split_csv,
)
from mri_tumor.training.config import AugmentConfig

SPEC = PreprocessSpec(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_kaggle_and_sartaj_layouts_give_the_same_labels(tmp_path: Path) -> None:
    kaggle = scan_folder(copy_dataset(tmp_path / "k", "kaggle"))
    sartaj = scan_folder(copy_dataset(tmp_path / "s", "sartaj"))
    assert kaggle.counts() == sartaj.counts() == {
        "glioma": 5, "meningioma": 5, "notumor": 5, "pituitary": 5}
    names = lambda scan: sorted((i.path.name, i.label) for i in scan.images)  # noqa: E731
    assert names(kaggle) == names(sartaj)


def test_unknown_class_folder_is_named_with_the_accepted_names(dataset: Path) -> None:
    (dataset / "astrocytoma").mkdir()
    with pytest.raises(UnknownClassFolderError) as error:
        scan_folder(dataset)
    assert "astrocytoma" in str(error.value)
    assert "no_tumor" in str(error.value) and "notumor" in str(error.value)


def test_unreadable_and_empty_files_are_skipped_and_listed(dataset: Path) -> None:
    (dataset / "glioma" / "empty.jpg").write_bytes(b"")
    (dataset / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (dataset / "glioma" / "notes.txt").write_text("hello")
    good = next((dataset / "notumor").iterdir())
    (dataset / "notumor" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    scan = scan_folder(dataset)
    kept, _, _ = hash_folder(scan)
    skipped = dict(scan.skipped)
    assert skipped["glioma/empty.jpg"] == "empty file"
    assert skipped["glioma/notes.txt"] == "unsupported file type"
    assert "glioma/broken.png" in skipped
    assert "notumor/truncated.jpg" in skipped
    assert len(kept) == 20  # the 20 real images, nothing else


def test_links_and_pipes_in_a_class_folder_are_listed_never_opened(dataset: Path) -> None:
    (dataset / "glioma" / "gone.jpg").symlink_to(dataset / "nowhere.jpg")
    os.mkfifo(dataset / "glioma" / "pipe.jpg")  # opening it for reading would block
    scan = scan_folder(dataset)
    skipped = dict(scan.skipped)
    assert skipped["glioma/gone.jpg"] == "broken link"
    assert skipped["glioma/pipe.jpg"].startswith("not a regular file")
    assert len(scan.images) == 20


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def grey_slice(fixture_paths: list[Path]) -> Image.Image:
    return Image.open(fixture_paths[0]).convert("L")


def test_odd_modes_decode_to_the_same_grey_image(grey_slice: Image.Image) -> None:
    reference = np.asarray(grey_slice, dtype=np.int16)
    rgb = grey_slice.convert("RGB")
    rgba = grey_slice.convert("RGBA")
    sixteen = Image.fromarray(np.asarray(grey_slice).astype(np.uint16) * 257)
    variants = {
        "rgb png": _png_bytes(rgb, format="PNG"),
        "rgba png": _png_bytes(rgba, format="PNG"),
        "16-bit png": _png_bytes(sixteen, format="PNG"),
        "bmp": _png_bytes(rgb, format="BMP"),
        "tiff": _png_bytes(grey_slice, format="TIFF"),
        "palette png": _png_bytes(grey_slice.convert("P"), format="PNG"),
    }
    # Wider-than-8-bit data is stretched from its own minimum to maximum.
    low, high = reference.min(), reference.max()
    stretched = np.round((reference - low) / (high - low) * 255).astype(np.int16)
    for name, data in variants.items():
        decoded = read_image(data)
        assert decoded.mode == "L", name
        expected = stretched if name == "16-bit png" else reference
        assert np.array_equal(np.asarray(decoded, dtype=np.int16), expected), name


def test_transparent_pixels_become_black_background(grey_slice: Image.Image) -> None:
    rgba = grey_slice.convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[:, :50] = 0
    rgba.putalpha(Image.fromarray(alpha))
    decoded = np.asarray(read_image(_png_bytes(rgba, format="PNG")))
    assert decoded[:, :50].max() == 0
    assert decoded[:, 50:].max() > 0


def test_any_size_is_resized_to_the_model_input(grey_slice: Image.Image) -> None:
    wide = grey_slice.resize((517, 333))
    assert preprocess(wide, SPEC).shape == (3, 224, 224)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"plain text, not an image", "not a supported image"),
])
def test_bad_bytes_give_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageReadError, match=reason):
        read_image(data)


@pytest.mark.parametrize("side", [9000, 20000])
def test_oversized_image_is_refused_before_decoding(side: int) -> None:
    with pytest.raises(ImageReadError, match="megapixel limit"):
        read_image(png_header(side, side))


def test_same_image_gives_identical_tensors_through_every_path(
        tmp_path: Path, fixture_paths: list[Path]) -> None:
    path = fixture_paths[3]
    data = path.read_bytes()
    pil = Image.open(path)
    from_path = preprocess(path, SPEC)
    assert torch.equal(from_path, preprocess(data, SPEC))
    assert torch.equal(from_path, preprocess(pil, SPEC))
    assert torch.equal(from_path, preprocess(np.asarray(pil), SPEC))
    # Training decodes once into uint8 and normalises batches: the same numbers.
    from mri_tumor.data.splitting import SplitRow

    row = SplitRow(path.name, "glioma", "train", 0, "")
    pixels, _ = load_pixels(path.parent, [row], SPEC.image_size)
    assert torch.equal(from_path, normalize(pixels, SPEC)[0])
    # And the predictor's own batch path, which normalises in numpy (no torch for ONNX).
    manual = to_model_pixels(read_image(path), SPEC.image_size)
    assert torch.equal(from_path, normalize(torch.from_numpy(manual.copy())[None], SPEC)[0])
    assert torch.equal(from_path, torch.from_numpy(normalize_array(manual[None], SPEC)[0]))


def _plant_duplicates(dataset: Path) -> dict[str, str]:
    """Add an exact copy, a mirrored copy and a re-encoded resized copy of three images."""
    sources = sorted((dataset / "glioma").iterdir())
    exact, mirror, resized = sources[0], sources[1], sources[2]
    (dataset / "glioma" / "copy_exact.jpg").write_bytes(exact.read_bytes())
    ImageOps.mirror(Image.open(mirror)).save(dataset / "glioma" / "copy_mirror.png")
    Image.open(resized).resize((200, 200)).save(dataset / "glioma" / "copy_small.jpg", quality=70)
    return {"glioma/copy_exact.jpg": f"glioma/{exact.name}",
            "glioma/copy_mirror.png": f"glioma/{mirror.name}",
            "glioma/copy_small.jpg": f"glioma/{resized.name}"}


def test_duplicates_are_grouped_and_never_split(dataset: Path) -> None:
    planted = _plant_duplicates(dataset)
    for seed in range(6):
        rows = {r.path: r for r in split_folder(scan_folder(dataset), val_fraction=0.3, seed=seed)}
        for copy, original in planted.items():
            assert rows[copy].group == rows[original].group
            assert rows[copy].split == rows[original].split
        groups_by_side: dict[int, set[str]] = {}
        for row in rows.values():
            groups_by_side.setdefault(row.group, set()).add(row.split)
        assert all(len(sides) == 1 for sides in groups_by_side.values())
    # Distinct slices are not grouped: 20 originals + 3 copies form exactly 20 groups.
    assert len({r.group for r in rows.values()}) == 20


def test_split_is_stratified_deterministic_and_round_trips(dataset: Path, tmp_path: Path) -> None:
    first = split_folder(scan_folder(dataset), val_fraction=0.2, test_fraction=0.2, seed=7)
    again = split_folder(scan_folder(dataset), val_fraction=0.2, test_fraction=0.2, seed=7)
    other = split_folder(scan_folder(dataset), val_fraction=0.2, test_fraction=0.2, seed=8)
    assert first == again
    assert [r.split for r in first] != [r.split for r in other]
    for label in ("glioma", "meningioma", "notumor", "pituitary"):
        sides = [r.split for r in first if r.label == label]
        assert sides.count("val") == 1 and sides.count("test") == 1 and sides.count("train") == 3
    path = tmp_path / "split.csv"
    write_split_csv(first, path)
    assert read_split_csv(path) == first


def test_mirrored_hash_links_flipped_copies() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(3, 4), dtype=np.uint64)
    mirrored = rng.integers(0, 2**63, size=(3, 4), dtype=np.uint64)
    mirrored[2] = hashes[0]  # image 2 is image 0 flipped
    groups = duplicate_groups(hashes, mirrored)
    assert groups[0] == groups[2] != groups[1]


def _smooth_batch(n: int = 64, size: int = 32) -> torch.Tensor:
    """Distinct, smooth test images in [0, 1]: a bright disc at a different place in each."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.linspace(8, size - 8, n)
    discs = [((xx - c) ** 2 + (yy - size / 2) ** 2 < 36).float() for c in centres]
    return torch.stack(discs).unsqueeze(1) * 0.8 + 0.1


def test_augmentation_transforms_every_image_and_keeps_the_range() -> None:
    torch.manual_seed(0)
    pixels = _smooth_batch()
    out = augment_batch(pixels, AugmentConfig())
    assert out.shape == pixels.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = (out - pixels).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.all()


def test_augmentation_probability_leaves_the_other_images_untouched() -> None:
    pixels = _smooth_batch()
    torch.manual_seed(0)
    assert torch.equal(augment_batch(pixels, AugmentConfig(probability=0.0)), pixels)
    torch.manual_seed(0)
    out = augment_batch(pixels, AugmentConfig(probability=0.5))
    untouched = (out == pixels).flatten(1).all(dim=1)
    # 64 images at one half each: both kinds occur unless the generator is broken.
    assert 10 < int(untouched.sum()) < 54
