"""Out-of-distribution guard: is this input a brain MRI slice like those the model knows?

Method: Mahalanobis distance (Lee et al., 2018) on the network's pooled features. Training
images give one mean per class and a shared, shrunk covariance; an input's score is its
squared distance to the nearest class mean. Photos, documents, CT, X-rays, blank and noise
images land far from every class. The threshold is a high quantile of the scores of held-out
(validation) brain MRIs, so about that fraction of real MRIs is wrongly rejected. Fitted per
source (``calibrate --per-source``) it is the highest of the sources' quantiles, so that no
source loses more than that fraction; looser, so it refuses fewer non-MRI images.

Second part, for images that are close to brain MRI in feature space but are not MRI (head CT
above all: same anatomy, a different physics): a *refusal direction*, a regularised logistic
regression between the training MRIs' features and features of examples that must be refused
(``fit_refusal``). An input is rejected when either part says so; the exported score is
``max(distance, 2 * threshold * sigmoid(refusal logit - cut))``, so one threshold serves both.

Third part, for what is neither (spine MRI, documents, photos the guard was never shown): a
*density* on what an image is made of, the per-channel mean and spread of one intermediate
block (``FeatureDensity``), fitted on brain MRIs alone. It enters the score as
``threshold * max(distance - typical, 0) / (cut - typical)``, where ``typical`` is the held-out
MRIs' median distance: it too refuses above the one threshold, and a typical MRI's score stays
the distance part's (distances in many dimensions crowd just below their cut, so a plain
``distance / cut`` would put every MRI near the threshold; ``benchmarks/guard_layers.py``,
docs/ood-guard.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mri_tumor.models.calibration import MIN_SOURCE_IMAGES

# Fraction of held-out brain MRI slices the guard may reject; the threshold is set there.
DEFAULT_REJECT_RATE = 0.005
# Share of the covariance replaced by a scaled identity. With the shipped model, on the
# non-MRI set of benchmarks/ood_eval.py at the same MRI rejection rate: 0.01 rejects 98.3%,
# 0.1 96.4%, 0.3 95.4% (chosen on that set, so its figure is optimistic).
SHRINKAGE = 0.01


@dataclass
class OODGuard:
    class_means: np.ndarray  # (C, D)
    whitening: np.ndarray  # (D, D): precision = whitening @ whitening.T
    threshold: float
    refusal_weight: np.ndarray | None = None  # (D,): logit = features @ weight + bias
    refusal_bias: float = 0.0
    refusal_cut: float = 0.0  # logits above this are refused
    density: FeatureDensity | None = None  # on block statistics (``density.block``)

    @property
    def density_block(self) -> int | None:
        """The block whose statistics the density reads (None without a density)."""
        return self.density.block if self.density is not None else None

    def score(self, features: np.ndarray, statistics: np.ndarray | None = None) -> np.ndarray:
        """Squared Mahalanobis distance of each feature row to its nearest class mean,
        divided by the feature dimension (see ``mahalanobis_module``); with a refusal
        direction or a density, the highest of the parts. A guard with a density needs the
        block ``statistics`` of the same images."""
        import torch

        if self.density is not None and statistics is None:
            raise ValueError("this guard has a density: score it with the block statistics")
        # In torch, on the same thread pool as the network: numpy's BLAS threads and
        # torch's spinning against each other cost 20 ms a call on 2 cores.
        with torch.inference_mode():
            inputs = [torch.from_numpy(np.ascontiguousarray(features, np.float32))]
            if self.density is not None:
                inputs.append(torch.from_numpy(np.ascontiguousarray(statistics, np.float32)))
            return self.module()(*inputs).numpy().astype(np.float64)

    def module(self) -> Any:
        """The score as a ``torch.nn.Module`` (the torch backend runs it, ONNX exports it)."""
        if getattr(self, "_module", None) is None:
            refusal = None
            if self.refusal_weight is not None:
                refusal = (self.refusal_weight, self.refusal_bias - self.refusal_cut,
                           self.threshold)
            density = None
            if self.density is not None:
                density = (self.density.mean, self.density.precision, self.density.cut,
                           self.density.typical, self.threshold)
            self._module = mahalanobis_module(self.class_means, self.whitening, refusal,
                                              density)
        return self._module

    def refusal_logits(self, features: np.ndarray) -> np.ndarray:
        """The refusal direction's logit minus its cut (> 0: refused); zeros without one."""
        if self.refusal_weight is None:
            return np.zeros(len(features))
        return (np.asarray(features, np.float64) @ self.refusal_weight.astype(np.float64)
                + self.refusal_bias - self.refusal_cut)

    def to_tensors(self) -> dict[str, Any]:
        import torch

        tensors = {"ood_class_means": torch.from_numpy(self.class_means.astype(np.float32)),
                   "ood_whitening": torch.from_numpy(self.whitening.astype(np.float32))}
        if self.refusal_weight is not None:
            tensors["ood_refusal_weight"] = torch.from_numpy(
                self.refusal_weight.astype(np.float32))
            tensors["ood_refusal_bias_cut"] = torch.tensor(
                [self.refusal_bias, self.refusal_cut], dtype=torch.float32)
        if self.density is not None:
            tensors.update(self.density.to_tensors())
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], threshold: float | None,
                     density_block: int | None = None) -> OODGuard | None:
        """From the ``extra.`` tensors stored with the weights (torch tensors or numpy); the
        density's block comes from the card (``ModelCard.ood_density``)."""
        if threshold is None or "ood_whitening" not in tensors:
            return None
        guard = cls(_float32(tensors["ood_class_means"]), _float32(tensors["ood_whitening"]),
                    float(threshold))
        if "ood_refusal_weight" in tensors:
            bias, cut = _float32(tensors["ood_refusal_bias_cut"]).tolist()
            guard.refusal_weight = _float32(tensors["ood_refusal_weight"])
            guard.refusal_bias, guard.refusal_cut = float(bias), float(cut)
        if density_block is not None and "ood_density_mean" in tensors:
            cut_typical = [*_float32(tensors["ood_density_cut"]).tolist(), 0.0]
            guard.density = FeatureDensity(
                _float32(tensors["ood_density_mean"]).astype(np.float64),
                _float32(tensors["ood_density_precision"]).astype(np.float64),
                float(cut_typical[0]), float(cut_typical[1]), block=density_block)
        return guard


def _float32(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "numpy"):
        tensor = tensor.float().numpy()
    return np.asarray(tensor, dtype=np.float32)


def mahalanobis_module(class_means: np.ndarray, whitening: np.ndarray,
                       refusal: tuple[np.ndarray, float, float] | None = None,
                       density: tuple[np.ndarray, np.ndarray, float, float, float] | None = None
                       ) -> Any:
    """``nn.Module``: pooled features (B, D) [and block statistics (B, S)] -> guard score
    (B,). Built by a function so that importing this module does not import torch (the ONNX
    backend runs without it).

    ``refusal`` is (weight, bias - cut, threshold) of a refusal direction, ``density`` (mean,
    precision, cut, typical, threshold) of a ``FeatureDensity`` (see the module docstring);
    without them the score is the distance alone, as in models fitted before them.
    """
    import torch
    from torch import nn

    class _MahalanobisScore(nn.Module):
        whitening: torch.Tensor
        projected_means: torch.Tensor
        refusal_weight: torch.Tensor
        refusal_offset: torch.Tensor
        refusal_scale: torch.Tensor
        density_mean: torch.Tensor
        density_precision: torch.Tensor
        density_scale: torch.Tensor
        density_typical: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            w = torch.from_numpy(np.ascontiguousarray(whitening, np.float32))
            means = torch.from_numpy(np.ascontiguousarray(class_means, np.float32))
            self.register_buffer("projected_means", means @ w)
            # Shipped guards are stored in fp16: keep them so (an exact round trip) to halve
            # the 1280 x 1280 matrix in exported ONNX files.
            if torch.equal(w.half().float(), w):
                w = w.half()
            self.register_buffer("whitening", w)
            self.refuses = refusal is not None
            if refusal is not None:
                weight, offset, threshold = refusal
                self.register_buffer("refusal_weight", torch.from_numpy(
                    np.ascontiguousarray(weight, np.float32)))
                self.register_buffer("refusal_offset", torch.tensor(float(offset)))
                self.register_buffer("refusal_scale", torch.tensor(2.0 * float(threshold)))
            self.has_density = density is not None
            if density is not None:
                mean, precision, cut, typical, threshold = density
                self.register_buffer("density_mean", torch.from_numpy(
                    np.ascontiguousarray(mean, np.float32)))
                self.register_buffer("density_precision", torch.from_numpy(
                    np.ascontiguousarray(precision, np.float32)))
                self.register_buffer("density_typical", torch.tensor(float(typical)))
                self.register_buffer("density_scale",
                                     torch.tensor(float(threshold) / (cut - typical)))

        def forward(self, features: torch.Tensor,
                    statistics: torch.Tensor | None = None) -> torch.Tensor:
            projected = features @ self.whitening.float()
            gaps = projected.unsqueeze(1) - self.projected_means.unsqueeze(0)
            score = (gaps * gaps).sum(dim=2).min(dim=1).values / projected.shape[1]
            if self.refuses:
                logit = features @ self.refusal_weight + self.refusal_offset
                score = torch.maximum(score, self.refusal_scale * torch.sigmoid(logit))
            if self.has_density:
                if statistics is None:
                    raise ValueError("this guard has a density: it needs block statistics")
                centred = (torch.sign(statistics) * torch.log1p(torch.abs(statistics))
                           - self.density_mean)
                squared = ((centred @ self.density_precision) * centred).sum(dim=1)
                # Clamped: rounding can make a distance of ~0 slightly negative.
                distance = torch.sqrt(torch.clamp(squared, min=0.0))
                score = torch.maximum(score, self.density_scale * torch.clamp(
                    distance - self.density_typical, min=0.0))
            return score

    return _MahalanobisScore().eval()


def source_balanced_quantile(scores: np.ndarray, q: float, groups: np.ndarray | None = None,
                             min_count: int = MIN_SOURCE_IMAGES) -> float:
    """The ``q`` quantile of ``scores``; with ``groups`` (each score's source) the highest of it
    and of the ``q`` quantiles of the groups with at least ``min_count`` scores, so that no such
    group has more than about ``1 - q`` of its scores above."""
    scores = np.asarray(scores, dtype=np.float64)
    cuts = [np.quantile(scores, q)]
    if groups is not None:
        groups = np.asarray(groups)
        cuts += [np.quantile(scores[groups == g], q) for g in np.unique(groups)
                 if (groups == g).sum() >= min_count]
    return float(max(cuts))


def fit_guard(train_features: np.ndarray, train_labels: np.ndarray, heldout_features: np.ndarray,
              num_classes: int, reject_rate: float = DEFAULT_REJECT_RATE,
              heldout_groups: np.ndarray | None = None) -> OODGuard:
    """Fit class means and covariance on training features; set the threshold on held-out ones
    (per source when ``heldout_groups`` names each held-out image's source)."""
    x = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])
    centered = x - means[labels]
    covariance = centered.T @ centered / len(x)
    # Shrink towards a scaled identity: 1280 dimensions from a few thousand images.
    target = np.trace(covariance) / covariance.shape[0]
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * target * np.eye(covariance.shape[0])
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whitening = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    guard = OODGuard(means.astype(np.float32), whitening.astype(np.float32), threshold=np.inf)
    guard.threshold = source_balanced_quantile(guard.score(heldout_features), 1.0 - reject_rate,
                                               heldout_groups)
    return guard


# Share of held-out brain MRIs the refusal direction may refuse (on top of the distance's).
# Chosen by 5-fold cross-validation on the head-CT PNGs (benchmarks/ct_refusal.py): 0.25%
# refused 93% of held-out CT, 0.5% refused 99%, at 0.7% and 0.9% of validation MRIs in all.
REFUSAL_REJECT_RATE = 0.005
# L2 penalty of the refusal direction on standardised features: strong, because a few hundred
# refusal examples face 1280 dimensions, and a direction fitted too closely to one CT set
# would also catch MRIs of sources it never saw.
REFUSAL_L2 = 1.0


def fit_refusal(guard: OODGuard, mri_features: np.ndarray, refuse_features: np.ndarray,
                heldout_features: np.ndarray, reject_rate: float = REFUSAL_REJECT_RATE,
                l2: float = REFUSAL_L2, heldout_groups: np.ndarray | None = None) -> OODGuard:
    """Add a refusal direction to ``guard``: logistic regression of MRI (training features)
    against images that must be refused; the cut is the ``1 - reject_rate`` quantile of the
    held-out MRIs' logits (per source with ``heldout_groups``). Classes are weighted equally
    whatever their counts."""
    from scipy.optimize import minimize

    x = np.concatenate([mri_features, refuse_features]).astype(np.float64)
    y = np.concatenate([np.zeros(len(mri_features)), np.ones(len(refuse_features))])
    weights = np.where(y == 1, 0.5 / len(refuse_features), 0.5 / len(mri_features))
    centre, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - centre) / scale

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        logits = z @ w + b
        p = 1 / (1 + np.exp(-logits))
        value = np.sum(weights * (np.logaddexp(0, logits) - y * logits)) + 0.5 * l2 * w @ w / len(w)
        gradient = weights * (p - y)
        return value, np.append(z.T @ gradient + l2 * w / len(w), gradient.sum())

    solution = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                        options={"maxiter": 500})
    w = solution.x[:-1] / scale  # back to raw features: logit = features @ w + bias
    bias = float(solution.x[-1] - centre @ w)
    heldout_logits = np.asarray(heldout_features, np.float64) @ w + bias
    guard.refusal_weight = w.astype(np.float32)
    guard.refusal_bias = bias
    guard.refusal_cut = source_balanced_quantile(heldout_logits, 1.0 - reject_rate,
                                                 heldout_groups)
    guard._module = None
    return guard


@dataclass
class FeatureDensity:
    """One Gaussian (shared, shrunk covariance) over image statistics of brain MRIs only, such
    as ``EfficientNetLite.block_statistics``, read on a signed log scale; ``cut``: the
    distance above which an input is unlike them; ``typical``: the held-out MRIs' median
    distance (where the guard's score from it starts, below ``cut``); ``block``: the network
    block they come from (None when they are not a block's). No negative is needed to fit
    it."""

    mean: np.ndarray
    precision: np.ndarray
    cut: float
    typical: float = 0.0
    block: int | None = None

    def to_tensors(self) -> dict[str, Any]:
        """The ``ood_density_*`` tensors stored with the weights (fp32)."""
        import torch

        return {"ood_density_mean": torch.from_numpy(self.mean.astype(np.float32)),
                "ood_density_precision": torch.from_numpy(self.precision.astype(np.float32)),
                "ood_density_cut": torch.tensor([self.cut, self.typical],
                                                dtype=torch.float32)}

    @staticmethod
    def transform(statistics: np.ndarray) -> np.ndarray:
        """Signed log: channel means and spreads span orders of magnitude."""
        values = np.asarray(statistics, np.float64)
        return np.sign(values) * np.log1p(np.abs(values))

    def distance(self, statistics: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row to the MRIs' mean."""
        centred = self.transform(statistics) - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", centred, self.precision, centred))

    def refuses(self, statistics: np.ndarray) -> np.ndarray:
        return self.distance(statistics) > self.cut


def fit_feature_density(train_statistics: np.ndarray, heldout_statistics: np.ndarray,
                        reject_rate: float = DEFAULT_REJECT_RATE,
                        shrinkage: float = SHRINKAGE, block: int | None = None,
                        heldout_groups: np.ndarray | None = None) -> FeatureDensity:
    """Fit the density on training MRIs and set its cut where it refuses ``reject_rate`` of
    held-out MRIs (of each source, with ``heldout_groups``)."""
    values = FeatureDensity.transform(train_statistics)
    covariance = np.cov(values, rowvar=False)
    scale = np.trace(covariance) / len(covariance)
    covariance = (1 - shrinkage) * covariance + shrinkage * scale * np.eye(len(covariance))
    density = FeatureDensity(values.mean(0), np.linalg.inv(covariance), cut=np.inf,
                             block=block)
    distances = density.distance(heldout_statistics)
    density.cut = source_balanced_quantile(distances, 1 - reject_rate, heldout_groups)
    # Below the cut even for a handful of held-out rows (a tiny smoke-test split).
    density.typical = min(float(np.median(distances)), 0.9 * density.cut)
    return density
