"""The network interface every architecture here declares, and the one forward pass that
training, export, the torch backend and Grad-CAM share.

In the spirit of timm's ``forward_features`` / ``forward_head``: the backbone gives the last
convolutional feature maps (the layer Grad-CAM looks at), pooling gives the embedding that the
heads and the out-of-distribution guard read, and the head gives class logits plus, for a
network with a sequence head, the MR sequence's logits. ``Network`` is the base class of each
architecture (an ``nn.Module``), so the type checker sees both the interface and the module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class NetworkOutputs(NamedTuple):
    """What one forward pass gives: pooled features, class logits, sequence logits (None
    without a sequence head)."""

    features: torch.Tensor
    logits: torch.Tensor
    sequence_logits: torch.Tensor | None


class Network(nn.Module):
    """A classification network as this package uses it. Subclasses set ``feature_dim`` and
    ``num_sequences`` and implement the three stages."""

    feature_dim: int  # length of the pooled embedding
    num_sequences: int = 0  # classes of the sequence head (0: no sequence head)
    # The block whose statistics the guard's density reads by default (None: this
    # architecture gives none, and its guard has no density).
    guard_block: int | None = None

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) pixels -> the last convolutional feature maps."""
        raise NotImplementedError

    def forward_features_with_statistics(self, pixels: torch.Tensor, block: int
                                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_features`` and, from the same pass, the per-channel mean and standard
        deviation of block ``block``'s output (B, 2 x its channels), which the guard's
        density reads."""
        raise ValueError(f"{type(self).__name__} gives no block statistics")

    def pool_features(self, maps: torch.Tensor) -> torch.Tensor:
        """Feature maps -> the pooled (B, feature_dim) embedding."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled features -> class logits, and sequence logits (None without that head)."""
        raise NotImplementedError

    def add_sequences(self, count: int) -> None:
        """Append ``count`` outputs to the sequence head (a network without one cannot)."""
        raise ValueError(f"{type(self).__name__} has no sequence head to grow")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits (``network_outputs`` gives every output)."""
        return network_outputs(self, pixels).logits


def network_outputs(network: Network, pixels: torch.Tensor | None = None, *,
                    maps: torch.Tensor | None = None) -> NetworkOutputs:
    """The one forward pass: from normalised ``pixels``, or from feature ``maps`` already
    computed (Grad-CAM differentiates the head alone)."""
    if maps is None:
        if pixels is None:
            raise ValueError("network_outputs needs pixels or feature maps")
        maps = network.forward_features(pixels)
    features = network.pool_features(maps)
    logits, sequence_logits = network.forward_head(features)
    return NetworkOutputs(features, logits, sequence_logits)
