"""Export to ONNX (optionally int8-quantised) for onnxruntime, edge devices and other stacks.

The graph takes normalised pixels ``pixels`` (B, 3, H, W) and returns ``logits``, the pooled
``features``, when the model has an out-of-distribution guard its ``ood_score``, and when it
has a sequence head the ``sequence_logits``: the file is self-contained, and the ONNX backend
needs neither torch nor the safetensors file.

What the graph needs besides (class names, input size, preprocessing, temperature, guard
threshold) travels in its ``metadata_props``, keys ``mri_tumor.*`` with JSON values
(``onnx_metadata``), and ``mri-tumor export`` writes the model card beside the file
(``model.onnx`` -> ``model.card.json``, ``exported_card_path``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri_tumor.card import DISCLAIMER, ModelCard
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
        # The guard's density reads one block's statistics, taken in the same pass.
        self.density_block = guard.density_block if guard is not None else None
        self.has_sequence = model.num_sequences > 0
        self.output_names = ["logits", "features"] + (["ood_score"] if self.score else []) + (
            ["sequence_logits"] if self.has_sequence else [])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        statistics = None
        if self.density_block is None:
            features, logits, sequence_logits = network_outputs(self.model, pixels)
        else:
            maps, statistics = self.model.forward_features_with_statistics(
                pixels, self.density_block)
            features, logits, sequence_logits = network_outputs(self.model, maps=maps)
        outputs = [logits, features]
        if self.score is not None:
            outputs.append(self.score(features, statistics))
        if sequence_logits is not None:
            outputs.append(sequence_logits)
        return tuple(outputs)


def export_onnx(model: Network, card: ModelCard, path: Path,
                guard: OODGuard | None = None) -> Path:
    """Write an fp32 ONNX graph with a dynamic batch axis (with the guard's score if given)
    and the card's metadata (``onnx_metadata``)."""
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
    write_metadata(path, card, outputs)
    return path


# -- what travels with the graph ----------------------------------------------------------
METADATA_PREFIX = "mri_tumor."
METADATA_VERSION = 1
EXPORT_MARK = "mri-tumor export"  # ``export.written_by`` of a card this module wrote


def _written_by() -> str:
    """``mri-tumor export <version>`` (the installed package's version; this layer may not
    import ``mri_tumor`` itself, which imports it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{EXPORT_MARK} {version('mri-tumor')}"
    except PackageNotFoundError:
        return EXPORT_MARK


def preprocessing_text(card: ModelCard) -> str:
    """How an image becomes the graph's ``pixels``, in words, from the card."""
    intensity = ("histogram-equalise it (each grey level -> the mid-rank of its pixels, "
                 "(below + equal / 2) / pixel count, in (0, 1))"
                 if card.intensity == "equalize" else "divide by 255")
    return (f"decode to 8-bit grey, resize to {card.image_size} x {card.image_size} "
            f"(bilinear), {intensity}, repeat the grey channel {card.input_channels} times, "
            f"then (x - mean) / std per channel with mean {card.mean} and std {card.std}; "
            f"float32, shape (batch, {card.input_channels}, {card.image_size}, "
            f"{card.image_size})")


def outputs_text(card: ModelCard, outputs: list[str], feature_dim: int | str = "D") -> str:
    """What the graph's outputs are, in words."""
    described = {
        "logits": f"logits (batch, {len(card.class_names)}) in class_names order; calibrated "
                  f"probabilities = softmax(logits / temperature), temperature "
                  f"{card.temperature:g}",
        "features": f"features (batch, {feature_dim}): the pooled embedding the guard reads",
        "ood_score": f"ood_score (batch): out-of-distribution score; above "
                     f"{card.ood_threshold} the image is refused as not a brain MRI"
                     + (f" (the highest of the feature distance and the density on block "
                        f"{card.ood_density['block']}'s statistics, scaled to that threshold)"
                        if card.ood_density else ""),
        "sequence_logits": f"sequence_logits (batch, {len(card.sequence_names)}) in "
                           f"sequence_names order, temperature {card.sequence_temperature:g}",
    }
    return "; ".join(described[name] for name in outputs)


def onnx_metadata(card: ModelCard, outputs: list[str], quantization: str | None = None,
                  feature_dim: int | str = "D") -> dict[str, str]:
    """The graph's ``metadata_props``: ``mri_tumor.<name>`` -> a JSON value, read from the
    card (``json.loads`` each value to use it)."""
    values: dict[str, Any] = {
        "metadata_version": METADATA_VERSION,
        "architecture": card.architecture,
        "card_version": card.version,
        "class_names": list(card.class_names),
        "display_names": {name: card.display_name(name) for name in card.class_names},
        "normal_class": card.normal_class,
        "label_scheme": card.label_scheme,
        "input_name": "pixels",
        "input_shape": ["batch", card.input_channels, card.image_size, card.image_size],
        "input_dtype": "float32",
        "image_size": card.image_size,
        "input_channels": card.input_channels,
        "color_mode": card.color_mode,
        "intensity": card.intensity,
        "mean": list(card.mean),
        "std": list(card.std),
        "preprocessing": preprocessing_text(card),
        "outputs": list(outputs),
        "outputs_description": outputs_text(card, outputs, feature_dim),
        "temperature": card.temperature,
        "ood_threshold": card.ood_threshold,
        "ood_density_block": (card.ood_density or {}).get("block"),
        "low_confidence_threshold": card.low_confidence_threshold,
        "sequence_names": list(card.sequence_names),
        "sequence_temperature": card.sequence_temperature,
        "quantization": quantization or "none",
        "exported_by": _written_by(),
        "disclaimer": DISCLAIMER,
    }
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def write_metadata(path: Path, card: ModelCard, outputs: list[str] | None = None,
                   quantization: str | None = None) -> None:
    """Put ``onnx_metadata`` (replacing earlier ``mri_tumor.*`` entries) and a one-paragraph
    description into the ONNX file at ``path``."""
    import onnx

    model = onnx.load(str(path))
    outputs = outputs or [output.name for output in model.graph.output]
    shapes = {output.name: output.type.tensor_type.shape.dim for output in model.graph.output}
    feature_dim: int | str = "D"
    if len(shapes.get("features", [])) == 2 and shapes["features"][1].dim_value:
        feature_dim = shapes["features"][1].dim_value
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in onnx_metadata(card, outputs, quantization, feature_dim).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (f"{card.architecture} brain MRI classifier. Input pixels: "
                        f"{preprocessing_text(card)}. Outputs: "
                        f"{outputs_text(card, outputs, feature_dim)}. "
                        f"Metadata: {METADATA_PREFIX}* (JSON values). {DISCLAIMER}")
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``mri_tumor.*`` metadata of an ONNX file, decoded (names without the prefix)."""
    import onnx

    return {p.key.removeprefix(METADATA_PREFIX): json.loads(p.value)
            for p in onnx.load(str(path), load_external_data=False).metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def exported_card_path(onnx_path: Path) -> Path:
    """Where ``mri-tumor export`` writes the card: ``model.onnx`` -> ``model.card.json``."""
    return onnx_path.with_name(onnx_path.stem + ".card.json")


def is_exported_card(path: Path) -> bool:
    """True when ``path`` is a card that an export wrote (its ``export.written_by``)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(raw, dict) and isinstance(raw.get("export"), dict)
            and str(raw["export"].get("written_by", "")).startswith(EXPORT_MARK))


def write_exported_card(card: ModelCard, onnx_path: Path, quantization: str | None,
                        weights_sha256: str | None = None) -> Path:
    """The model card beside the exported file, with an ``export`` section (which file, how
    quantised, the weights it came from); ``ModelCard.load`` reads it as the card."""
    path = exported_card_path(onnx_path)
    content = card.to_dict()
    content["export"] = {"written_by": _written_by(),
                         "onnx_file": onnx_path.name, "quantization": quantization or "none",
                         "weights_sha256": weights_sha256,
                         "metadata_prefix": METADATA_PREFIX}
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
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

