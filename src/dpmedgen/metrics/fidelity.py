"""Distribution-level fidelity: Fréchet and kernel distances in EfficientNet-Lite0 feature space.

These are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` with a custom feature
module, so the numbers are torchmetrics' FID/KID formulas, but the features are ImageNet EfficientNet-Lite0
pool features (1280-d, see :mod:`dpmedgen.metrics.encoder`), not Inception-v3: values are NOT comparable
with published Inception FIDs, hence the names ``fid_effnetlite0`` / ``kid_effnetlite0``.

Features are computed once per image set (cached on the :class:`~dpmedgen.metrics.EvalContext`) and fed to
both metrics through :class:`PrecomputedFeatures`, an identity "feature extractor" over feature rows.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from .encoder import NUM_FEATURES

if TYPE_CHECKING:
    from . import EvalContext

KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' default subset_size


class PrecomputedFeatures(nn.Module):
    """Identity feature module: ``update(features, real=...)`` then receives feature rows, not images."""

    def __init__(self, num_features: int = NUM_FEATURES) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected precomputed features (N, {self.num_features}), got {tuple(x.shape)}")
        return x


def _check(real_features: torch.Tensor, fake_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real = torch.as_tensor(real_features, dtype=torch.float64).cpu()
    fake = torch.as_tensor(fake_features, dtype=torch.float64).cpu()
    for name, f in (("real", real), ("fake", fake)):
        if f.dim() != 2:
            raise ValueError(f"{name} features must be 2-D (N, D), got shape {tuple(f.shape)}")
        if f.shape[0] < 2:
            raise ValueError(f"{name} features: need at least 2 samples, got {f.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    return real, fake


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """torchmetrics' FID formula on precomputed (N, D) features (float64 throughout)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _check(real_features, fake_features)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """torchmetrics' KID (cubic polynomial kernel, unbiased MMD²) -> (mean, std) over random subsets.

    ``subset_size`` defaults to ``min(1000, n_real, n_fake)``. Subsets are drawn with torchmetrics'
    ``torch.randperm`` under a forked global RNG seeded with ``seed``: deterministic, and the caller's RNG
    state is left untouched. Note the unbiased estimator can be slightly negative; for two *identical* sets of
    m samples it is about ``-2/m * (mean k(x,x) - mean k(x,y))``, not exactly 0.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _check(real_features, fake_features)
    if subset_size is None:
        subset_size = min(KID_MAX_SUBSET_SIZE, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=subset_size
        )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# --- metric families (registered in dpmedgen.metrics) -----------------------------------------------


def fid_effnetlite0(ctx: "EvalContext") -> dict[str, float]:
    """Fréchet distance between EfficientNet-Lite0 feature Gaussians of real (test) and fake images."""
    return {"fid_effnetlite0": frechet_distance(ctx.real_features, ctx.fake_features)}


def kid_effnetlite0(ctx: "EvalContext") -> dict[str, float]:
    """Kernel (cubic polynomial MMD²) distance in EfficientNet-Lite0 feature space, mean and std over subsets."""
    mean, std = kernel_distance(ctx.real_features, ctx.fake_features, seed=ctx.seed)
    return {"kid_effnetlite0": mean, "kid_effnetlite0_std": std}
