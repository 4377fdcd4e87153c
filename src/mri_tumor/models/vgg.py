"""VGG16 as the seed project used it: the 13 convolution layers of VGG16, global average
pooling, dropout 0.5 and a linear layer over the tumour classes (input 150 x 150).

The convolution stack has the same layout as torchvision's ``vgg16`` / ``vgg16_bn``
(``features.<index>.weight``), so a user's ImageNet checkpoint in that layout loads as is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mri_tumor.models.checkpoint import read_checkpoint
from mri_tumor.models.network import Network

# Channels per conv layer; "M" is a 2x2 max-pool. The 13-conv "D" configuration.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")
FEATURE_DIM = 512


def vgg_features(batch_norm: bool) -> nn.Sequential:
    """The VGG16 convolution stack, indexed exactly like torchvision's ``features``."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(channels, int(item), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return nn.Sequential(*layers)


class VGG16GAP(Network):
    """VGG16 convolutions -> global average pooling -> dropout -> linear classifier."""

    def __init__(self, num_classes: int = 4, batch_norm: bool = False,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = vgg_features(batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.feature_dim = FEATURE_DIM
        self.num_sequences = 0  # no sequence head
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature maps (the layer Grad-CAM looks at)."""
        return self.features(pixels)

    def pool_features(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled embedding that the head (and the out-of-distribution guard) read."""
        return self.pool(maps).flatten(1)

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Class logits from pooled features (VGG has no sequence head)."""
        return self.head(self.dropout(features)), None



def load_torchvision_checkpoint(model: VGG16GAP, path: str | Path) -> None:
    """Load the convolution weights of an ImageNet VGG16 checkpoint in torchvision's layout.

    Accepts a plain state dict or one nested under ``state_dict``/``model``, with or without
    a ``module.`` prefix. torchvision's fully connected ``classifier.*`` layers are dropped:
    this network pools globally and has its own head. Raises ValueError when the conv layers
    do not match (e.g. a ``vgg16_bn`` checkpoint given to ``vgg16``).
    """
    state = read_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = {k for k in model.state_dict() if k.startswith("features.")}
    missing, extra = expected - set(features), set(features) - expected
    if missing or extra:
        raise ValueError(f"{path}: not a torchvision VGG16 checkpoint for this architecture "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
    own = model.state_dict()
    for key, value in features.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, "
                             f"expected {tuple(own[key].shape)}")
    model.load_state_dict(features, strict=False)


def vgg16(num_classes: int = 4, pretrained: bool = False) -> VGG16GAP:
    """The seed's VGG16. No ImageNet weights ship with this project: pass
    ``init_weights`` to ``create_model`` to start from a torchvision checkpoint."""
    return VGG16GAP(num_classes, batch_norm=False)


def vgg16_bn(num_classes: int = 4, pretrained: bool = False) -> VGG16GAP:
    """VGG16 with batch normalisation after every convolution."""
    return VGG16GAP(num_classes, batch_norm=True)
