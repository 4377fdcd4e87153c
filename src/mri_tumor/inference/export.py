"""Export to ONNX (optionally int8-quantised) for onnxruntime, edge devices and other stacks.

The graph takes normalised pixels ``pixels`` (B, 3, H, W) and returns ``logits``, the pooled
``features``, when the model has an out-of-distribution guard its ``ood_score``, and when it
has a sequence head the ``sequence_logits``: the file is self-contained, and the ONNX backend
needs neither torch nor the safetensors file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri_tumor.card import ModelCard
from mri_tumor.models.factory import channels_last
from mri_tumor.models.network import Network, network_outputs
from mri_tumor.models.ood import OODGuard


class InferenceGraph(nn.Module):
    """Network + guard: pixels -> the tensors named in ``output_names`` (logits, features[,
    ood_score][, sequence_logits]). The torch backend runs this module and the ONNX export
    is this module, so both compute the same things."""

    def __init__(self, model: Network, guard: OODGuard | None) -> None:
        super().__init__()
        self.model = model
        self.score = guard.module() if guard is not None else None
        self.has_sequence = model.num_sequences > 0
        self.output_names = ["logits", "features"] + (["ood_score"] if self.score else []) + (
            ["sequence_logits"] if self.has_sequence else [])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits, sequence_logits = network_outputs(self.model, pixels)
        outputs = [logits, features]
        if self.score is not None:
            outputs.append(self.score(features))
        if sequence_logits is not None:
            outputs.append(sequence_logits)
        return tuple(outputs)


def export_onnx(model: Network, card: ModelCard, path: Path,
                guard: OODGuard | None = None) -> Path:
    """Write an fp32 ONNX graph with a dynamic batch axis (with the guard's score if given)."""
    graph = InferenceGraph(channels_last(model.eval().float(), on=False), guard).eval()
    outputs = graph.output_names
    example = torch.zeros(1, card.input_channels, card.image_size, card.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), input_names=["pixels"],
                          output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ["pixels", *outputs]},
                          opset_version=17, dynamo=False,
                          # Folding would store the fp16 guard matrix cast to fp32; onnxruntime
                          # folds constants itself when it loads the graph.
                          do_constant_folding=False)
    return path


def _guard_nodes(path: Path) -> list[str]:
    """Names of the nodes that only compute ``ood_score`` (kept in fp32 when quantising)."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    if "ood_score" not in producer:
        return []
    return sorted(ancestors("ood_score") - ancestors("features"))


def quantize_int8(fp32_path: Path, out_path: Path, calibration: torch.Tensor) -> Path:
    """Static int8 quantisation (QDQ) calibrated on a batch of normalised MRI inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calibration[i:i + 8].numpy()}
                                 for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    prepared = out_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, nodes_to_exclude=_guard_nodes(prepared))
    prepared.unlink(missing_ok=True)
    return out_path

