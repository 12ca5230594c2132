"""Per-sample similarity of each generated image to its nearest real (test) image.

For every fake image we find the real image at the smallest Euclidean (L2) pixel distance, then compute
SSIM and PSNR (``data_range=1``) between the pair with torchmetrics and average over fake images.
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

if TYPE_CHECKING:
    from . import EvalContext

_CHUNK = 256  # fake images per chunk (bounds memory of the distance matrix and SSIM maps)


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
    """SSIM (gaussian 11x11, sigma 1.5, data_range=1) of each fake image vs its nearest real image."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    # float32: torch's float64 CPU convolutions are ~25x slower. The price is rounding of ~1e-4 in flat,
    # non-black regions (an image compared with itself can score 0.9997), far below any difference we report.
    r, f = _as_nchw(real).to(torch.float32), _as_nchw(fake).to(torch.float32)
    idx = nearest_real_indices(r, f) if nn_index is None else nn_index
    out = [
        structural_similarity_index_measure(
            f[i : i + _CHUNK], r[idx[i : i + _CHUNK]], data_range=1.0, reduction="none"
        )
        for i in range(0, f.shape[0], _CHUNK)
    ]
    return torch.cat(out).to(torch.float64)


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
