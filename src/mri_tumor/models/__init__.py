"""Model stage: architectures (``factory``: a registry of ``ArchSpec`` with their input
conventions and capabilities, weight loading and saving), the network interface they share
(``network``), and what is fitted on a network's outputs: the temperature (``calibration``) and
the out-of-distribution guard (``ood``).

The names below load on first use: the guard and the calibration need numpy, not torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mri_tumor.lazy import lazy_exports

if TYPE_CHECKING:
    from mri_tumor.models.factory import (
        ARCHITECTURES,
        ArchSpec,
        channels_last,
        create_model,
        fuse_batch_norm,
        half_precision_state,
        load_model,
        save_weights,
    )
    from mri_tumor.models.network import Network, NetworkOutputs, network_outputs

_HOMES = {name: "factory" for name in ("ARCHITECTURES", "ArchSpec", "channels_last", "create_model",
                                       "fuse_batch_norm", "half_precision_state", "load_model",
                                       "save_weights")}
_HOMES |= {name: "network" for name in ("Network", "NetworkOutputs", "network_outputs")}
__getattr__ = lazy_exports(__name__, _HOMES)
__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "Network",
    "NetworkOutputs",
    "channels_last",
    "create_model",
    "fuse_batch_norm",
    "half_precision_state",
    "load_model",
    "network_outputs",
    "save_weights",
]
