"""What a refused image looks like: the nearest of the kinds of image the guard knows.

The guard says "not a brain MRI"; a user also wants to know what it took the image for (a CT
slice, an X-ray, an MRI of another body part, a document). A softmax regression on the pooled
features the guard reads, fitted on labelled examples of each kind (brain MRI included),
answers that. It only ever adds words to a refusal: it never refuses or accepts anything.

Stored beside the weights as ``resemblance.safetensors`` (standardisation, weights, bias);
the card's ``resemblance`` section names the kinds in order, the phrase a refusal uses for
each, the least probability at which a kind is named, and the cross-validated accuracy.
Reading it needs numpy only (the ONNX path runs without torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESEMBLANCE_FILE = "resemblance.safetensors"


@dataclass
class Resemblance:
    """A fitted kind-of-image classifier on pooled features."""

    kinds: list[str]  # one per row of ``weight``
    mean: np.ndarray  # (D,) feature standardisation
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, D) pooled features -> (N, K) probabilities of each kind."""
        logits = ((features - self.mean) / self.scale) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def nearest(self, features: np.ndarray, min_probability: float = 0.0
                ) -> list[str | None]:
        """The most probable kind of each row, or None below ``min_probability``."""
        probabilities = self.probabilities(np.atleast_2d(features))
        best = probabilities.argmax(axis=1)
        return [self.kinds[k] if probabilities[i, k] >= min_probability else None
                for i, k in enumerate(best)]

    def save(self, folder: Path) -> Path:
        """Write ``resemblance.safetensors`` into ``folder``."""
        from safetensors.numpy import save_file

        path = Path(folder) / RESEMBLANCE_FILE
        save_file({"mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                   "weight": self.weight.astype(np.float32),
                   "bias": self.bias.astype(np.float32)}, str(path))
        return path

    @classmethod
    def load(cls, folder: Path, kinds: list[str]) -> Resemblance | None:
        """The classifier in ``folder`` for the card's ``kinds``; None when there is none."""
        from safetensors.numpy import load_file

        path = Path(folder) / RESEMBLANCE_FILE
        if not kinds or not path.is_file():
            return None
        tensors = load_file(str(path))
        if tensors["weight"].shape[0] != len(kinds):
            raise ValueError(f"{path}: {tensors['weight'].shape[0]} kinds, the card names "
                             f"{len(kinds)}")
        return cls(list(kinds), tensors["mean"], tensors["scale"], tensors["weight"],
                   tensors["bias"])


def fit_resemblance(features_by_kind: dict[str, np.ndarray], weight_decay: float = 1e-2,
                    steps: int = 300, seed: int = 0) -> Resemblance:
    """Fit the softmax regression (full-batch L-BFGS, classes weighted equally whatever
    their counts) on ``kind -> (N_kind, D) features``."""
    import torch

    kinds = list(features_by_kind)
    features = np.concatenate([features_by_kind[k] for k in kinds]).astype(np.float64)
    labels = np.concatenate([np.full(len(features_by_kind[k]), i) for i, k in enumerate(kinds)])
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    x = torch.from_numpy((features - mean) / scale)
    y = torch.from_numpy(labels)
    counts = np.bincount(labels, minlength=len(kinds))
    class_weight = torch.from_numpy(len(labels) / (len(kinds) * np.maximum(counts, 1)))
    torch.manual_seed(seed)
    weight = torch.zeros(len(kinds), x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(kinds), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, weight=class_weight)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Resemblance(kinds, mean, scale, weight.detach().numpy(), bias.detach().numpy())
