"""A U-Net for tumour segmentation on the shipped classifier's backbone.

The encoder is EfficientNet-Lite0 (ImageNet weights, the blocks of
``models.efficientnet_lite``); the decoder climbs back from 1/32 of the input to full size,
joining at each step the encoder's feature maps of that size (skip connections, as in
Ronneberger et al. 2015). The output is one logit per pixel: tumour (the FLAIR abnormality)
or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mri_tumor.models.efficientnet_lite import LITE0_STAGES, EfficientNetLite, efficientnet_lite0

# Decoder widths, deepest step first (1/16, 1/8, 1/4, 1/2). The logits at half size are
# enlarged bilinearly: a decoder step at full size tripled the training time on the 2 cores.
DECODER_CHANNELS = (96, 64, 40, 24)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DecoderStep(nn.Module):
    """Upsample x2, join the encoder's maps of that size, two 3x3 convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(c_in + c_skip, c_out),
                                   _conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


def _skip_blocks(stages: tuple[tuple[int, int, int, int, int, int], ...]) -> list[int]:
    """Indices of the blocks whose output is the last at its resolution."""
    strides = [stride if i == 0 else 1 for repeats, _, stride, *_ in stages
               for i in range(repeats)]
    return [i for i in range(len(strides)) if i + 1 == len(strides) or strides[i + 1] == 2]


def _out_channels(block: nn.Module) -> int:
    conv = block.get_submodule("_project_conv")
    assert isinstance(conv, nn.Conv2d)
    return conv.out_channels


class EfficientUNet(nn.Module):
    """U-Net with an EfficientNet-Lite0 encoder: (B, 3, H, W) -> (B, 1, H, W) logits; H and
    W must be multiples of 32."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone._conv_stem, backbone._bn0, nn.ReLU6(inplace=True))
        self.blocks = backbone._blocks
        self.skip_at = _skip_blocks(LITE0_STAGES)
        widths: list[int] = [LITE0_STAGES[0][5]]
        widths += [_out_channels(self.blocks[i]) for i in self.skip_at][1:]
        # widths: channels at 1/2, 1/4, 1/8, 1/16, 1/32
        skips = widths[-2::-1]  # joined at 1/16, 1/8, 1/4, 1/2
        steps, c_in = [], widths[-1]
        for c_skip, c_out in zip(skips, DECODER_CHANNELS, strict=True):
            steps.append(DecoderStep(c_in, c_skip, c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(steps)
        self.head = nn.Conv2d(c_in, 1, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixels)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.skip_at:
                features.append(x)
        x = features.pop()
        for step in self.decoder:
            x = step(x, features.pop())
        return F.interpolate(self.head(x), size=pixels.shape[-2:], mode="bilinear",
                             align_corners=False)


def efficient_unet(pretrained: bool = True) -> EfficientUNet:
    """The segmentation network; with ``pretrained`` the encoder starts from ImageNet."""
    return EfficientUNet(efficientnet_lite0(num_classes=1, pretrained=pretrained))
