"""Whole scans: a NIfTI volume or a DICOM series as the stack of axial slices the model reads.

Every scan takes one path, whatever it came as:

1. a voxel array and its affine (voxel -> patient millimetres, RAS+): nibabel reads NIfTI;
   a DICOM series is sorted by position along its slice normal and its affine is built from
   ImagePositionPatient / ImageOrientationPatient / PixelSpacing (``dicom_series_volume``);
2. reoriented to the closest RAS+ axes (``nibabel.as_closest_canonical``), so that a 3-D
   acquisition in any plane (a sagittal MPRAGE) is read as axial slices, inferior to superior;
3. windowed once for the whole volume, from the floor of its background to a high percentile
   of its foreground voxels (``window_volume``), so that every slice keeps the scan's own
   contrast (a slice near the skull cap is not stretched to look like the middle of the
   brain) and the background keeps its noise, as 2-D images do;
4. cropped to the head's box over all slices, each slice resampled to square pixels and
   padded to a square, then handed to the one preprocessing path as an 8-bit grey image.

The slices are displayed as radiologists view axial images: anterior at the top, the
patient's right on the left of the image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mri_tumor.data.base import ImageReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A NIfTI file may be larger than an image (an uncompressed 3-D T1 is 30-70 MB).
MAX_VOLUME_BYTES = 512 * 1024 * 1024
# A volume larger than this many voxels is refused before it is read into memory.
MAX_VOXELS = 256 * 1024 * 1024
# The window: from this percentile of all voxels (the background's floor: the noise above it
# keeps its grey levels, as in a 2-D image; measured: clipping the background to black made
# the model refuse 12% of held-out FLAIR slices instead of none) to this percentile of the
# foreground voxels.
WINDOW_LOW_PERCENTILE = 0.1
WINDOW_HIGH_PERCENTILE = 99.5
# Foreground: voxels above this share of the 99th percentile of the whole volume. Air and
# noise lie well below it, the scalp and brain above, for T1, T2, FLAIR and PD alike.
FOREGROUND_SHARE = 0.08
# Margin around the head's box, as a share of the box side.
CROP_MARGIN = 0.04
# The fewest slices that make a scan (a series of one or two images is read as images).
MIN_VOLUME_SLICES = 3
# Slices whose head cross-section is below this share of the largest one (air above the
# head, the neck's last slices) are outside the head: they are not read, nor counted.
MIN_HEAD_SHARE = 0.15


@dataclass
class Volume:
    """A scan as voxels: ``data`` (3-D, any orientation), ``affine`` (voxel -> RAS+ mm)."""

    data: np.ndarray
    affine: np.ndarray
    name: str  # what the user gave (path or upload name)
    series: str  # opaque key of the scan (a hash, never a UID)
    slice_names: list[str] | None = None  # per slice of the last axis, for native slices
    note: str = ""  # e.g. a gap in the slice positions
    named_sequence: str = ""  # the MR sequence its file name or header names ("" if none)


_CONTRAST = re.compile(r"(t1[\s_.-]*(c|ce|gd)(?![a-z])|t1c\+|\+c(?![a-z])|c\+|(?<![a-z])gad"
                       r"|(?<![a-z])gd(?![a-z])|post|contrast)")
_NO_CONTRAST = re.compile(r"(pre[\s_-]*(contrast|gad|gd|c\b)|non[\s_-]*contrast|without)")


def sequence_named(text: str, contrast_agent: bool = False) -> str:
    """The MR sequence that a file name or a DICOM series description names: "FLAIR", "T1C+"
    (T1 with contrast, also when the header names a contrast agent), "T1", "T2", or "" when it
    names none. Only a hint for cautions; it never changes an answer."""
    words = text.lower()
    if "flair" in words:
        return "FLAIR"
    if re.search(r"t1|mprage|spgr", words):
        named_contrast = _CONTRAST.search(words) and not _NO_CONTRAST.search(words)
        return "T1C+" if contrast_agent or named_contrast else "T1"
    return "T2" if re.search(r"t2", words) else ""


def is_nifti_name(name: str | Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def looks_like_nifti_bytes(data: bytes) -> bool:
    """A NIfTI-1 or NIfTI-2 header, plain or gzip-compressed."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data[:65536])) as handle:
                data = handle.read(348)
        except (OSError, EOFError):
            return False
    return data[344:348] in (b"n+1\x00", b"ni1\x00") or data[4:8] in (b"n+2\x00", b"ni2\x00")


def read_nifti(data: bytes, name: str) -> Volume:
    """Decode a NIfTI file's bytes (plain or gzip) into a Volume; ImageReadError says why
    not (damaged, 4-D, too large, no image)."""
    import nibabel as nib

    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        image = nib.Nifti1Image.from_bytes(data)
    except Exception:
        try:
            image = nib.Nifti2Image.from_bytes(data)
        except Exception:
            raise ImageReadError(f"{name}: not a readable NIfTI file (damaged or "
                                 "truncated)") from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 3:
        raise ImageReadError(f"{name}: a {len(shape)}-D NIfTI file ({shape[3]} volumes, e.g. "
                             "fMRI, diffusion or several sequences); give one 3-D volume")
    if len(shape) < 2 or min(shape) < 1:
        raise ImageReadError(f"{name}: NIfTI file holds no image (shape {shape})")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise ImageReadError(f"{name}: NIfTI volume of {int(np.prod(shape)):,} voxels is "
                             f"larger than the {MAX_VOXELS:,} voxel limit")
    try:
        voxels = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception:
        raise ImageReadError(f"{name}: NIfTI voxel data is damaged or truncated") from None
    if voxels.ndim == 2:
        voxels = voxels[:, :, None]
    key = hashlib.sha256(hashlib.sha256(data[:4096]).digest() + name.encode()).hexdigest()[:12]
    return Volume(voxels, image.affine.astype(np.float64), name, key,
                  named_sequence=sequence_named(Path(name).name))


def window_volume(voxels: np.ndarray) -> np.ndarray:
    """Float voxels -> uint8, one window for the whole volume: ``WINDOW_LOW_PERCENTILE`` of
    all voxels becomes 0, ``WINDOW_HIGH_PERCENTILE`` of the foreground voxels 255."""
    finite = np.where(np.isfinite(voxels), voxels, 0.0)
    sample = finite.ravel()[:: max(1, finite.size // 2_000_000)]
    top = float(np.percentile(sample, 99))
    foreground = sample[sample > FOREGROUND_SHARE * top] if top > 0 else sample
    if foreground.size < 16:
        foreground = sample
    low = float(np.percentile(sample, WINDOW_LOW_PERCENTILE))
    high = float(np.percentile(foreground, WINDOW_HIGH_PERCENTILE))
    if high <= low:
        high = low + 1.0
    scaled = (finite - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _head_box(windowed: np.ndarray) -> tuple[slice, slice]:
    """The (x, y) box of the foreground over all axial slices, with a margin."""
    mask = np.asarray((windowed > 0.08 * 255).any(axis=2))
    if not mask.any():
        return slice(None), slice(None)
    boxes = []
    for axis in (1, 0):
        idx = np.nonzero(mask.any(axis=axis))[0]
        margin = round(CROP_MARGIN * (idx[-1] - idx[0] + 1))
        end = min(mask.shape[1 - axis], idx[-1] + margin + 1)
        boxes.append(slice(max(0, idx[0] - margin), end))
    return boxes[0], boxes[1]


@dataclass
class AxialStack:
    """A volume reoriented to RAS+ and cut into the square axial images the models read,
    with what it takes to map a picture of a slice back onto the volume's own voxels."""

    windowed: np.ndarray  # uint8, RAS+ voxels cropped to the head's box
    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray  # RAS+ voxel -> mm
    affine: np.ndarray  # the input's own voxel -> mm
    box: tuple[slice, slice]  # the head's (x, y) box in the RAS+ voxels
    zooms: tuple[float, float, float]  # RAS+ voxel size, mm
    size: tuple[int, int]  # (width, height) of a slice in square pixels before padding
    side: int  # the square images' side
    inside: np.ndarray  # bool per axial index: the slice cuts the head

    def picture(self, plane: np.ndarray) -> Image.Image:
        """One axial plane (x, y) of the cropped RAS+ voxels -> its square display image:
        anterior at the top, the patient's right on the left, square pixels, padded."""
        rows = np.ascontiguousarray(plane[::-1, ::-1].T)
        picture = Image.fromarray(rows)
        if self.size != picture.size:
            picture = picture.resize(self.size, Image.Resampling.BILINEAR)
        square = Image.new(picture.mode, (self.side, self.side), 0)
        square.paste(picture, self.offset)
        return square

    @property
    def offset(self) -> tuple[int, int]:
        """Where the slice sits in its square image (x, y)."""
        return (self.side - self.size[0]) // 2, (self.side - self.size[1]) // 2

    def plane(self, picture: np.ndarray) -> np.ndarray:
        """``picture``'s inverse: a float (side, side) map over a display image -> the
        (x, y) plane of the cropped RAS+ voxels (bilinear)."""
        (left, top), (width, height) = self.offset, self.size
        inner = np.asarray(picture, dtype=np.float32)[top:top + height, left:left + width]
        nx, ny = self.windowed.shape[:2]
        resized = np.asarray(Image.fromarray(inner).resize((nx, ny), Image.Resampling.BILINEAR))
        return resized.T[::-1, ::-1]

    def to_input_voxels(self, canonical: np.ndarray) -> np.ndarray:
        """An array on the RAS+ voxel grid (full, uncropped) -> the input's own voxel order,
        so that it lies on the input with the input's affine."""
        import nibabel as nib

        original = nib.orientations.io_orientation(self.affine)
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), original)
        return np.asarray(nib.orientations.apply_orientation(canonical, back))


# A companion sequence must cover at least this share of the target's head to be resampled
# onto it; less means another field of view or frame of reference, not the same head.
MIN_COVERAGE = 0.8


def on_same_grid(volume: Volume, target: Volume) -> bool:
    """True when ``volume`` has ``target``'s voxel grid (shape and affine)."""
    return (volume.data.shape[:3] == target.data.shape[:3]
            and bool(np.allclose(volume.affine, target.affine, atol=1e-3)))


def resample_onto(volume: Volume, target: Volume) -> Volume:
    """``volume`` resampled (trilinear) onto ``target``'s voxel grid through both affines,
    i.e. by scanner coordinates: right for the series of one session in one frame of
    reference, which is what co-registered means here (no registration is done). Raises
    ValueError when ``volume`` covers less than ``MIN_COVERAGE`` of ``target``'s head."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    grid = (target.data.shape[:3], target.affine)
    moved = resample_from_to(nib.Nifti1Image(np.asarray(volume.data, np.float32),
                                             volume.affine), grid, order=1, cval=0.0)
    inside = resample_from_to(nib.Nifti1Image(np.ones(volume.data.shape[:3], np.float32),
                                              volume.affine), grid, order=0, cval=0.0)
    head = np.asarray(target.data) > 0
    coverage = float(np.asarray(inside.dataobj)[head].mean()) if head.any() else 0.0
    if coverage < MIN_COVERAGE:
        raise ValueError(f"{volume.name}: covers {coverage:.0%} of the head in "
                         f"{target.name} once placed by the two files' coordinates; they "
                         "are not of one position of one head (another session, or another "
                         "frame of reference)")
    return Volume(np.asarray(moved.dataobj, np.float32), target.affine.copy(), volume.name,
                  volume.series, note=volume.note, named_sequence=volume.named_sequence)


def axial_stack(volume: Volume, like: AxialStack | None = None) -> AxialStack:
    """The volume reoriented to RAS+, windowed once (``window_volume``) and cropped to the
    head's box, with the geometry of its axial display images. With ``like`` (the stack of a
    co-registered volume on the same voxel grid), its head box and slices are used, so that
    display images of the two correspond pixel for pixel."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.data, volume.affine)
    canonical = nib.as_closest_canonical(image)
    voxels = np.asarray(canonical.dataobj, dtype=np.float32)
    zx, zy, zz = (float(z) or 1.0 for z in canonical.header.get_zooms()[:3])
    windowed = window_volume(voxels)
    if like is not None and windowed.shape[:3] != like.canonical_shape:
        raise ValueError(f"{volume.name}: not on the voxel grid of the volume it goes with "
                         f"({windowed.shape[:3]} voxels against {like.canonical_shape})")
    box_x, box_y = like.box if like is not None else _head_box(windowed)
    windowed = windowed[box_x, box_y]
    nx, ny = windowed.shape[:2]
    step = min(zx, zy)
    width, height = max(1, round(nx * zx / step)), max(1, round(ny * zy / step))
    area = (windowed > 0.08 * 255).sum(axis=(0, 1))
    inside = (like.inside if like is not None
              else area >= MIN_HEAD_SHARE * max(1, int(area.max())))
    return AxialStack(windowed, tuple(int(n) for n in voxels.shape[:3]),  # type: ignore[arg-type]
                      canonical.affine, volume.affine, (box_x, box_y), (zx, zy, zz),
                      (width, height), max(width, height), inside)


def axial_slices(volume: Volume) -> list[tuple[int, Image.Image, str | None]]:
    """The volume as axial slices, inferior to superior: ``(index, 8-bit grey image, native
    slice name or None)``; a native name is given when the volume was acquired axially and
    its slices map one to one onto the inputs (a DICOM series' files). Slices outside the
    head (``MIN_HEAD_SHARE``) are left out; ``index`` stays the position in the stack."""
    import nibabel as nib

    stack = axial_stack(volume)
    # Which input axis became the axial (z) axis, and whether it was flipped.
    order = nib.orientations.io_orientation(volume.affine)
    native_axis, flipped = int(order[2, 0]), order[2, 1] < 0
    names = volume.slice_names if native_axis == 2 else None
    slices = []
    for k in range(stack.windowed.shape[2]):
        if not stack.inside[k]:
            continue
        native = None
        if names is not None:
            native = names[len(names) - 1 - k] if flipped else names[k]
        slices.append((k, stack.picture(stack.windowed[:, :, k]), native))
    return slices


def dicom_series_volume(slices: list[tuple[np.ndarray, dict[str, tuple[float, ...]], str]],
                        name: str, series: str) -> Volume | None:
    """Stack the slices of one DICOM series (``(values, geometry, file name)``; geometry
    holds ``position``, ``orientation`` and ``spacing``) into a Volume ordered along the
    slice normal; None when they do not form one (no geometry, different sizes or
    orientations), in which case they are read as separate images."""
    if len(slices) < MIN_VOLUME_SLICES:
        return None
    shapes = {values.shape for values, _, _ in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        return None
    try:
        orientation = np.array([geometry["orientation"] for _, geometry, _ in slices], float)
        positions = np.array([geometry["position"] for _, geometry, _ in slices], float)
        spacing = np.array(slices[0][1]["spacing"], float)
    except (KeyError, ValueError, TypeError):
        return None
    if orientation.shape[1] != 6 or positions.shape[1] != 3 or spacing.shape != (2,):
        return None
    if np.abs(orientation - orientation[0]).max() > 1e-3:
        return None
    row_dir, col_dir = orientation[0, :3], orientation[0, 3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        return None
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    gaps = np.diff(distance)
    step = float(np.median(gaps)) if len(gaps) else 1.0
    note = ""
    if step <= 0:
        return None
    if gaps.max() > 1.5 * step:
        note = f"{round(gaps.max() / step - 1)} slice(s) missing in the series"
    # voxel (i = column, j = row, k = slice) -> LPS mm, then LPS -> RAS.
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]
    affine_lps[:3, 1] = col_dir * spacing[0]
    affine_lps[:3, 2] = normal * step
    affine_lps[:3, 3] = positions[order[0]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    stack = np.stack([slices[i][0].T for i in order], axis=2).astype(np.float32)
    return Volume(stack, affine, name, series, [slices[i][2] for i in order], note,
                  str(slices[0][1].get("sequence", "")))
