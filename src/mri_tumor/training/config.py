"""The training recipe: every default of a run, in one place. ``mri-tumor train`` and
``adapt`` read their defaults from these objects; nothing else repeats them.

Imports nothing heavy (no torch, no Lightning), so the CLI can read the defaults at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AugmentConfig:
    """The training recipe's augmentation: the seed's Keras augmentation, brightness/contrast
    jitter, and the intensity changes of other scanners. Zero disables a part; ``none()``
    disables all. ``TrainConfig()``, ``mri-tumor train`` and ``adapt`` all start from these
    defaults (the CLI's flags read them from here)."""

    rotation: float = 40.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.2  # fraction of width/height
    shear: float = 0.2  # shear factor (0.2 is about 11 degrees)
    zoom: float = 0.2  # scale uniform in [1 - zoom, 1 + zoom]
    horizontal_flip: bool = True
    brightness: float = 0.1  # added to [0, 1] pixels, uniform in [-b, b]
    contrast: float = 0.1  # multiplied around the image mean, uniform in [1 - c, 1 + c]
    # Intensity changes another scanner or sequence makes. With histogram equalisation in
    # the preprocessing, gamma is undone by it (only rounding remains); the bias field and
    # the noise are not, and are what the network must learn to look past.
    gamma: float = 0.5  # exponent log-uniform in [1 / (1 + g), 1 + g]
    bias_field: float = 0.3  # smooth multiplicative field exp(f), |f| up to about this
    noise: float = 0.03  # Rician noise, standard deviation uniform in [0, noise]
    # Another source's resolution: each image shrunk by a factor uniform in
    # [1, 1 + resolution] (antialiased) and enlarged back, so sharpness, which differs by
    # source in the public sets, cannot carry the label.
    resolution: float = 0.0
    # Share of the images in a batch that are transformed; the rest pass through unchanged,
    # so the network also sees images as they arrive at inference (never resampled).
    probability: float = 1.0

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (``--no-augment``): every part off."""
        return cls(rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, horizontal_flip=False,
                   brightness=0.0, contrast=0.0, gamma=0.0, bias_field=0.0, noise=0.0,
                   resolution=0.0)

    def to_dict(self) -> dict[str, float | bool]:
        """The settings by name, as the card records them."""
        return asdict(self)


@dataclass
class TrainConfig:
    """One training run: the data, the network, the optimiser and its schedule, the
    augmentation, what is fitted after training, and where the run folder goes."""

    data_dirs: list[Path]  # one folder per source
    arch: str = "efficientnet_lite0"
    out: Path = Path("runs/efficientnet_lite0")
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4  # the seed's Adam learning rate
    weight_decay: float = 0.0
    seed: int = 0
    image_size: int | None = None  # None: the architecture's default
    devices: int = 1
    resume: Path | None = None
    init_weights: Path | None = None
    pretrained: bool | None = None
    from_model: Path | None = None  # a trained model folder to fine-tune (same architecture)
    split: Path | None = None  # reuse a split CSV instead of making one
    val_fraction: float = 0.15
    schedule: str = "plateau"  # "plateau" (seed) or "cosine"
    lr_patience: int = 2
    early_stop_patience: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    intensity: str = "equalize"  # the preprocessing's intensity step (data.preprocess)
    # Repeat the images of smaller sources in each epoch so that every source has at least
    # this share of the largest source's count (0: no repeats).
    source_balance: float = 0.5
    # Further repeats of some training images in each epoch, on top of ``source_balance``:
    # keys are a source ("lgg-tcga") or a source and MR sequence ("lgg-tcga:T1"), values how
    # many times their images go in. For a sequence that the other sources outnumber.
    oversample: dict[str, int] = field(default_factory=dict)
    # Decay of an exponential moving average of the weights (0: none). With it, validation,
    # the chosen epoch and the exported weights are the average's (``AveragedWeights``).
    ema_decay: float = 0.0
    # Weight of a distillation term (learning without forgetting, Li & Hoiem 2016): on the
    # images of the sources the ``from_model`` was trained on, the KL divergence of the
    # network's predictions from that model's, both softened by ``distill_temperature``.
    # It keeps what the base model knew of its sources while new sources are learnt (0: off).
    distill: float = 0.0
    distill_temperature: float = 2.0
    max_train_batches: int | float = 1.0  # for smoke tests: a few steps, not a full epoch
    max_minutes: float | None = None  # stop after this wall time (then export as usual)
    # Folders of images that are not brain MRI (head CT, say): the guard learns to refuse
    # them (``ood.fit_refusal``). Not used for the network's training.
    refuse_dirs: list[Path] = field(default_factory=list)
    # The guard also gets a density on block statistics of the training MRIs
    # (``training.density``), for architectures that give them (EfficientNet-Lite).
    guard_density: bool = True
    half_precision_weights: bool = True
    # How the folders are labelled (data.folders.LABEL_SCHEMES); "types" also trains a second
    # head that names the MR sequence.
    label_scheme: str = "classes"


def _segment_augment() -> AugmentConfig:
    # Milder geometry than the classifier's: an outline must stay on the anatomy it traces,
    # and the slices of a scan are upright.
    return AugmentConfig(rotation=15.0, shift=0.1, shear=0.1, zoom=0.15)


@dataclass
class SegmentConfig:
    """One training run of the segmentation model (``mri-tumor train-segmenter``)."""

    data_dir: Path  # the whole-scan layout of data.patients (slices with masks)
    out: Path = Path("runs/segment")
    sequence: str = "FLAIR"  # the sequence the masks were drawn on
    # Co-registered sequences given as further input channels (e.g. ("T1", "T1C+")); a
    # sequence a patient lacks is replaced by ``sequence``. Empty: ``sequence`` alone.
    companions: tuple[str, ...] = ()
    # 2.5-D: the slices before and after as the second and third input channel (not with
    # companions). In training their order is swapped at random (a scan may run either way)
    # and, with ``neighbour_dropout``, both are replaced by the slice itself (a slice image
    # read alone).
    neighbours: bool = False
    neighbour_dropout: float = 0.15
    image_size: int = 256  # a multiple of 32: the lgg-tcga slices' own size (192 before 2026-12-07)
    held_out: float = 0.2  # share of each institution's patients kept for the final test
    epochs: int = 30
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0
    # Slices without tumour drawn per tumour slice in each epoch (all tumour slices are
    # drawn every epoch): most slices of a stack show no tumour.
    clear_per_tumour: float = 1.0
    augment: AugmentConfig = field(default_factory=_segment_augment)
    intensity: str = "equalize"
    # Post-processing, stated in the card: a pixel is tumour at this probability; 3-D
    # components smaller than this share of the largest are removed; holes are filled.
    threshold: float = 0.5
    min_component_share: float = 0.1
    max_train_batches: int | float = 1.0  # for smoke tests
    max_minutes: float | None = None
    pretrained: bool = True
