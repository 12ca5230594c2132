"""Full-reference image-quality metrics: MS-SSIM, MS-GMSD, MDSI and HaarPSI, per image, batched in torch.

Every ``*_values(x, y)`` function compares distorted images ``x`` with reference images ``y``, both (N, H, W)
or (N, 1, H, W) arrays/tensors of grayscale images in [0, 1] (data range 1), and returns one score per
image pair, a float64 tensor (N,). Images are processed ``chunk`` pairs at a time to bound memory.

=========  ==================  ===============  ===========================================================
metric     best (identical)    range            source
=========  ==================  ===============  ===========================================================
MS-SSIM    1, higher better    [0, 1]           Wang, Simoncelli & Bovik 2003 (their msssim.m)
MS-GMSD    0, lower better     [0, 0.5]         Zhang, Sander & Bermak 2017 (after GMSD, Xue et al. 2014)
MDSI       0, lower better     [0, 1.25)        Nafchi, Shahkolaei, Hedjam & Cheriet 2016 (gradient part)
HaarPSI    1, higher better    (0, 1]           Reisenhofer, Bosse, Kutyniok & Wiegand 2018
=========  ==================  ===============  ===========================================================

MS-GMSD, MDSI and HaarPSI are implemented here after the authors' reference code (MATLAB / NumPy) and the
piq library (photosynthesis-team/piq); their constants were tuned on 8-bit images, so images are scaled to
[0, 255] before the constants are applied. MATLAB's ``conv2(..., 'same')`` (zero padding; for even kernels the
window of output pixel j is j - k/2 + 1 .. j + k/2) is reproduced exactly, so the numbers match the
reference implementations, border effects included (tests compare with SciPy transcriptions of that code).
They compute in float64 throughout: float32 would cost HaarPSI ~2e-5 (its logit pooling) and MDSI up to
~3e-3 on near-identical pairs (its fourth roots amplify rounding residues). The filters are evaluated with
shifted slices and summed-area tables instead of float64 ``conv2d`` (slow on CPU), exactly the same sums.
MS-SSIM follows the authors' code (valid-region means, no padding; see :func:`ms_ssim_values`).

Cross-check against piq 0.8.0 (which cannot be a dependency: it imports torchvision, whose binary does not
load with our torch 2.13 CPU build; it was imported once with torchvision stubbed out), on 16 phantom MRI
slices at 64 px with Gaussian noise of sd 0.02, 0.1 and 0.3: MS-GMSD and HaarPSI equal piq's to within
1.4e-14; MDSI equals ``piq.mdsi(..., alpha=1.0)`` (gradient similarity only, as here) to within 1.1e-5
(piq computes in float32). piq's default on grayscale input (alpha 0.6 after copying the grey channel into
RGB) gives lower values (0.30 vs 0.35 at sd 0.02).

Speed (2 shared CPU threads, 1,000 pairs of 64 x 64 images): MS-SSIM ~3 s (float64, under load), MS-GMSD 0.1-0.2 s,
MDSI 0.2-0.35 s, HaarPSI 0.1-0.25 s.

Metric families (registered by ``dpmedgen.metrics``): ``iqa_nn`` (each generated image vs its L2-nearest
real test image) and ``iqa_sources`` (fusion runs: each fused image vs each of the images it was made from).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .info import MetricInfo, requires

if TYPE_CHECKING:
    from . import EvalContext

__all__ = [
    "FAMILIES",
    "INFO",
    "VALUE_FUNCTIONS",
    "haarpsi_values",
    "iqa_nn",
    "iqa_sources",
    "iqa_sources_info",
    "mdsi_values",
    "ms_gmsd_values",
    "ms_ssim_scales",
    "ms_ssim_values",
]

_CHUNK = 256  # image pairs per chunk
_DTYPE = torch.float64

ArrayLike = np.ndarray | torch.Tensor


# --- shared helpers ----------------------------------------------------------------------------------


def _as_batch(images: ArrayLike, name: str) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) array/tensor -> float64 tensor (N, 1, H, W)."""
    if isinstance(images, torch.Tensor):
        t = images.detach().to(device="cpu", dtype=_DTYPE)
    else:  # a float64 copy: also accepts read-only / broadcast arrays
        t = torch.from_numpy(np.array(images, dtype=np.float64))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W) (grayscale), got {tuple(t.shape)}")
    return t


def _chunked(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: ArrayLike, y: ArrayLike, chunk: int):
    """Apply ``fn`` to float64 (n, 1, H, W) chunks of the pairs (x, y); return the concatenated (N,) scores."""
    xt, yt = _as_batch(x, "x"), _as_batch(y, "y")
    if xt.shape != yt.shape:
        raise ValueError(f"x and y differ in shape: {tuple(xt.shape)} vs {tuple(yt.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if xt.shape[0] == 0:
        return torch.zeros(0, dtype=_DTYPE)
    return torch.cat([fn(xt[i : i + chunk], yt[i : i + chunk]) for i in range(0, xt.shape[0], chunk)])


def _conv2_same(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """MATLAB ``conv2(img, k, 'same')`` up to the kernel flip, for a stack of k x k kernels (K, 1, k, k).

    Zero padding; output pixel j sees input pixels j - (k - 1 - k // 2) .. j + k // 2 (MATLAB's alignment,
    which differs from SciPy's for even k). torch correlates rather than convolves, i.e. uses the kernel
    rotated by 180 degrees, which for the box filter used here changes nothing. (Only used for MDSI's
    pre-filter of images >= 384 px; the hot paths below use cheaper exact equivalents.)
    """
    k = kernels.shape[-1]
    lo, hi = k - 1 - k // 2, k // 2
    return F.conv2d(F.pad(img, (lo, hi, lo, hi)), kernels.to(img))


def _mean_subsample(img: torch.Tensor, f: int) -> torch.Tensor:
    """MATLAB ``Y = conv2(X, ones(f) / f^2, 'same'); Y(1:f:end, 1:f:end)``: f x f mean filter, keep every f-th.

    For f = 2 that is a 2 x 2 mean pool (zero row / column appended to odd sizes): ceil(H/2) x ceil(W/2).
    """
    if f == 1:
        return img
    if f == 2:
        p = F.pad(img, (0, img.shape[-1] % 2, 0, img.shape[-2] % 2))
        return (p[..., ::2, ::2] + p[..., 1::2, ::2] + p[..., ::2, 1::2] + p[..., 1::2, 1::2]) / 4.0
    box = torch.full((1, 1, f, f), 1.0 / (f * f), dtype=img.dtype)
    return _conv2_same(img, box)[..., ::f, ::f]


def _halve(img: torch.Tensor) -> torch.Tensor:
    """2 x 2 mean filter and dyadic subsampling (MATLAB conv2 'same' + (1:2:end)): ceil(H/2) x ceil(W/2)."""
    return _mean_subsample(img, 2)


def _prewitt_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude sqrt(Gx^2 + Gy^2) with the Prewitt operators [1 0 -1; 1 0 -1; 1 0 -1] / 3 and
    their transpose (as in the GMSD and MDSI reference code), 'same' size, zero padding: (N, 1, H, W).

    Computed separably with shifted slices (exact, and much faster than a float64 conv2d on CPU); the
    kernel flip of a true convolution only changes the signs of Gx, Gy.
    """
    p = F.pad(img, (1, 1, 1, 1))
    dh = p[..., :, :-2] - p[..., :, 2:]  # horizontal central difference, (H + 2) x W
    gx = (dh[..., :-2, :] + dh[..., 1:-1, :]).add_(dh[..., 2:, :]).div_(3.0)
    dv = p[..., :-2, :] - p[..., 2:, :]  # vertical central difference, H x (W + 2)
    gy = (dv[..., :, :-2] + dv[..., :, 1:-1]).add_(dv[..., :, 2:]).div_(3.0)
    return gx.mul_(gx).add_(gy.mul_(gy)).sqrt_()


def _similarity(a: torch.Tensor, b: torch.Tensor, c: float, alpha: float = 0.0) -> torch.Tensor:
    """Dice-like similarity ((2 - alpha) a b + c) / (a^2 + b^2 - alpha a b + c), in (0, 1] for a, b >= 0.

    Written so that a == b gives bitwise-equal numerator and denominator (exactly 1).
    """
    ab = a * b
    num = ab * 2.0
    den = (a * a).add_(b * b)  # == num bitwise when a == b
    if alpha:
        masked = ab.mul_(alpha)
        num.sub_(masked)
        den.sub_(masked)
    return num.add_(c).div_(den.add_(c))


# --- MS-SSIM -----------------------------------------------------------------------------------------

#: Wang, Simoncelli & Bovik (2003) scale weights, finest scale first (also torchmetrics' default).
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The coarsest scale of the standard setting (five scales of a 256 px image): 256 / 2^4 = 16 px.
MS_SSIM_COARSEST = 16


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for (height x width) images: as many of the standard five as keep the
    coarsest scale at least 16 px, i.e. M = clip(floor(log2(min(H, W) / 16)) + 1, 1, 5).

    32 px -> 2, 64 -> 3, 128 -> 4, >= 256 -> 5 scales (below 32 px: 1, plain SSIM).
    """
    side = min(height, width)
    if side < MS_SSIM_COARSEST:
        return 1
    return max(1, min(len(MS_SSIM_BETAS), int(math.floor(math.log2(side / MS_SSIM_COARSEST))) + 1))


def _halve_symmetric(img: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s MS-SSIM downsampling: ``imfilter(img, ones(2) / 4, 'symmetric', 'same')`` then
    ``(1:2:end, 1:2:end)``, i.e. 2 x 2 block means; an odd last row / column is averaged with its mirror
    (itself): ceil(H/2) x ceil(W/2)."""
    if img.shape[-2] % 2 or img.shape[-1] % 2:
        img = F.pad(img, (0, img.shape[-1] % 2, 0, img.shape[-2] % 2), mode="replicate")
    return F.avg_pool2d(img, 2)


def ms_ssim_values(
    x: ArrayLike, y: ArrayLike, betas: tuple[float, ...] | None = None, chunk: int = _CHUNK
) -> torch.Tensor:
    r"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003, Asilomar) of each pair, after the authors' MATLAB
    ``msssim.m``:

    .. math:: \mathrm{MS\text{-}SSIM} = \overline{\mathrm{SSIM}}_M^{\beta_M} \prod_{j=1}^{M-1} \overline{cs}_j^{\beta_j}

    where :math:`\overline{cs}_j` is the mean of SSIM's contrast-structure map and :math:`\overline{\mathrm{SSIM}}_M`
    the mean SSIM map at the coarsest scale, each averaged over the *valid* region (the pixels whose window
    lies inside the image; no padding), with the standard SSIM of
    :func:`dpmedgen.metrics.image_quality.ssim_maps`: Gaussian window 11 x 11, sigma 1.5, K1 = 0.01,
    K2 = 0.03, data range 1, float64. Scale 1 is the input; each further scale is the previous one's 2 x 2
    block means (``imfilter(.., ones(2)/4, 'symmetric')`` and every other pixel). This is the convention of
    the authors' code, piq and pytorch-msssim, not torchmetrics' (reflect padding, full-map means).

    Adaptation to small images. The standard five scales need >= 176 px (11 px window at 1/16 resolution),
    while our images are 32-256 px. We keep the standard window and use only the M finest scales, with
    M = :func:`ms_ssim_scales` (H, W) (the coarsest scale stays >= 16 px as in the standard 256 px setting:
    32 px -> 2 scales (32 and 16 px; the 16 px scale's valid region is only 6 x 6 windows), 64 px -> 3,
    128 px -> 4, >= 256 px -> 5), and the first M of Wang et al.'s weights renormalised to sum 1:
    :math:`\beta_j = b_j / \sum_{i \le M} b_i` with b = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Scores are
    therefore comparable between runs at the same image size, not across sizes nor with published values
    for large images. Below 32 px M = 1 (plain SSIM); below 11 px it raises ValueError. ``betas``
    overrides the weights (and so the number of scales); ``betas=(1.0,)`` is plain SSIM.

    Negative mean SSIM / cs terms are clipped to 0 before the powers (as pytorch-msssim and torchmetrics'
    ``normalize="relu"``; a fractional power of a negative number is undefined), so the range is [0, 1],
    1 for identical images.
    """
    from .image_quality import ssim_maps

    def one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = betas
        if w is None:
            m = ms_ssim_scales(a.shape[-2], a.shape[-1])
            w = tuple(v / sum(MS_SSIM_BETAS[:m]) for v in MS_SSIM_BETAS[:m])
        out = torch.ones(a.shape[0], dtype=_DTYPE)
        for j, beta in enumerate(w):
            if j > 0:
                a, b = _halve_symmetric(a), _halve_symmetric(b)
            ssim_map, cs_map = ssim_maps(a, b)
            term = (ssim_map if j == len(w) - 1 else cs_map).mean(dim=(-2, -1))
            out = out * term.clamp_min(0.0) ** beta
        return out

    return _chunked(one, x, y, chunk)


# --- MS-GMSD -----------------------------------------------------------------------------------------

#: Zhang, Sander & Bermak (2017): scale weights (finest first), masking alpha, stability constant (8-bit).
MS_GMSD_WEIGHTS = (0.096, 0.596, 0.289, 0.019)
MS_GMSD_ALPHA = 0.5
GMSD_C = 170.0


def _gmsd(a: torch.Tensor, b: torch.Tensor, c: float, alpha: float) -> torch.Tensor:
    """Population standard deviation over pixels of the gradient-magnitude similarity map: (N,)."""
    gms = _similarity(_prewitt_magnitude(a), _prewitt_magnitude(b), c, alpha)
    return torch.sqrt(((gms - gms.mean(dim=(1, 2, 3), keepdim=True)) ** 2).mean(dim=(1, 2, 3)))


def ms_gmsd_values(x: ArrayLike, y: ArrayLike, chunk: int = _CHUNK) -> torch.Tensor:
    r"""Multi-scale gradient magnitude similarity deviation (MS-GMSD), lower is better, 0 for identical images.

    B. Zhang, P. V. Sander, A. Bermak, "Gradient magnitude similarity deviation on multiple scales for color
    image quality assessment", ICASSP 2017 (luminance part; grayscale images have no chromatic term), built
    on GMSD: W. Xue, L. Zhang, X. Mou, A. C. Bovik, IEEE TIP 23(2):684-695, 2014. Implemented here, after piq.

    With images scaled to [0, 255], Prewitt gradient magnitudes :math:`m_x, m_y` and, per pixel, the masked
    gradient magnitude similarity

    .. math:: \mathrm{GMS} = \frac{(2 - \alpha) m_x m_y + C}{m_x^2 + m_y^2 - \alpha m_x m_y + C}
              \in (0, 1], \quad \alpha = 0.5,\ C = 170,

    :math:`\mathrm{GMSD}_j` is the standard deviation (1/N normalisation, as in Xue et al.'s Eq.) of the GMS
    map at scale j (j = 1: the input, then successive 2 x 2 mean filtering + dyadic subsampling), and

    .. math:: \mathrm{MS\text{-}GMSD} = \sqrt{\textstyle\sum_{j=1}^{4} w_j \mathrm{GMSD}_j^2},
              \quad w = (0.096, 0.596, 0.289, 0.019).

    Symmetric in x and y; range [0, 0.5] (GMS lies in (0, 1], whose standard deviation is at most 1/2).
    """

    def one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a * 255.0, b * 255.0
        total = torch.zeros(a.shape[0], dtype=a.dtype)
        for j, w in enumerate(MS_GMSD_WEIGHTS):
            if j:
                a, b = _halve(a), _halve(b)
            total = total + w * _gmsd(a, b, GMSD_C, MS_GMSD_ALPHA) ** 2
        return torch.sqrt(total)

    return _chunked(one, x, y, chunk)


# --- MDSI --------------------------------------------------------------------------------------------

#: Nafchi et al. (2016) gradient-similarity constants (8-bit) and deviation-pooling exponents.
MDSI_C1, MDSI_C2 = 140.0, 55.0
MDSI_Q, MDSI_O = 0.25, 0.25


def mdsi_values(x: ArrayLike, y: ArrayLike, chunk: int = _CHUNK) -> torch.Tensor:
    r"""Mean deviation similarity index (MDSI), lower is better, 0 for identical images.

    H. Z. Nafchi, A. Shahkolaei, R. Hedjam, M. Cheriet, "Mean deviation similarity index: efficient and
    reliable full-reference image quality evaluator", IEEE Access 4:5579-5590, 2016. Implemented here, after
    the authors' MATLAB code and piq.

    Images scaled to [0, 255] (first mean-filtered and subsampled by f = max(1, round(min(H, W) / 256)),
    i.e. not at all below 384 px). With Prewitt gradient magnitudes :math:`g_r` (reference y),
    :math:`g_d` (distorted x) and :math:`g_f` of the fused image f = (x + y) / 2, and
    :math:`S(a, b; C) = (2ab + C) / (a^2 + b^2 + C)`, the HVS-based gradient similarity is

    .. math:: \mathrm{GS} = S(g_r, g_d; C_1) + S(g_d, g_f; C_2) - S(g_r, g_f; C_2) \in (-1, 2],
              \quad C_1 = 140,\ C_2 = 55,

    and deviation pooling (Minkowski order rho = 1, q = o = 1/4) gives

    .. math:: \mathrm{MDSI} = \Big( \frac{1}{N} \sum_i \big| \mathrm{GS}_i^{1/4}
              - \tfrac{1}{N}\textstyle\sum_k \mathrm{GS}_k^{1/4} \big| \Big)^{1/4},

    with the principal complex branch for negative GS (:math:`(-a)^{1/4} = a^{1/4} e^{i\pi/4}`, as MATLAB's
    ``(GCS .^ 0.5) .^ 0.5``) and :math:`|\cdot|` the complex modulus.

    Grayscale: the paper's gradient-chromaticity similarity is GCS = 0.6 GS + 0.4 CS, with CS a
    chromaticity similarity of two opponent-colour channels that grayscale images do not have. We use
    GCS = GS (gradient similarity only). This differs from piq on grayscale input, which copies the gray
    channel into RGB and so pools about 0.6 GS + 0.4 (CS is then close to 1): values are not comparable.

    Not symmetric: x (distorted) and y (reference) play different roles in GS. Range [0, 1.25) (the fourth
    roots have modulus <= 2^(1/4), so the mean absolute deviation is < 2^(5/4)); typical values 0.1-0.6.
    The fourth roots make MDSI rise steeply from 0 (additive noise of sd 0.005 already gives ~0.19 on a
    64 px photograph), and, as a deviation-pooled index, it saturates for strong distortions: once the
    similarity map is uniformly poor its deviation stops growing (on that photograph MDSI peaks near noise
    sd 0.1 and then slowly decreases; blur stayed monotone up to sigma 8 px). Treat differences between
    very dissimilar pairs with care.
    """

    def one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f = max(1, int(math.floor(min(a.shape[-2:]) / 256 + 0.5)))  # MATLAB round (half away from zero)
        d, r = _mean_subsample(a * 255.0, f), _mean_subsample(b * 255.0, f)
        g_d, g_r, g_f = _prewitt_magnitude(d), _prewitt_magnitude(r), _prewitt_magnitude((d + r) / 2.0)
        gs = _similarity(g_r, g_d, MDSI_C1) + _similarity(g_d, g_f, MDSI_C2) - _similarity(g_r, g_f, MDSI_C2)
        # principal value of gs^q: |gs|^q, rotated by q * pi where gs < 0
        mod = gs.abs() ** MDSI_Q
        neg = gs < 0
        re = torch.where(neg, mod * math.cos(MDSI_Q * math.pi), mod)
        im = torch.where(neg, mod * math.sin(MDSI_Q * math.pi), torch.zeros_like(mod))
        dev = torch.sqrt(
            (re - re.mean(dim=(1, 2, 3), keepdim=True)) ** 2 + (im - im.mean(dim=(1, 2, 3), keepdim=True)) ** 2
        )
        return dev.mean(dim=(1, 2, 3)) ** MDSI_O

    return _chunked(one, x, y, chunk)


# --- HaarPSI -----------------------------------------------------------------------------------------

#: Reisenhofer et al. (2018) constants for 8-bit images: similarity constant C and logistic slope alpha.
HAARPSI_C, HAARPSI_ALPHA = 30.0, 4.2


def _haar_coefficients(img: torch.Tensor) -> torch.Tensor:
    """|Haar wavelet coefficients| of scales s = 1, 2, 3 in two orientations, 'same' size: (N, 6, H, W).

    Channels 0-2: the 2^s x 2^s filter of value 2^-s with its upper half negated (the authors'
    ``haar_wavelet_decompose``), scales 1, 2, 3; channels 3-5: its transpose. MATLAB 'same' alignment:
    output pixel (i, j) sees rows/cols i - 2^(s-1) + 1 .. i + 2^(s-1) of the zero-padded image. Each
    coefficient is 2^-s (sum of one half-window - sum of the other), read off a float64 integral image
    (summed-area table) of the zero-padded image: exact up to float64 rounding, and far cheaper than
    8 x 8 float64 convolutions on CPU.
    """
    h, w = img.shape[-2:]
    pad = 4  # the largest half-window
    table = F.pad(F.pad(img, (pad, pad, pad, pad)).cumsum(-2).cumsum(-1), (1, 0, 1, 0))

    def box(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Sum over rows i + r0 .. i + r1 - 1 and cols j + c0 .. j + c1 - 1, for every output pixel (i, j)."""
        r0, r1, c0, c1 = r0 + pad, r1 + pad, c0 + pad, c1 + pad
        return (
            table[..., r1 : r1 + h, c1 : c1 + w]
            - table[..., r0 : r0 + h, c1 : c1 + w]
            - table[..., r1 : r1 + h, c0 : c0 + w]
            + table[..., r0 : r0 + h, c0 : c0 + w]
        )

    rows, cols = [], []
    for s in (1, 2, 3):
        half = 2 ** (s - 1)
        lo, mid, hi = 1 - half, 1, 1 + half  # window i - half + 1 .. i + half, split after i
        rows.append((box(mid, hi, lo, hi) - box(lo, mid, lo, hi)) * 2.0**-s)
        cols.append((box(lo, hi, mid, hi) - box(lo, hi, lo, mid)) * 2.0**-s)
    return torch.cat(rows + cols, dim=1).abs()


def haarpsi_values(x: ArrayLike, y: ArrayLike, chunk: int = _CHUNK) -> torch.Tensor:
    r"""Haar wavelet-based perceptual similarity index (HaarPSI), higher is better, 1 for identical images.

    R. Reisenhofer, S. Bosse, G. Kutyniok, T. Wiegand, "A Haar wavelet-based perceptual similarity index
    for image quality assessment", Signal Processing: Image Communication 61:33-43, 2018. Grayscale version,
    implemented here after the authors' reference code (github.com/rgcda/haarpsi) and piq.

    Images are scaled to [0, 255] (the constants C = 30, alpha = 4.2 are for 8-bit data), 2 x 2 mean
    filtered and subsampled (the paper's viewing-distance preprocessing), then filtered with Haar wavelets
    :math:`h_s^{(o)}` of scales s = 1, 2, 3 in two orientations o. Per pixel and orientation, with
    :math:`S(a, b) = (2ab + C) / (a^2 + b^2 + C)`,

    .. math:: \mathrm{HS}^{(o)} = \tfrac12 \textstyle\sum_{s=1}^{2} S(|x * h_s^{(o)}|, |y * h_s^{(o)}|),
              \qquad W^{(o)} = \max(|x * h_3^{(o)}|, |y * h_3^{(o)}|),

    .. math:: \mathrm{HaarPSI} = \Big( l_\alpha^{-1}\Big( \frac{\sum_{o,i} l_\alpha(\mathrm{HS}^{(o)}_i)
              W^{(o)}_i}{\sum_{o,i} W^{(o)}_i} \Big) \Big)^2, \qquad l_\alpha(t) = \frac{1}{1 + e^{-\alpha t}}.

    Since HS lies in (0, 1], the result lies in (0, 1] (rounding overshoot above 1 is clipped). If all
    weights are 0 (both images zero), the unweighted mean of :math:`l_\alpha(\mathrm{HS})` is used.
    Symmetric in x and y.
    """

    def one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ca = _haar_coefficients(_halve(a * 255.0))  # (n, 6, h, w): [o=0: s1 s2 s3, o=1: s1 s2 s3]
        cb = _haar_coefficients(_halve(b * 255.0))
        sim = _similarity(ca, cb, HAARPSI_C)
        hs = torch.stack([(sim[:, 0] + sim[:, 1]) / 2.0, (sim[:, 3] + sim[:, 4]) / 2.0], dim=1)
        w = torch.stack([torch.maximum(ca[:, 2], cb[:, 2]), torch.maximum(ca[:, 5], cb[:, 5])], dim=1)
        lhs = torch.sigmoid(HAARPSI_ALPHA * hs)
        w_sum = w.sum(dim=(1, 2, 3))
        pooled = torch.where(
            w_sum > 0, (lhs * w).sum(dim=(1, 2, 3)) / w_sum.clamp_min(1e-300), lhs.mean(dim=(1, 2, 3))
        )
        return ((torch.log(pooled / (1.0 - pooled)) / HAARPSI_ALPHA) ** 2).clamp(max=1.0)

    return _chunked(one, x, y, chunk)


# --- metric families ---------------------------------------------------------------------------------

#: metric stem -> per-image function(distorted, reference)
VALUE_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "ms_ssim": ms_ssim_values,
    "ms_gmsd": ms_gmsd_values,
    "mdsi": mdsi_values,
    "haarpsi": haarpsi_values,
}


def _mean_scores(distorted: np.ndarray, reference_rows: Callable[[slice], np.ndarray]) -> dict[str, float]:
    """Mean over images of each metric, distorted[i] vs reference_rows(chunk)[i], chunk by chunk."""
    sums = dict.fromkeys(VALUE_FUNCTIONS, 0.0)
    n = len(distorted)
    for i in range(0, n, _CHUNK):
        rows = slice(i, min(i + _CHUNK, n))
        x, y = distorted[rows], reference_rows(rows)
        for stem, fn in VALUE_FUNCTIONS.items():
            sums[stem] += float(fn(x, y).sum())
    return {stem: total / n for stem, total in sums.items()}


def iqa_nn(ctx: "EvalContext") -> dict[str, float]:
    """Mean over generated images of MS-SSIM, MS-GMSD, MDSI and HaarPSI to the L2-nearest real test image."""
    idx = ctx.nn_index.cpu().numpy()
    scores = _mean_scores(ctx.fake, lambda rows: ctx.real[idx[rows]])
    return {f"{stem}_nn": value for stem, value in scores.items()}


@requires("sources")
def iqa_sources(ctx: "EvalContext") -> dict[str, float]:
    """Fusion runs: mean over fused images of each metric vs each source image (``{stem}_vs_{source}``)."""
    out: dict[str, float] = {}
    for name, src in ctx.sources.items():
        for stem, value in _mean_scores(ctx.fake, lambda rows, src=src: src[rows]).items():
            out[f"{stem}_vs_{name}"] = value
    return out


# --- metric descriptions ------------------------------------------------------------------------------

_DETAILS = {
    # stem: (higher_is_better, range, source, what it measures)
    "ms_ssim": (
        True,
        "[0, 1]; 1 = identical",
        "Wang, Simoncelli & Bovik 2003 (Asilomar); implemented here after the authors' msssim.m: standard SSIM "
        "(gaussian 11x11, sigma 1.5, data_range 1) averaged over the valid region (no padding), 2x2-mean "
        "downsampling, negative terms clipped to 0; scales adapted to small images: the finest M = "
        "clip(floor(log2(min(H,W)/16)) + 1, 1, 5) of Wang et al.'s five (32 px: 2, coarsest 16 px with a 6x6 "
        "valid region; 64 px: 3), weights renormalised; not comparable across image sizes",
        "Multi-scale SSIM (structure, contrast and luminance across scales)",
    ),
    "ms_gmsd": (
        False,
        "[0, 0.5]; 0 = identical",
        "Zhang, Sander & Bermak 2017 (ICASSP), after GMSD (Xue et al. 2014, IEEE TIP); implemented here, after "
        "piq (4 scales, weights 0.096/0.596/0.289/0.019, alpha 0.5, C 170 on 8-bit scale)",
        "Multi-scale gradient magnitude similarity deviation (spread of local gradient agreement)",
    ),
    "mdsi": (
        False,
        "[0, 1.25); 0 = identical",
        "Nafchi, Shahkolaei, Hedjam & Cheriet 2016 (IEEE Access); implemented here, after piq and the authors' "
        "MATLAB code; grayscale: gradient-similarity part only (no chromaticity term), not comparable with piq",
        "Mean deviation similarity index (deviation pooling of an HVS-based gradient similarity; rises steeply "
        "from 0 and saturates for very dissimilar pairs)",
    ),
    "haarpsi": (
        True,
        "(0, 1]; 1 = identical",
        "Reisenhofer, Bosse, Kutyniok & Wiegand 2018 (Signal Processing: Image Communication); implemented here, "
        "after piq and the authors' code (grayscale, C 30, alpha 4.2 on 8-bit scale)",
        "Haar wavelet-based perceptual similarity index",
    ),
}


def _info(stem: str, name: str, family: str, against: str, note: str = "") -> MetricInfo:
    hib, rng, src, what = _DETAILS[stem]
    better = "higher" if hib else "lower"
    return MetricInfo(
        name,
        higher_is_better=hib,
        range=rng,
        source=src,
        description=f"{what}: each generated image vs {against}, mean over generated images; {better} = more "
        f"similar.{note}",
        family=family,
    )


INFO: list[MetricInfo] = [
    _info(
        stem,
        f"{stem}_nn",
        "iqa_nn",
        "the nearest (L2 pixel distance) real test image",
        " Values at the best score (identical images) suggest memorization.",
    )
    for stem in VALUE_FUNCTIONS
]


def iqa_sources_info(source_names: list[str] | tuple[str, ...]) -> list[MetricInfo]:
    """MetricInfo of every ``{stem}_vs_{source}`` name that ``iqa_sources`` returns for these sources."""
    return [
        _info(stem, f"{stem}_vs_{s}", "iqa_sources", f"the {s} image it was fused from (fusion runs)")
        for s in source_names
        for stem in VALUE_FUNCTIONS
    ]


FAMILIES = {"iqa_nn": iqa_nn, "iqa_sources": iqa_sources}
