"""The segmentation model at work: outline the FLAIR abnormality on slices and volumes,
and measure it.

One path for every input: the square axial images of a volume (``data.volume.AxialStack``,
the images the classifier reads) or a 2-D slice as it is -> the model's probability per
pixel at the image's own size -> mapped back onto the volume's voxels -> the card's
post-processing (threshold, 3-D components smaller than a share of the largest removed,
holes filled in each axial slice) -> the mask on the input's own voxel grid and its
measurements (volume in mL from the voxel size, the slices it spans, its largest axial
diameter).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mri_tumor.card import WEIGHTS_FILE, SegmentationCard
from mri_tumor.data.preprocess import PreprocessSpec, normalize_array, to_model_pixels
from mri_tumor.data.segmentation import neighbour_pairs, neighbour_step
from mri_tumor.data.volume import AxialStack

logger = logging.getLogger(__name__)

SHIPPED_SEGMENTER = Path(__file__).parents[1] / "weights" / "segment"
# The shipped model that reads co-registered T1 and T1C+ beside FLAIR.
SHIPPED_MULTI_SEGMENTER = Path(__file__).parents[1] / "weights" / "segment_flair_t1_t1c"


@dataclass
class Measurement:
    """What a mask measures: tumour volume, the slices it spans, its largest diameter in an
    axial slice (None where the input has no voxel size, e.g. a PNG)."""

    voxels: int
    volume_ml: float | None
    slices: list[int] = field(default_factory=list)
    largest_axial_diameter_mm: float | None = None


def postprocess(probabilities: np.ndarray, threshold: float, min_component_share: float
                ) -> np.ndarray:
    """Probabilities (2-D, or 3-D with the axial slices on the last axis) -> bool mask:
    above ``threshold``; connected components (26-connected in 3-D) smaller than
    ``min_component_share`` of the largest removed; holes filled in each axial slice."""
    from scipy import ndimage

    mask = np.asarray(probabilities) >= threshold
    if not mask.any():
        return mask
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_share * sizes.max()) + 1
        mask = np.isin(labels, keep)
    if mask.ndim == 2:
        return ndimage.binary_fill_holes(mask)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def largest_diameter(plane: np.ndarray, spacing: tuple[float, float]) -> float:
    """The largest distance across a 2-D mask (between the outer edges of its pixels), in
    the units of ``spacing`` (per axis of ``plane``)."""
    points = np.argwhere(plane) * np.asarray(spacing, dtype=float)
    if len(points) == 0:
        return 0.0
    if len(points) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        # Collinear pixels have no hull: then every pair is checked (few of them).
        with contextlib.suppress(QhullError):
            points = points[ConvexHull(points).vertices]
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    return float(distances.max() + min(spacing))


def measure(mask: np.ndarray, zooms: tuple[float, float, float] | None) -> Measurement:
    """Measurements of a 3-D mask on an axial (RAS+) grid with voxel size ``zooms`` in mm
    (None: volume and diameter unknown)."""
    slices = [int(k) for k in np.flatnonzero(mask.any(axis=(0, 1)))]
    voxels = int(mask.sum())
    if zooms is None:
        return Measurement(voxels, None, slices, None)
    volume = voxels * float(np.prod(zooms)) / 1000.0
    diameter = max((largest_diameter(mask[:, :, k], (zooms[0], zooms[1])) for k in slices),
                   default=0.0)
    return Measurement(voxels, round(volume, 3), slices, round(diameter, 1))


@dataclass
class VolumeMask:
    """A volume's mask: on the input's own voxels (``mask``, for the file written beside
    it), on the RAS+ grid (``canonical``), and its measurements."""

    mask: np.ndarray
    canonical: np.ndarray
    stack: AxialStack
    measurement: Measurement

    def display_mask(self, index: int) -> np.ndarray:
        """The mask of axial slice ``index`` over that slice's square display image."""
        box_x, box_y = self.stack.box
        plane = self.canonical[box_x, box_y, index].astype(np.uint8) * 255
        return np.asarray(self.stack.picture(plane)) >= 128


class Segmenter:
    """The segmentation model with its card: ``probabilities`` for 2-D images,
    ``segment_volume`` for a volume's axial stack, ``segment_image`` for one slice."""

    def __init__(self, card: SegmentationCard, model: Any) -> None:
        self.card = card
        self.model = model
        self.spec = PreprocessSpec(card.image_size, tuple(card.mean), tuple(card.std),
                                   card.input_channels, card.intensity)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> Segmenter:
        """The segmentation model in ``directory`` (default: the shipped one)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from mri_tumor.models import channels_last, fuse_batch_norm
        from mri_tumor.models.unet import efficient_unet

        folder = Path(directory) if directory is not None else SHIPPED_SEGMENTER
        card = SegmentationCard.load(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no weights at {weights}")
        try:
            state = {k: v.float() for k, v in load_file(str(weights)).items()}
        except SafetensorError as error:
            raise ValueError(f"{weights}: not a readable safetensors file ({error})") from None
        model = efficient_unet(pretrained=False)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise ValueError(f"{weights}: these weights do not fit a {card.architecture}") \
                from None
        model.eval()
        return cls(card, channels_last(fuse_batch_norm(model)))

    def probabilities(self, images: Sequence[Image.Image | Sequence[Image.Image]],
                      batch_size: int = 32) -> list[np.ndarray]:
        """Tumour probability per pixel of each grey image, at the image's own size; for a
        model with ``card.companions``, each item is the slice's images in the card's order
        (``sequence``, then the companions), of one size; for a 2.5-D model
        (``card.neighbours``), the slice and its neighbours before and after, or the slice
        alone (then its own neighbours)."""
        import torch

        out: list[np.ndarray] = []
        size = self.card.image_size
        channels = 1 + len(self.card.companions) + (2 if self.card.neighbours else 0)
        alone = 3 if self.card.neighbours else 1
        # A 2.5-D model meets each slice up to three times (itself, and the neighbour of
        # two others): its pixels are prepared once (the images live through this call).
        prepared: dict[int, np.ndarray] = {}

        def model_pixels(image: Image.Image) -> np.ndarray:
            if id(image) not in prepared:
                prepared[id(image)] = to_model_pixels(image, size)
            return prepared[id(image)]

        for start in range(0, len(images), batch_size):
            batch = [[item] * alone if isinstance(item, Image.Image) else list(item)
                     for item in images[start:start + batch_size]]
            if any(len(item) != channels for item in batch):
                raise ValueError(f"this segmentation model reads {channels} image(s) per "
                                 f"slice ({', '.join(self.sequences)}"
                                 + (", with the slices before and after" if
                                    self.card.neighbours else "") + ")")
            pixels = np.stack([np.stack([model_pixels(image) for image in item])
                               for item in batch])
            inputs = torch.from_numpy(normalize_array(pixels[:, 0] if channels == 1
                                                      else pixels, self.spec))
            with torch.inference_mode():
                logits = self.model(inputs.contiguous(memory_format=torch.channels_last))
            maps = torch.sigmoid(logits[:, 0]).numpy()
            for item, probability in zip(batch, maps, strict=True):
                image = item[0]
                if image.size != (size, size):
                    probability = np.asarray(Image.fromarray(probability).resize(
                        image.size, Image.Resampling.BILINEAR))
                out.append(probability)
        return out

    @property
    def sequences(self) -> list[str]:
        """The sequences it reads, in channel order."""
        return [self.card.sequence, *self.card.companions]

    def check_single_sequence(self) -> None:
        """Raise ValueError for a model that needs companions: the front ends give it one
        sequence."""
        if self.card.companions:
            raise ValueError(f"this segmentation model reads {', '.join(self.sequences)} "
                             "together; segment, the app, the API and PACS read models of "
                             f"{self.card.sequence} alone (evaluate-segmenter scores it)")

    def segment_stack(self, images: Sequence[Image.Image | Sequence[Image.Image]]
                      ) -> np.ndarray:
        """The slices of one stack (same size, in order) -> bool mask (H, W, N) after the
        card's post-processing: what the evaluation scores per patient."""
        maps = np.stack(self.probabilities(images), axis=-1)
        return postprocess(maps, self.card.threshold, self.card.min_component_share)

    def segment_image(self, image: Image.Image) -> np.ndarray:
        """One 2-D slice -> bool mask at the image's size, post-processed in 2-D."""
        probability = self.probabilities([image])[0]
        return postprocess(probability, self.card.threshold, self.card.min_component_share)

    def segment_volume(self, stack: AxialStack,
                       companions: Sequence[AxialStack | None] = ()) -> VolumeMask:
        """A volume's axial stack -> its mask and measurements; slices outside the head
        (``stack.inside``) are not segmented. For a model with ``card.companions``, their
        stacks in the card's order (``axial_stack(..., like=stack)``; None: the sequence is
        missing and ``stack`` takes its place, as in training)."""
        indices = [int(k) for k in np.flatnonzero(stack.inside)]
        if self.card.companions:
            given = list(companions) + [None] * (len(self.card.companions) - len(companions))
            layers = [stack, *(other or stack for other in given)]
            pictures: list[Any] = [[layer.picture(layer.windowed[:, :, k]) for layer in layers]
                                   for k in indices]
        elif self.card.neighbours:
            # Neighbours among the head's slices, as far apart as in training.
            single = [stack.picture(stack.windowed[:, :, k]) for k in indices]
            step = neighbour_step(len(indices), self.card.stack_slices)
            pictures = [[single[i], single[before], single[after]] for i, (before, after)
                        in enumerate(neighbour_pairs(len(indices), step))]
        else:
            pictures = [stack.picture(stack.windowed[:, :, k]) for k in indices]
        canonical = np.zeros(stack.canonical_shape, dtype=np.float32)
        box_x, box_y = stack.box
        for k, probability in zip(indices, self.probabilities(pictures), strict=True):
            canonical[box_x, box_y, k] = stack.plane(probability)
        mask = postprocess(canonical, self.card.threshold, self.card.min_component_share)
        return VolumeMask(stack.to_input_voxels(mask), mask, stack, measure(mask, stack.zooms))


def outline_polygons(mask: np.ndarray, tolerance: float = 0.5) -> list[list[list[float]]]:
    """A 2-D mask's outlines as polygons of ``[x, y]`` pixel coordinates (x to the right,
    y down, pixel centres at integers), each closed (first point repeated at the end)."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour, tolerance) - 1.0
        polygons.append([[round(float(x), 1), round(float(y), 1)] for y, x in contour])
    return polygons
