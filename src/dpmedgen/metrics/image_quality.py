"""Per-sample similarity of each generated image to its nearest real (test) image.

For every fake image we find the real image at the smallest Euclidean (L2) pixel distance, then compute
SSIM and PSNR (``data_range=1``) between the pair and average over fake images.

SSIM convention. :func:`ssim_values` is the standard SSIM of Wang, Bovik, Sheikh & Simoncelli (2004) as
their MATLAB code, scikit-image (``structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``) and piq compute it: 11 x 11 Gaussian window (sigma 1.5,
truncated at 3.5 sigma), population (co)variances, K1 = 0.01, K2 = 0.03, and the SSIM map averaged over the
*valid* region only (pixels whose window lies inside the image: (H - 10) x (W - 10)); no padding. It is not
torchmetrics' ``structural_similarity_index_measure``, which pads by reflection and averages the whole map
(up to 0.18 higher or lower at 64 px, and its convention changed in torchmetrics 1.4.2). Images need at
least 11 x 11 pixels. A test checks agreement with scikit-image to 1e-10.
High values mean generated images sit close to real ones: a fidelity signal, and, when extreme, a
memorization / privacy red flag.

PSNR of identical images. An exact copy has MSE 0 and PSNR = +inf (torchmetrics' value; any finite cap
would be arbitrary and would hide copies). ``psnr_nn`` is the plain mean of per-image PSNRs, so it is
``inf`` as soon as a single fake image exactly copies a real one; that is deliberate (an exact copy is the
strongest memorization signal there is). NaNs cannot occur for inputs in [0, 1]. Consumers that average
over seeds or plot must handle ``inf`` (the plotting code drops non-finite values with a warning).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .info import MetricInfo

if TYPE_CHECKING:
    from . import EvalContext

_CHUNK = 256  # fake images per chunk (bounds memory of the distance matrix and SSIM maps)

SSIM_SIGMA = 1.5  #: Gaussian window sd (Wang et al. 2004)
SSIM_WINDOW = 11  #: window side: 2 * round(3.5 sigma) + 1, scikit-image's truncation of the Gaussian
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _valid_matrix(n: int, w: torch.Tensor) -> torch.Tensor:
    """(n, n - k + 1) matrix M with (x @ M)[j] = sum_i w[i] x[j + i]: 'valid' correlation along one axis."""
    k = len(w)
    out = n - k + 1
    m = torch.zeros(n, out, dtype=w.dtype)
    cols = torch.arange(out)
    for i in range(k):
        m[cols + i, cols] = w[i]
    return m


def ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard SSIM and contrast-structure maps over the valid region, float64 (N, H - 10, W - 10).

    x, y: (N, H, W) or (N, 1, H, W). The separable Gaussian window is applied as two matrix products in
    float64 (exact 'valid' filtering; float64 CPU convolutions would be ~20x slower).
    """
    x = torch.as_tensor(x).to(torch.float64)
    y = torch.as_tensor(y).to(torch.float64)
    if x.dim() == 4:
        x, y = x[:, 0], y[:, 0]
    h, w = x.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}; got {h}x{w}")
    g = _gaussian_window()
    rows, cols = _valid_matrix(h, g).T, _valid_matrix(w, g)
    n = len(x)
    maps = rows @ torch.cat([x, y, x * x, y * y, x * y]) @ cols
    mx, my, xx, yy, xy = (maps[i * n : (i + 1) * n] for i in range(5))
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    cs = (2.0 * cov + c2) / (vx + vy + c2)
    lum = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    return lum * cs, cs


def ssim_values(x, y, data_range: float = 1.0) -> torch.Tensor:
    """Standard SSIM (Wang et al. 2004; = scikit-image with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False) of each pair: mean of the SSIM map over the valid region, float64 (N,)."""
    xt, yt = _as_nchw(x), _as_nchw(y)
    if xt.shape != yt.shape:
        raise ValueError(f"images differ in shape: {tuple(xt.shape)} vs {tuple(yt.shape)}")
    out = [ssim_maps(xt[i : i + _CHUNK], yt[i : i + _CHUNK], data_range)[0].mean(dim=(-2, -1))
           for i in range(0, len(xt), _CHUNK)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _as_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x


def nearest_real_indices(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> torch.Tensor:
    """For each fake image, the index of the real image at the smallest L2 pixel distance (int64, (N_fake,))."""
    r = _as_nchw(real).flatten(1).to(torch.float64)
    f = _as_nchw(fake).flatten(1).to(torch.float64)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake images differ in size: {r.shape[1]} vs {f.shape[1]} pixels")
    # float64 keeps the matrix-multiplication form of cdist accurate enough to rank near-ties correctly.
    return torch.cat([torch.cdist(f[i : i + _CHUNK], r).argmin(dim=1) for i in range(0, f.shape[0], _CHUNK)])


def nn_ssim_values(real, fake, nn_index: torch.Tensor | None = None) -> torch.Tensor:
    """Standard SSIM (:func:`ssim_values`: gaussian 11x11, sigma 1.5, valid region, data_range=1) of each fake
    image vs its nearest real image, float64."""
    r, f = _as_nchw(real).to(torch.float64), _as_nchw(fake).to(torch.float64)
    idx = nearest_real_indices(r, f) if nn_index is None else nn_index
    return ssim_values(f, r[idx])


def nn_psnr_values(real, fake, nn_index: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB (data_range=1) of each fake image vs its nearest real image; +inf for exact copies."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    r, f = _as_nchw(real).to(torch.float64), _as_nchw(fake).to(torch.float64)
    idx = nearest_real_indices(r, f) if nn_index is None else nn_index
    return peak_signal_noise_ratio(f, r[idx], data_range=1.0, reduction="none", dim=(1, 2, 3))


# --- metric families (registered in dpmedgen.metrics) -----------------------------------------------


def ssim_nn(ctx: "EvalContext") -> dict[str, float]:
    """Mean over fake images of SSIM to the nearest (L2) real image."""
    return {"ssim_nn": float(nn_ssim_values(ctx.real, ctx.fake, ctx.nn_index).mean())}


def psnr_nn(ctx: "EvalContext") -> dict[str, float]:
    """Mean over fake images of PSNR (dB) to the nearest (L2) real image; inf if any fake is an exact copy."""
    return {"psnr_nn": float(nn_psnr_values(ctx.real, ctx.fake, ctx.nn_index).mean())}


INFO: list[MetricInfo] = [
    MetricInfo(
        "ssim_nn",
        higher_is_better=True,
        range="[-1, 1]; 1 = identical",
        source="Wang, Bovik, Sheikh & Simoncelli 2004 (IEEE TIP), standard convention: gaussian 11x11, sigma "
        "1.5, K 0.01/0.03, data_range 1, SSIM map averaged over the valid region (= scikit-image "
        "structural_similarity with gaussian_weights, use_sample_covariance=False; not torchmetrics' "
        "reflect-padded full-map mean); implemented here",
        description="Mean over generated images of SSIM to the nearest (L2 pixel distance) real test image. "
        "Higher = more realistic, but values near 1 suggest memorization.",
        family="ssim_nn",
    ),
    MetricInfo(
        "psnr_nn",
        higher_is_better=True,
        range="[0, inf] dB; inf if any generated image exactly copies a real one",
        source="torchmetrics peak_signal_noise_ratio (data_range 1)",
        description="Mean over generated images of PSNR to the nearest (L2 pixel distance) real test image. "
        "Higher = closer to real images; inf signals an exact copy (memorization).",
        family="psnr_nn",
    ),
]

FAMILIES = {"ssim_nn": ssim_nn, "psnr_nn": psnr_nn}
