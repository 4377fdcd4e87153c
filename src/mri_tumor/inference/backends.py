"""Where the network runs: torch (the network and guard as one module) or ONNX Runtime (one
self-contained graph, no torch in the process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mri_tumor.card import ModelCard
from mri_tumor.inference.model_folder import ensure_onnx_file, load_served
from mri_tumor.models.ood import OODGuard


class TorchBackend:
    """The network and guard as one torch module (``export.InferenceGraph``)."""

    name = "torch"

    def __init__(self, graph: Any, guard: OODGuard | None) -> None:
        self.graph = graph
        self.guard = guard
        self.ood_threshold = guard.threshold if guard is not None else None

    @classmethod
    def load(cls, directory: Path, threads: int) -> tuple[TorchBackend, ModelCard]:
        """The model folder's weights, batch norm fused, channels-last; and its card."""
        import torch

        from mri_tumor.inference.export import InferenceGraph
        from mri_tumor.models import channels_last, fuse_batch_norm

        torch.set_num_threads(threads)
        model, card, guard = load_served(directory)
        model = channels_last(fuse_batch_norm(model))
        return cls(InferenceGraph(model, guard).eval(), guard), card

    @property
    def model(self) -> Any:
        """The torch network, e.g. for Grad-CAM."""
        return self.graph.model

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised float32 (B, C, H, W) -> the graph's outputs by name (``logits``,
        ``features``, and ``ood_score`` and ``sequence_logits`` when the model has them)."""
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            outputs = self.graph(tensor)
        return {name: t.numpy() for name, t in zip(self.graph.output_names, outputs,
                                                      strict=True)}


class OnnxBackend:
    """One self-contained ONNX graph (network and guard score) in ONNX Runtime: no torch in
    the process, which keeps its memory small and its start fast."""

    name = "onnx"
    model = None  # no torch network to explain: Grad-CAM loads one when asked

    def __init__(self, session: Any, ood_threshold: float | None) -> None:
        self.session = session
        self.ood_threshold = ood_threshold
        self.output_names = [output.name for output in session.get_outputs()] if session else []

    @classmethod
    def load(cls, directory: Path, threads: int) -> tuple[OnnxBackend, ModelCard]:
        """The folder's ``model.onnx`` (or a cached export, made on first use); its card."""
        card = ModelCard.load(directory)
        path = ensure_onnx_file(directory, card)
        try:
            session = _onnx_session(path, threads)
        except Exception as error:  # onnxruntime raises its own types, e.g. InvalidProtobuf
            reason = str(error).splitlines()[0][:200]
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({reason}); delete it, "
                             "or write it again with mri-tumor export --force") from None
        height_width = session.get_inputs()[0].shape[2:]  # names when dynamic
        fixed_size = all(isinstance(d, int) for d in height_width)
        if fixed_size and height_width != [card.image_size, card.image_size]:
            raise ValueError(f"{path} takes {height_width} pixels but the card says "
                             f"{card.image_size}; re-export it with mri-tumor export")
        has_score = "ood_score" in [o.name for o in session.get_outputs()]
        if card.ood_threshold is not None and not has_score:
            raise ValueError(f"{path} has no ood_score output but the model has an "
                             "out-of-distribution guard; re-export it with mri-tumor export")
        return cls(session, card.ood_threshold if has_score else None), card

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised float32 (B, C, H, W) -> the graph's outputs by name (as the torch
        backend's)."""
        return dict(zip(self.output_names, self.session.run(None, {"pixels": batch}),
                        strict=True))


BACKENDS: dict[str, type[TorchBackend] | type[OnnxBackend]] = {
    "torch": TorchBackend, "onnx": OnnxBackend}


# The default of every front end and of evaluation: same numbers as torch (tested), and
# several times faster to start and to run on CPU.
DEFAULT_BACKEND = "onnx"


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle worker threads must not spin: they would steal the CPU from decoding and from the
    # next request's preprocessing (measured: 30 ms instead of 11 ms per image on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
