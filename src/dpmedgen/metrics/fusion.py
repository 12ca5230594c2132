"""Image-fusion quality metrics: how well a fused image F keeps the content of its two sources A and B.

DDcGAN fuses an MRI slice (A) and a PET slice (B) of the same patient into one image F. There is no ground
truth fused image, so the fusion literature scores F with no-reference statistics of F alone and with
measures of how much of A and of B survives in F. This module implements the usual set, batched: every
``*_values`` function takes arrays/tensors (N, H, W) or (N, 1, H, W) (a single (H, W) image is treated as
N = 1) and returns a float64 numpy array (N,), one value per image (triplet).

=======  =====================================  ========  =========================================================
name     what                                    better    source
=======  =====================================  ========  =========================================================
EN       entropy of F's 256-bin histogram (bits) higher    Shannon 1948; Roberts, van Aardt & Ahmed 2008 (survey)
SD       standard deviation of F                 higher    (contrast)
SF       spatial frequency sqrt(RF² + CF²)        higher    Eskicioglu & Fisher 1995
MG (AG)  average gradient (VIFB's formula)       higher*   Cui et al. 2015; VIFB (Zhang et al. 2020)
MI       MI(A,F) + MI(B,F), nats                 higher    Qu, Zhang & Yan 2002; VIFB
SCD      corr(F−B, A) + corr(F−A, B)             higher    Aslantas & Bendes 2015
VIF      VIF-P(A→F) + VIF-P(B→F)                 higher    Sheikh & Bovik 2006; sum as in fusion benchmarks
Qabf     edge preservation Q^{AB/F}              higher    Xydeas & Petrović 2000
SSIM_s   SSIM(F, s), s ∈ {A, B}                  higher    Wang et al. 2004 (valid-region mean)
PSNR_s   PSNR(F, s) (dB)                         higher    torchmetrics (data_range 1)
CC_s     Pearson correlation of F and s          higher    (linear similarity)
VIF_s    VIF-P of F with s as reference          higher    Sheikh & Bovik 2006; torchmetrics' formula
=======  =====================================  ========  =========================================================

Conventions (8-bit, as the fusion literature -- VIFB, Zhang et al. 2020; the Python evaluators of
CDDFuse/SeAFusion -- computes these on uint8 images):

- Histograms (EN, MI): an image in [0, 1] is quantised to the 256 grey levels ``round(255 x)`` (so 8-bit
  images stored as k/255 map back exactly to k); probabilities are plug-in frequencies. EN is in bits
  (log2), MI in nats (natural log), the units VIFB reports each in (its MI code uses ``log``, as do the
  SeAFusion/CDDFuse evaluators through sklearn's ``mutual_info_score``).
  Values outside [0, 1] raise ValueError.
- SD, SF and MG are in 8-bit grey levels by default (``scale=255``: the image is multiplied by 255 first),
  so they are comparable with published tables; pass ``scale=1`` for [0, 1] units. They are linear in
  ``scale``.
- VIF's model constant (visual noise variance σ_n² = 2) was set for 8-bit images, so VIF runs on 255 x
  (torchmetrics does not rescale by itself: on [0, 1] input the noise term would swamp every signal).
- SSIM and PSNR use ``data_range = 1`` on the [0, 1] images (scale-free). SSIM is the standard convention
  (Wang et al.'s code, scikit-image, piq: Gaussian 11x11, sigma 1.5, mean over the valid region), not
  torchmetrics' reflect-padded full-map mean.
- Qabf is invariant to a common intensity scale.
- Correlations (CC, SCD) of a constant image with anything are defined as 0 (no linear relation), not NaN.

Metric family ``fusion`` (registered by ``dpmedgen.metrics``; needs ``ctx.sources``, two sources, taken in
dict order as A = first, B = second) returns the mean over images of every metric; per-source metrics are
named ``fusion_{metric}_{source}``. NaN values (Qabf of edge-free sources; VIF with a flat source, whose
VIF is 0 / 0: it has no information to preserve) are left out of the means and counted in
``fusion_vif_n_undefined``, ``fusion_vif_{source}_n_undefined`` and ``fusion_qabf_n_undefined`` (images
whose value is undefined; 0 normally), so that a mean over fewer images is never silent; a metric that is
NaN for every image (VIF of images under 41x41) is reported as NaN.

Speed (2 shared CPU cores, 1,000 triplets of 64x64): ~3.5 s for everything, of which ~1.8 s is torchmetrics'
SSIM (two sources); MI ~0.5 s, VIF ~0.5 s, Qabf ~0.5 s, the rest < 0.2 s each.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from .info import MetricInfo, requires

if TYPE_CHECKING:
    from . import EvalContext

__all__ = [
    "FAMILIES",
    "INFO",
    "LEVELS",
    "QABF_MAX",
    "VIF_MIN_SIZE",
    "average_gradient_values",
    "cc_values",
    "entropy_values",
    "fusion",
    "fusion_info",
    "fusion_mi_values",
    "fusion_values",
    "fusion_vif_values",
    "undefined_metric_names",
    "mutual_information_values",
    "psnr_values",
    "qabf_values",
    "scd_values",
    "sd_values",
    "spatial_frequency_values",
    "ssim_values",
    "vif_values",
]

ArrayLike = np.ndarray | torch.Tensor

LEVELS = 256  #: grey levels of the EN / MI histograms (8-bit)
VIF_MIN_SIZE = 41  #: torchmetrics' VIF-P needs images of at least 41x41 (4 scales of 'valid' gaussian filtering)
_CHUNK = 256  # images per chunk for the torch-based metrics (bounds memory)
_JOINT_CHUNK = 128  # images per chunk of joint histograms: 128 x 65,536 int64 counts = 64 MiB

# Xydeas & Petrović (2000) constants of the edge-strength (g) and orientation (alpha) sigmoids
_QABF_G = (0.9994, -15.0, 0.5)  # Gamma_g, kappa_g, sigma_g
_QABF_A = (0.9879, -22.0, 0.8)  # Gamma_alpha, kappa_alpha, sigma_alpha
_QABF_L = 1.0  # exponent of the edge-strength weights w = g^L


def _sigmoid(x, gamma: float, kappa: float, sigma: float):
    exp = math.exp if isinstance(x, float) else torch.exp
    return gamma / (1.0 + exp(kappa * (x - sigma)))


#: Q^{AB/F} of a perfect edge (strength ratio 1, orientation agreement 1) with the standard constants:
#: Qg(1) * Qalpha(1) = 0.99885 * 0.97592 = 0.97480. This, not 1, is the largest value Qabf can take.
QABF_MAX = _sigmoid(1.0, *_QABF_G) * _sigmoid(1.0, *_QABF_A)


# --- input handling -----------------------------------------------------------------------------------


def _as_batch(images: ArrayLike, name: str = "images") -> np.ndarray:
    """(N, H, W) float64 numpy array from (N, H, W), (N, 1, H, W) or (H, W) arrays/tensors."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), (N, 1, H, W) or (H, W); got {arr.shape}")
    return arr


def _same_shape(*named: tuple[str, ArrayLike]) -> list[np.ndarray]:
    arrays = [_as_batch(x, n) for n, x in named]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError("images differ in shape: " + ", ".join(f"{n} {a.shape}" for (n, _), a in zip(named, arrays)))
    return arrays


def _levels(images: np.ndarray, name: str) -> np.ndarray:
    """8-bit grey levels round(255 x) of images in [0, 1], int64 (N, H*W)."""
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: histogram metrics need values in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    return np.rint(images.reshape(len(images), -1) * (LEVELS - 1)).astype(np.int64)


def _sum_plogp(counts: np.ndarray, n_pixels: int) -> np.ndarray:
    """Sum over the last axis of c * log2(c) for integer counts c (0 log 0 = 0), via a lookup table."""
    c = np.arange(n_pixels + 1, dtype=np.float64)
    table = np.zeros_like(c)
    table[1:] = c[1:] * np.log2(c[1:])
    return table[counts].sum(axis=-1)


def _entropy_from_counts(counts: np.ndarray, n_pixels: int) -> np.ndarray:
    """Plug-in entropy in bits, -sum p log2 p with p = c / n = log2 n - (1/n) sum c log2 c."""
    return math.log2(n_pixels) - _sum_plogp(counts, n_pixels) / n_pixels


def _histograms(levels: np.ndarray, bins: int) -> np.ndarray:
    """Per-row histograms (N, bins) of integer levels (N, P) in [0, bins)."""
    n = len(levels)
    keys = (np.arange(n, dtype=np.int64)[:, None] * bins + levels).ravel()
    return np.bincount(keys, minlength=n * bins).reshape(n, bins)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation per image of (N, H, W) arrays; 0 where either image is constant."""
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    # constant images tested exactly (their mean-removed residue is rounding noise, not signal)
    ok = (x.max(axis=1) > x.min(axis=1)) & (y.max(axis=1) > y.min(axis=1))
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    num = (x * y).sum(axis=1)
    out = np.zeros(len(x))
    ok &= denom > 0
    out[ok] = num[ok] / denom[ok]
    return np.clip(out, -1.0, 1.0)


# --- no-reference statistics of F ---------------------------------------------------------------------


def entropy_values(fused: ArrayLike) -> np.ndarray:
    """EN: Shannon entropy (bits) of each image's 256-bin grey-level histogram.

    EN = -sum_{l=0}^{255} p_l log2 p_l, p_l = (number of pixels with round(255 x) = l) / (H W)
    (Shannon 1948; as a fusion metric e.g. Roberts, van Aardt & Ahmed 2008, J. Appl. Remote Sens.).
    Range [0, 8]; 0 for a constant image, 8 when all 256 levels are equally frequent. Higher = more
    information (but noise raises it too).
    """
    f = _as_batch(fused, "fused")
    return _entropy_from_counts(_histograms(_levels(f, "fused"), LEVELS), f[0].size)


def sd_values(fused: ArrayLike, scale: float = 255.0) -> np.ndarray:
    """SD: standard deviation of each image's pixels, sqrt(1/(HW) sum (F - mean F)^2) (ddof 0).

    In units of ``scale`` (default 255: 8-bit grey levels, as fusion papers report it). Higher = more contrast.
    """
    f = _as_batch(fused, "fused") * scale
    return f.reshape(len(f), -1).std(axis=1)


def spatial_frequency_values(fused: ArrayLike, scale: float = 255.0) -> np.ndarray:
    """SF (Eskicioglu & Fisher 1995, IEEE Trans. Commun. 43(12)): sqrt(RF^2 + CF^2) with

    RF^2 = 1/(MN) sum_{i=1..M} sum_{j=2..N} (F(i,j) - F(i,j-1))^2   (row frequency: horizontal differences)
    CF^2 = 1/(MN) sum_{i=2..M} sum_{j=1..N} (F(i,j) - F(i-1,j))^2   (column frequency: vertical differences)

    for an M x N image (normalised by MN, as in the paper and VIFB). In units of ``scale`` (default 255).
    0 for a constant image; a horizontal ramp of step c gives c sqrt((N-1)/N). Higher = more detail.
    """
    f = _as_batch(fused, "fused") * scale
    mn = f.shape[1] * f.shape[2]
    rf2 = (np.diff(f, axis=2) ** 2).sum(axis=(1, 2)) / mn
    cf2 = (np.diff(f, axis=1) ** 2).sum(axis=(1, 2)) / mn
    return np.sqrt(rf2 + cf2)


def average_gradient_values(fused: ArrayLike, scale: float = 255.0) -> np.ndarray:
    """MG / AG, average gradient as VIFB computes it (Zhang, Ye & Xiao 2020, ``metricsAvg_gradient.m``; after
    Cui et al. 2015):

    AG = 1/((M-1)(N-1)) sum_{i=1..M} sum_{j=1..N} sqrt((Gx(i,j)^2 + Gy(i,j)^2) / 2)

    for an M x N image, with (Gx, Gy) = MATLAB ``gradient(F)``: central differences (F(i,j+1) - F(i,j-1)) / 2
    inside, one-sided differences F(i,2) - F(i,1) and F(i,N) - F(i,N-1) on the first and last column (and
    likewise along rows), summed over all M N pixels but divided by (M-1)(N-1), as VIFB does
    (``numpy.gradient`` computes the same differences). In units of ``scale`` (default 255, 8-bit grey levels
    as VIFB's uint8 images). 0 for a constant image; a ramp of step c along one axis gives
    c / sqrt(2) * MN / ((M-1)(N-1)). Higher = sharper, but AG rewards noise as much as detail (a noisy fusion
    scores higher than a clean one), so it is not a quality ranking by itself: read it with SD/SF/EN and the
    reference-based metrics.
    """
    f = _as_batch(fused, "fused") * scale
    m, n = f.shape[1], f.shape[2]
    if m < 2 or n < 2:
        raise ValueError(f"average gradient needs images of at least 2x2, got {m}x{n}")
    gy, gx = np.gradient(f, axis=(1, 2))
    return np.sqrt((gx * gx + gy * gy) / 2.0).sum(axis=(1, 2)) / ((m - 1) * (n - 1))


# --- information shared with the sources ---------------------------------------------------------------


def mutual_information_values(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """MI(X, Y) = H(X) + H(Y) - H(X, Y) in **nats** (natural log), per image pair, from 256-bin (joint
    256 x 256) histograms.

    Nats, as the benchmarks cited compute it: VIFB's ``metricsMutinf.m`` (Zhang, Ye & Xiao 2020) uses
    ``log``, and the Python evaluators of SeAFusion/CDDFuse use ``sklearn.metrics.mutual_info_score`` (natural
    log). Multiply by 1 / ln 2 = 1.4427 for bits. Note EN (:func:`entropy_values`) is in bits, so
    MI(X, X) = ln 2 x EN(X). Images in [0, 1] are quantised to round(255 x) (VIFB first min-max stretches each
    image to [0, 255]; identical for images that span [0, 1]). The plug-in estimate is biased upwards for
    small images: about (K_X - 1)(K_Y - 1) / (2 n) nats for K occupied levels and n pixels when n >> K_X K_Y
    (Miller 1955); a 64x64 image has fewer pixels (4,096) than joint bins (65,536), so two independent noise
    images with all 256 levels score ~2.8 nats, not 0. Compare MI only between runs at the same image size.
    """
    a, b = _same_shape(("x", x), ("y", y))
    n_pix = a[0].size
    la, lb = _levels(a, "x"), _levels(b, "y")
    h = _entropy_from_counts(_histograms(la, LEVELS), n_pix) + _entropy_from_counts(_histograms(lb, LEVELS), n_pix)
    for s in range(0, len(la), _JOINT_CHUNK):
        joint = _histograms(la[s : s + _JOINT_CHUNK] * LEVELS + lb[s : s + _JOINT_CHUNK], LEVELS * LEVELS)
        h[s : s + _JOINT_CHUNK] -= _entropy_from_counts(joint, n_pix)
    return np.maximum(h, 0.0) * math.log(2.0)  # bits -> nats; MI >= 0 (removes -1e-15 rounding residues)


def fusion_mi_values(a: ArrayLike, b: ArrayLike, fused: ArrayLike) -> np.ndarray:
    """Fusion MI (Qu, Zhang & Yan 2002, Electronics Letters 38(7)): MI(A, F) + MI(B, F) in nats, 256 bins, as
    VIFB reports it. Range [0, 16 ln 2 = 11.09]; see :func:`mutual_information_values` for the unit,
    histogram convention and small-image bias.
    """
    return mutual_information_values(a, fused) + mutual_information_values(b, fused)


def scd_values(a: ArrayLike, b: ArrayLike, fused: ArrayLike) -> np.ndarray:
    """SCD, sum of the correlations of differences (Aslantas & Bendes 2015, AEU Int. J. Electron. Commun. 69(12)):

    SCD = r(F - B, A) + r(F - A, B), r = Pearson correlation over the pixels of one image.

    F - B estimates what F took from A (and F - A what it took from B). Range [-2, 2]; F = A + B with
    independent A, B gives 2; F = A gives r(A - B, A) + 0 (F - A is constant, correlation defined as 0),
    i.e. sigma_A / sqrt(sigma_A^2 + sigma_B^2) for independent sources (1/sqrt 2 for equal variances).
    """
    a, b, f = _same_shape(("a", a), ("b", b), ("fused", fused))
    return _pearson(f - b, a) + _pearson(f - a, b)


def cc_values(fused: ArrayLike, source: ArrayLike) -> np.ndarray:
    """CC: Pearson correlation coefficient of F and one source over the pixels of each image pair.

    r = sum (F - mean F)(S - mean S) / sqrt(sum (F - mean F)^2 sum (S - mean S)^2). Range [-1, 1]; 1 when F is
    an increasing affine function of S; 0 (by convention) when either image is constant.
    """
    f, s = _same_shape(("fused", fused), ("source", source))
    return _pearson(f, s)


# --- full-reference measures from torchmetrics ----------------------------------------------------------


def _torch_chunks(fn, fused: np.ndarray, source: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    out = []
    for s in range(0, len(fused), _CHUNK):
        f = torch.from_numpy(fused[s : s + _CHUNK, None]).to(dtype)
        r = torch.from_numpy(source[s : s + _CHUNK, None]).to(dtype)
        out.append(fn(f, r).to(torch.float64))
    return torch.cat(out).numpy()


def ssim_values(fused: ArrayLike, source: ArrayLike) -> np.ndarray:
    """SSIM(F, S) (Wang, Bovik, Sheikh & Simoncelli 2004), standard convention, per image: gaussian window
    11x11, sigma 1.5, K1 0.01, K2 0.03, data_range 1, SSIM map averaged over the valid region (no padding),
    as scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
    (see :func:`dpmedgen.metrics.image_quality.ssim_values`; not torchmetrics' reflect-padded full-map mean).
    Range [-1, 1]; 1 = identical. Float64."""
    from .image_quality import ssim_values as _ssim

    f, s = _same_shape(("fused", fused), ("source", source))
    return _ssim(f, s).numpy()


def psnr_values(fused: ArrayLike, source: ArrayLike) -> np.ndarray:
    """PSNR(F, S) = 10 log10(1 / MSE(F, S)) dB (data_range 1; torchmetrics peak_signal_noise_ratio) per image.

    Range [0, inf] for images in [0, 1]; +inf when F == S exactly."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    f, s = _same_shape(("fused", fused), ("source", source))
    return _torch_chunks(
        lambda x, y: peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)), f, s, torch.float64
    )


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """torchmetrics' VIF window is the outer product of this normalised 1-D gaussian with itself."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _valid_filter_matrix(n: int, w: torch.Tensor, step: int = 1) -> torch.Tensor:
    """(n, out) matrix M with (x @ M)[j] = sum_i w[i] x[step j + i]: 'valid' correlation (then subsampling)."""
    k = len(w)
    cols = torch.arange(0, n - k + 1, step)
    m = torch.zeros(n, len(cols), dtype=w.dtype)
    for i in range(k):
        m[cols + i, torch.arange(len(cols))] = w[i]
    return m


def _vif_p(fused: torch.Tensor, ref: torch.Tensor, sigma_n_sq: float = 2.0) -> torch.Tensor:
    """torchmetrics' ``_vif_per_channel`` (same windows, masks and eps) for (N, H, W) float64 images, with
    the separable gaussian windows applied as two matrix products (float64 CPU convolutions are ~10x slower)."""
    eps = 1e-10
    num = torch.zeros(len(fused), dtype=torch.float64)
    den = torch.zeros(len(fused), dtype=torch.float64)
    n = len(fused)
    for scale in range(4):
        size = 2 ** (4 - scale) + 1
        w = _gaussian_1d(size, size / 5)
        if scale > 0:  # low-pass and keep every other pixel
            down_r = _valid_filter_matrix(ref.shape[-2], w, 2).T
            down_c = _valid_filter_matrix(ref.shape[-1], w, 2)
            ref, fused = down_r @ ref @ down_c, down_r @ fused @ down_c
        rows = _valid_filter_matrix(ref.shape[-2], w).T
        cols = _valid_filter_matrix(ref.shape[-1], w)
        maps = rows @ torch.cat([ref, fused, ref * ref, fused * fused, ref * fused]) @ cols
        mu_r, mu_f, rr, ff, rf = maps[:n], maps[n : 2 * n], maps[2 * n : 3 * n], maps[3 * n : 4 * n], maps[4 * n :]
        var_r = torch.clamp(rr - mu_r * mu_r, min=0.0)
        var_f = torch.clamp(ff - mu_f * mu_f, min=0.0)
        cov = rf - mu_r * mu_f
        g = cov / (var_r + eps)  # local gain of the model F = g R + V
        var_v = var_f - g * cov  # variance of the additive distortion V
        flat = var_r < eps  # flat reference: nothing to preserve, all of F is distortion
        g, var_v, var_r = torch.where(flat, 0.0, g), torch.where(flat, var_f, var_v), torch.where(flat, 0.0, var_r)
        flat = var_f < eps  # flat fused image: nothing kept, no distortion
        g, var_v = torch.where(flat, 0.0, g), torch.where(flat, 0.0, var_v)
        negative = g < 0
        var_v, g = torch.where(negative, var_f, var_v), torch.where(negative, 0.0, g)
        var_v = torch.clamp(var_v, min=eps)
        num += torch.log10(1.0 + g * g * var_r / (var_v + sigma_n_sq)).sum(dim=(1, 2))
        den += torch.log10(1.0 + var_r / sigma_n_sq).sum(dim=(1, 2))
    return num / den


def vif_values(fused: ArrayLike, source: ArrayLike) -> np.ndarray:
    """VIF-P of F with the source S as reference (Sheikh & Bovik 2006, IEEE TIP 15(2); pixel-domain version).

    torchmetrics' ``visual_information_fidelity(preds=F, target=S, sigma_n_sq=2)``: over 4 scales (gaussian
    windows 17, 9, 5, 3 px with sigma = size / 5, 'valid' filtering, dyadic downsampling), with a local gain
    model F = g S + V, sums over all windows and scales of

        VIF = sum log10(1 + g^2 sigma_S^2 / (sigma_V^2 + sigma_n^2)) / sum log10(1 + sigma_S^2 / sigma_n^2).

    The torchmetrics computation is reproduced here exactly (same windows, masks, eps; tests check agreement
    to 1e-10) but with each separable window applied as two matrix products in float64: torchmetrics' float64
    2-D convolutions take ~8 s per 1,000 64x64 pairs on 2 CPU cores, this ~0.3 s.

    Images are multiplied by 255 first: sigma_n^2 = 2 is the 8-bit calibration of the original code (sewar,
    piq, CDDFuse's evaluator), and torchmetrics does not rescale (on [0, 1] input the noise term would swamp
    every signal and all VIFs would be ~0). Range [0, inf): 1 for F = S, < 1 for a lossy F, > 1 possible for
    a contrast-enhanced F.

    Images smaller than 41x41 (``VIF_MIN_SIZE``, torchmetrics' limit: the filtering chain runs out of pixels)
    get NaN, with a warning, instead of an error: the family still reports the other metrics. A flat
    (constant) source S also gives NaN: the denominator, S's own information, is 0 (0 / 0); the ``fusion``
    family leaves such images out of its mean and counts them in ``*_n_undefined``.
    """
    f, s = _same_shape(("fused", fused), ("source", source))
    if min(f.shape[1:]) < VIF_MIN_SIZE:
        warnings.warn(
            f"VIF needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE}; got {f.shape[1]}x{f.shape[2]}: NaN",
            stacklevel=2,
        )
        return np.full(len(f), np.nan)
    out = [
        _vif_p(torch.from_numpy(f[i : i + _CHUNK] * 255.0), torch.from_numpy(s[i : i + _CHUNK] * 255.0))
        for i in range(0, len(f), _CHUNK)
    ]
    return torch.cat(out).numpy()


def fusion_vif_values(a: ArrayLike, b: ArrayLike, fused: ArrayLike) -> np.ndarray:
    """Fusion VIF: VIF-P(A -> F) + VIF-P(B -> F), the sum many fusion benchmarks report as "VIF"/"VIFF"
    (e.g. the evaluators of SeAFusion/CDDFuse). NOT the fusion-specific VIFF of Han, Cai, Cao & Xu 2013
    (Information Fusion 14(2)), which weighs sub-band VIF of each source by local information; that one is
    not implemented here. Range [0, inf); 2 when F = A = B."""
    return vif_values(fused, a) + vif_values(fused, b)


# --- Q^{AB/F}, edge preservation ----------------------------------------------------------------------


def _sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge strength g = sqrt(Sx^2 + Sy^2) and orientation alpha = atan(Sy / Sx) (pi/2 where Sx = 0) of
    (N, H, W) images, 3x3 Sobel with zero padding (MATLAB ``conv2(..., 'same')``, as the reference code)."""
    p = torch.nn.functional.pad(images, (1, 1, 1, 1))
    # horizontal gradient: right column minus left column, weights 1 2 1
    sx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    # vertical gradient: top row minus bottom row, weights 1 2 1
    sy = (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:]) - (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:])
    g = torch.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    alpha = torch.where(zero, math.pi / 2, torch.atan(sy / torch.where(zero, 1.0, sx)))
    return g, alpha


def _edge_preservation(g_s: torch.Tensor, a_s: torch.Tensor, g_f: torch.Tensor, a_f: torch.Tensor) -> torch.Tensor:
    """Q^{SF}(n, m) = Qg(G^{SF}) * Qalpha(A^{SF}) per pixel."""
    ratio_down = g_f / torch.where(g_s > 0, g_s, 1.0)  # used where g_s > g_f (so g_s > 0)
    ratio_up = g_s / torch.where(g_f > 0, g_f, 1.0)  # used where g_s < g_f
    strength = torch.where(g_s > g_f, ratio_down, torch.where(g_s < g_f, ratio_up, 1.0))
    orientation = 1.0 - torch.abs(a_s - a_f) / (math.pi / 2)
    return _sigmoid(strength, *_QABF_G) * _sigmoid(orientation, *_QABF_A)


def qabf_values(a: ArrayLike, b: ArrayLike, fused: ArrayLike) -> np.ndarray:
    """Q^{AB/F} (Xydeas & Petrović 2000, Electronics Letters 36(4)): edge information of A and B kept in F.

    Per pixel, Sobel edge strength g and orientation alpha = atan(Sy / Sx) (pi/2 where Sx = 0) of each image
    (3x3 Sobel, zero padding as the MATLAB reference ``conv2(.., 'same')``). For a source S in {A, B}:

    - relative strength G^{SF} = g_F / g_S if g_S > g_F, g_S / g_F if g_S < g_F, 1 if equal;
    - relative orientation A^{SF} = 1 - |alpha_S - alpha_F| / (pi/2);
    - Q^{SF} = Gamma_g / (1 + exp(kappa_g (G^{SF} - sigma_g))) * Gamma_a / (1 + exp(kappa_a (A^{SF} - sigma_a)))
      with Gamma_g = 0.9994, kappa_g = -15, sigma_g = 0.5, Gamma_a = 0.9879, kappa_a = -22, sigma_a = 0.8;

    Q^{AB/F} = sum (Q^{AF} w_A + Q^{BF} w_B) / sum (w_A + w_B), weights w = g^L with L = 1.

    Re-implemented after the MATLAB code distributed with VIFB (Zhang et al. 2020), with two deliberate
    details: (1) equal non-zero strengths give G = 1 (that code sets G to g_F itself, a slip that only
    changes ties, by < 0.1 %); (2) as in that code and the paper, orientations are compared literally, not
    modulo pi, so edges near +-90 degrees whose atan flips sign count as misaligned.

    The zero padding makes the image border an edge wherever the border pixels are not 0 (so a constant
    non-zero source still has edges on its frame); medical slices with a black background are unaffected.

    Range [0, ``QABF_MAX``] with ``QABF_MAX`` = Qg(1) Qalpha(1) = 0.9748 (the standard constants do not reach
    1): F = A = B scores exactly QABF_MAX. NaN when neither A nor B has any edge (both all 0: 0 / 0). Float64.
    """
    a, b, f = _same_shape(("a", a), ("b", b), ("fused", fused))
    out = []
    for s in range(0, len(f), _CHUNK):
        ga, aa = _sobel(torch.from_numpy(a[s : s + _CHUNK]))
        gb, ab = _sobel(torch.from_numpy(b[s : s + _CHUNK]))
        gf, af = _sobel(torch.from_numpy(f[s : s + _CHUNK]))
        wa, wb = ga**_QABF_L, gb**_QABF_L
        num = (_edge_preservation(ga, aa, gf, af) * wa + _edge_preservation(gb, ab, gf, af) * wb).sum(dim=(1, 2))
        den = (wa + wb).sum(dim=(1, 2))
        out.append(torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan))
    return torch.cat(out).numpy()


# --- the metric family -------------------------------------------------------------------------------


def fusion_values(
    a: ArrayLike, b: ArrayLike, fused: ArrayLike, source_names: tuple[str, str] = ("a", "b")
) -> dict[str, np.ndarray]:
    """Every fusion metric per image: ``{metric_name: (N,) array}`` with the names of the ``fusion`` family."""
    a, b, f = _same_shape(("a", a), ("b", b), ("fused", fused))
    name_a, name_b = source_names
    out = {
        "fusion_en": entropy_values(f),
        "fusion_sd": sd_values(f),
        "fusion_sf": spatial_frequency_values(f),
        "fusion_mg": average_gradient_values(f),
        "fusion_mi": fusion_mi_values(a, b, f),
        "fusion_scd": scd_values(a, b, f),
    }
    vif = {name_a: vif_values(f, a), name_b: vif_values(f, b)}
    out["fusion_vif"] = vif[name_a] + vif[name_b]
    out["fusion_qabf"] = qabf_values(a, b, f)
    for name, src in ((name_a, a), (name_b, b)):
        out[f"fusion_ssim_{name}"] = ssim_values(f, src)
        out[f"fusion_psnr_{name}"] = psnr_values(f, src)
        out[f"fusion_cc_{name}"] = cc_values(f, src)
        out[f"fusion_vif_{name}"] = vif[name]
    return out


def _mean(values: np.ndarray) -> float:
    """Mean over images ignoring NaN (undefined: Qabf of edge-free sources, VIF of a flat source); NaN if every
    value is NaN (tiny images' VIF). How many were left out is reported by ``*_n_undefined``."""
    finite_or_inf = values[~np.isnan(values)]
    return float(finite_or_inf.mean()) if len(finite_or_inf) else float("nan")


def undefined_metric_names(source_names: tuple[str, str] | list[str]) -> list[str]:
    """The fusion metrics that can be undefined (NaN) for an image: each gets a ``{name}_n_undefined`` count."""
    return ["fusion_vif", "fusion_qabf"] + [f"fusion_vif_{s}" for s in source_names]


@requires("sources")
def fusion(ctx: "EvalContext") -> dict[str, float]:
    """Fusion runs: mean over fused images of EN, SD, SF, MG, MI, SCD, VIF, Qabf and per-source SSIM/PSNR/CC/VIF.

    Sources are ``ctx.sources`` in dict order: A = first, B = second (exactly two are needed). Images on which
    VIF or Qabf is undefined (NaN: a flat source, an edge-free pair, images under 41x41 for VIF) are left out
    of those means, and counted, explicitly, in ``{metric}_n_undefined`` (0 in the normal case). A metric
    undefined for every image (VIF of images under 41x41) has neither a mean nor a count: evaluation logs it.
    """
    names = list(ctx.sources)
    if len(names) != 2:
        raise ValueError(f"fusion metrics need exactly two source images per fused image; got sources {names}")
    values = fusion_values(ctx.sources[names[0]], ctx.sources[names[1]], ctx.fake, (names[0], names[1]))
    out = {name: _mean(v) for name, v in values.items()}
    for name in undefined_metric_names(names):
        n_nan = int(np.isnan(values[name]).sum())
        if n_nan == len(values[name]):  # undefined for every image (VIF under 41x41): no mean, no count (logged)
            continue
        out[f"{name}_n_undefined"] = float(n_nan)
        if n_nan:
            warnings.warn(f"{name}: undefined (NaN) for {n_nan} of {len(values[name])} images, left out of the mean",
                          stacklevel=2)
    return out


# --- metric descriptions ------------------------------------------------------------------------------

_8BIT = "8-bit grey levels (image x 255)"

INFO: list[MetricInfo] = [
    MetricInfo(
        "fusion_en",
        higher_is_better=True,
        range="[0, 8] bits",
        source="Shannon entropy; fusion use e.g. Roberts, van Aardt & Ahmed 2008 (J. Appl. Remote Sens.); "
        "implemented here, 256-bin histogram of round(255 x)",
        description="Mean over fused images of the entropy of the grey-level histogram (information content; "
        "noise also raises it).",
        family="fusion",
    ),
    MetricInfo(
        "fusion_sd",
        higher_is_better=True,
        range=f"[0, 127.5] in {_8BIT}",
        source="standard deviation (ddof 0); implemented here",
        description="Mean over fused images of the pixel standard deviation (contrast).",
        family="fusion",
    ),
    MetricInfo(
        "fusion_sf",
        higher_is_better=True,
        range=f"[0, 255·sqrt 2) in {_8BIT}",
        source="Eskicioglu & Fisher 1995 (IEEE Trans. Commun.); implemented here, RF and CF normalised by M N",
        description="Mean over fused images of the spatial frequency sqrt(RF² + CF²) of horizontal and vertical "
        "neighbour differences (detail / activity).",
        family="fusion",
    ),
    MetricInfo(
        "fusion_mg",
        higher_is_better=True,
        range=f"[0, 255 M N / ((M-1)(N-1))) in {_8BIT} (64 px: 263)",
        source="average gradient (AG), Cui et al. 2015 (Opt. Commun.), as VIFB computes it (Zhang, Ye & Xiao "
        "2020, metricsAvg_gradient.m): MATLAB gradient (central differences, one-sided at the border), "
        "sum over all M N pixels / ((M-1)(N-1)); implemented here",
        description="Mean over fused images of the average gradient sum sqrt((Gx² + Gy²)/2) / ((M-1)(N-1)) "
        "(sharpness). Noise raises it as much as detail does (a noisy fusion scores high): not a quality "
        "ranking by itself.",
        family="fusion",
    ),
    MetricInfo(
        "fusion_mi",
        higher_is_better=True,
        range="[0, 16 ln 2 = 11.09] nats; plug-in estimate biased upwards at small sizes (independent 64x64 "
        "noise: ~2.8)",
        source="Qu, Zhang & Yan 2002 (Electron. Lett.); implemented here, 256x256-bin joint histograms of "
        "round(255 x), natural log (nats) as VIFB's metricsMutinf.m and sklearn mutual_info_score (SeAFusion/"
        "CDDFuse evaluators); x 1.4427 for bits",
        description="Mean over fused images of MI(A, F) + MI(B, F): information of both sources present in the "
        "fused image. Compare only at equal image size.",
        family="fusion",
    ),
    MetricInfo(
        "fusion_scd",
        higher_is_better=True,
        range="[-2, 2]",
        source="Aslantas & Bendes 2015 (AEU Int. J. Electron. Commun.); implemented here",
        description="Mean over fused images of the sum of correlations of differences corr(F − B, A) + "
        "corr(F − A, B): how much of each source's complementary content F carries.",
        family="fusion",
    ),
    MetricInfo(
        "fusion_vif",
        higher_is_better=True,
        range="[0, inf); 2 when F = A = B; NaN for images under 41x41",
        source="Sheikh & Bovik 2006 (IEEE TIP) pixel VIF via torchmetrics visual_information_fidelity "
        "(sigma_n² 2 on 8-bit scale), summed over the sources as fusion benchmarks do; not Han et al. 2013 VIFF",
        description="Mean over fused images of VIF(A → F) + VIF(B → F): visual information of the sources "
        "preserved in the fused image.",
        family="fusion",
    ),
    MetricInfo(
        "fusion_qabf",
        higher_is_better=True,
        range="[0, 0.9748]; 0.9748 = perfect edge transfer with the standard constants",
        source="Xydeas & Petrović 2000 (Electron. Lett.); implemented here after VIFB's MATLAB code (Sobel, "
        "Γg 0.9994, κg −15, σg 0.5, Γα 0.9879, κα −22, σα 0.8, L 1)",
        description="Mean over fused images of Q^{AB/F}: edge strength and orientation of both sources "
        "preserved in the fused image, weighted by source edge strength.",
        family="fusion",
    ),
]

_PER_SOURCE = {
    # stem: (higher_is_better, range, source, what)
    "ssim": (
        True,
        "[-1, 1]; 1 = identical",
        "Wang et al. 2004, standard convention: gaussian 11x11, sigma 1.5, K 0.01/0.03, data_range 1, mean over "
        "the valid region (= scikit-image structural_similarity with gaussian_weights, use_sample_covariance="
        "False; not torchmetrics' reflect-padded full map)",
        "SSIM of the fused image to",
    ),
    "psnr": (
        True,
        "[0, inf] dB; inf if a fused image equals its source",
        "torchmetrics peak_signal_noise_ratio (data_range 1)",
        "PSNR of the fused image to",
    ),
    "cc": (
        True,
        "[-1, 1]; 0 by convention for constant images",
        "Pearson correlation coefficient; implemented here",
        "Pearson correlation of the fused image's pixels with",
    ),
    "vif": (
        True,
        "[0, inf); 1 = identical; NaN for images under 41x41",
        "Sheikh & Bovik 2006 (IEEE TIP); torchmetrics visual_information_fidelity (pixel VIF, sigma_n² 2 on "
        "8-bit scale)",
        "VIF of the fused image with, as reference,",
    ),
}


def fusion_info(source_names: list[str] | tuple[str, ...]) -> list[MetricInfo]:
    """MetricInfo of every name the ``fusion`` family returns for these (two) sources: ``INFO`` + per source +
    the ``*_n_undefined`` counts."""
    per_source = [
        MetricInfo(
            f"fusion_{stem}_{s}",
            higher_is_better=hib,
            range=rng,
            source=src,
            description=f"Mean over fused images of the {what} the {s} source image it was fused from.",
            family="fusion",
        )
        for s in source_names
        for stem, (hib, rng, src, what) in _PER_SOURCE.items()
    ]
    undefined = [
        MetricInfo(
            f"{name}_n_undefined",
            higher_is_better=None,
            range="[0, n_fake] images; 0 normally",
            source="count of NaN values; implemented here",
            description=f"Number of fused images on which {name} is undefined (NaN: "
            + ("no edge in either source, 0 / 0" if name == "fusion_qabf" else
               "a flat source, whose VIF is 0 / 0, or images under 41x41")
            + f") and which {name}'s mean therefore leaves out.",
            family="fusion",
        )
        for name in undefined_metric_names(list(source_names))
    ]
    return list(INFO) + per_source + undefined


FAMILIES = {"fusion": fusion}
