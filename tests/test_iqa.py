"""Tests of dpmedgen.metrics.iqa: MS-SSIM, MS-GMSD, MDSI, HaarPSI and their metric families.

Known values come from (a) literal NumPy/SciPy transcriptions of the authors' reference code (MATLAB
``conv2(..., 'same')`` emulated with ``scipy.signal.convolve2d`` as in the HaarPSI authors' Python port),
an independent code path from the vectorised torch implementation, and (b) a hand-computed MS-SSIM case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal
from scipy.ndimage import gaussian_filter
from skimage import data, transform

import conftest
from conftest import noisy

from dpmedgen.metrics import EvalContext
from dpmedgen.metrics.iqa import (
    FAMILIES,
    INFO,
    MS_SSIM_BETAS,
    VALUE_FUNCTIONS,
    haarpsi_values,
    iqa_nn,
    iqa_sources,
    iqa_sources_info,
    mdsi_values,
    ms_gmsd_values,
    ms_ssim_scales,
    ms_ssim_values,
)

HIGHER_IS_BETTER = {"ms_ssim": True, "ms_gmsd": False, "mdsi": False, "haarpsi": True}
BEST = {"ms_ssim": 1.0, "ms_gmsd": 0.0, "mdsi": 0.0, "haarpsi": 1.0}
# closed ranges that must hold (see the module docstring for the derivations)
RANGE = {"ms_ssim": (0.0, 1.0), "ms_gmsd": (0.0, 0.5), "mdsi": (0.0, 1.25), "haarpsi": (0.0, 1.0)}
# all four are float64 throughout
FLOAT_TOL = {"ms_ssim": 1e-12, "ms_gmsd": 1e-12, "mdsi": 1e-12, "haarpsi": 1e-12}


def camera(size: int = 64) -> np.ndarray:
    """skimage's 'camera' photograph, anti-aliased down to size x size, float64 in [0, 1]."""
    img = transform.resize(data.camera().astype(np.float64) / 255.0, (size, size), anti_aliasing=True)
    return np.clip(img, 0.0, 1.0)


def blobs(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return conftest.blobs(n, size, seed)


def better(stem: str, a: float, b: float) -> bool:
    """Score a is strictly better than score b."""
    return a > b if HIGHER_IS_BETTER[stem] else a < b


# --- reference transcriptions (NumPy / SciPy, one image at a time, float64, values in [0, 255]) ---------


def conv2_same(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """MATLAB conv2(a, k, 'same') via SciPy (the rot90 trick of the HaarPSI authors' Python port)."""
    return np.rot90(signal.convolve2d(np.rot90(a, 2), np.rot90(k, 2), mode="same"), 2)


DX = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def ref_gradient(a: np.ndarray) -> np.ndarray:
    return np.sqrt(conv2_same(a, DX) ** 2 + conv2_same(a, DX.T) ** 2)


def ref_subsample(a: np.ndarray) -> np.ndarray:
    return conv2_same(a, np.ones((2, 2)) / 4.0)[::2, ::2]


def ref_ms_gmsd(dist: np.ndarray, ref: np.ndarray) -> float:
    """GMSD MATLAB code (Xue et al.) at 4 scales with Zhang et al.'s masking (alpha 0.5) and weights."""
    c, alpha, total = 170.0, 0.5, 0.0
    for j, w in enumerate((0.096, 0.596, 0.289, 0.019)):
        if j:
            dist, ref = ref_subsample(dist), ref_subsample(ref)
        g1, g2 = ref_gradient(ref), ref_gradient(dist)
        gms = ((2 - alpha) * g1 * g2 + c) / (g1**2 + g2**2 - alpha * g1 * g2 + c)
        total += w * np.std(gms) ** 2  # np.std: 1/N, as in the GMSD paper
    return float(np.sqrt(total))


def ref_mdsi(dist: np.ndarray, ref: np.ndarray) -> float:
    """The authors' MDSI.m for images < 384 px (f = 1), with GCS = GS (grayscale: no chromaticity)."""
    c1, c2 = 140.0, 55.0
    g_r, g_d, g_f = ref_gradient(ref), ref_gradient(dist), ref_gradient(0.5 * (ref + dist))
    gs12 = (2 * g_r * g_d + c1) / (g_r**2 + g_d**2 + c1)
    gs13 = (2 * g_r * g_f + c2) / (g_r**2 + g_f**2 + c2)
    gs23 = (2 * g_d * g_f + c2) / (g_d**2 + g_f**2 + c2)
    gcs = (gs12 + gs23 - gs13).astype(complex)
    z = (gcs**0.5) ** 0.5  # principal powers, as MATLAB's (GCS .^ 0.5) .^ 0.5
    return float(np.mean(np.abs(z - z.mean())) ** 0.25)  # MATLAB mad(): mean absolute deviation


def ref_haarpsi(dist: np.ndarray, ref: np.ndarray) -> float:
    """The authors' haar_psi_numpy, grayscale branch (C = 30, alpha = 4.2, 3 scales, subsampling)."""
    c, alpha, scales = 30.0, 4.2, 3
    ref, dist = ref_subsample(ref), ref_subsample(dist)

    def decompose(img):
        out = np.zeros(img.shape + (2 * scales,))
        for s in range(1, scales + 1):
            h = 2.0**-s * np.ones((2**s, 2**s))
            h[: h.shape[0] // 2, :] = -h[: h.shape[0] // 2, :]
            out[:, :, s - 1] = conv2_same(img, h)
            out[:, :, s + scales - 1] = conv2_same(img, h.T)
        return out

    cr, cd = decompose(ref), decompose(dist)
    sims, weights = [], []
    for o in range(2):
        weights.append(np.maximum(np.abs(cr[:, :, 2 + o * scales]), np.abs(cd[:, :, 2 + o * scales])))
        mr = np.abs(cr[:, :, (o * scales, 1 + o * scales)])
        md = np.abs(cd[:, :, (o * scales, 1 + o * scales)])
        sims.append(np.sum((2 * mr * md + c) / (mr**2 + md**2 + c), axis=2) / 2)
    sims, weights = np.stack(sims, -1), np.stack(weights, -1)
    pooled = np.sum(weights / (1 + np.exp(-alpha * sims))) / np.sum(weights)
    return float((np.log(pooled / (1 - pooled)) / alpha) ** 2)


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    """Six (distorted, reference) pairs at 64 x 64: smooth blobs with noise, and the camera image blurred."""
    cam = camera()[None].astype(np.float32)
    ref = np.concatenate([blobs(4, seed=3), cam, cam[:, ::-1]])
    dist = noisy(ref, 0.05, seed=4)
    dist[4] = gaussian_filter(ref[4], 1.0)
    return dist, ref


# --- known values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, reference", [(ms_gmsd_values, ref_ms_gmsd), (mdsi_values, ref_mdsi), (haarpsi_values, ref_haarpsi)]
)
@pytest.mark.parametrize("size", [32, 64, 45])
def test_matches_reference_transcription(fn, reference, size):
    # float64 on both sides, different summation orders: agreement to ~1e-13; 1e-9 leaves room for MDSI's
    # fourth-root pooling (derivative 0.25 D^-0.75, D ~ 1e-2 here) without hiding any real discrepancy.
    ref = np.concatenate([blobs(2, size, seed=5), camera(size)[None]])
    dist = noisy(ref, 0.05, seed=6)
    dist[2] = gaussian_filter(ref[2], 1.5)
    got = fn(dist, ref).numpy()
    want = [reference(255.0 * d.astype(np.float64), 255.0 * r.astype(np.float64)) for d, r in zip(dist, ref)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_ms_ssim_constant_images_hand_computed():
    # Constant images: every contrast-structure term is (0 + C2) / (0 + C2) = 1 at every scale, and the
    # luminance term at the coarsest scale is (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2, so
    # MS-SSIM = l ** beta_M with beta_M = 0.3001 / (0.0448 + 0.2856 + 0.3001) at 64 px (3 scales).
    # (the alternatives: beta 0.3001 unnormalised: 0.858, 1: 0.600, 5 scales: 0.934). Float64: exact.
    a, b, c1 = 0.25, 0.75, 1e-4
    x, y = np.full((1, 64, 64), a), np.full((1, 64, 64), b)
    lum = (2 * a * b + c1) / (a * a + b * b + c1)
    want = lum ** (MS_SSIM_BETAS[2] / sum(MS_SSIM_BETAS[:3]))
    assert float(ms_ssim_values(x, y)[0]) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.7842, abs=1e-4)


def test_ms_ssim_scales_keep_coarsest_scale_at_16px():
    sides = (11, 16, 31, 32, 63, 64, 128, 255, 256, 512)
    assert [ms_ssim_scales(s, s) for s in sides] == [1, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert ms_ssim_scales(64, 256) == 3  # the shorter side decides
    # explicit betas override: one scale with weight 1 is plain (standard, valid-region) SSIM = scikit-image's
    from skimage.metrics import structural_similarity as ssim

    x, y = blobs(3, seed=1), noisy(blobs(3, seed=1), 0.1)
    want = [ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
            for a, b in zip(x.astype(np.float64), y.astype(np.float64))]
    np.testing.assert_allclose(ms_ssim_values(x, y, betas=(1.0,)).numpy(), want, rtol=0, atol=1e-10)


# --- the papers' properties --------------------------------------------------------------------------


@pytest.mark.parametrize("stem", list(VALUE_FUNCTIONS))
@pytest.mark.parametrize("size", [32, 64, 128])
def test_identity_is_best(stem, size):
    imgs = np.concatenate([blobs(2, size, seed=7), camera(size)[None], np.full((1, size, size), 0.3137)])
    imgs = np.concatenate([imgs, np.zeros((1, size, size))]).astype(np.float32)  # zero image: no structure
    got = VALUE_FUNCTIONS[stem](imgs, imgs)
    assert got.shape == (len(imgs),) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), BEST[stem], rtol=0, atol=1e-12)


@pytest.mark.parametrize("stem", list(VALUE_FUNCTIONS))
def test_worse_with_more_noise(stem):
    x = camera(64)
    z = np.random.default_rng(0).standard_normal(x.shape)
    # up to sd 0.1: beyond, MDSI's deviation pooling saturates and decreases (documented in mdsi_values)
    levels = [0.01, 0.02, 0.05, 0.1]
    dist = np.stack([np.clip(x + s * z, 0, 1) for s in levels])
    scores = VALUE_FUNCTIONS[stem](dist, np.broadcast_to(x, dist.shape)).tolist()
    chain = [BEST[stem]] + scores
    assert all(better(stem, a, b) for a, b in zip(chain, chain[1:])), (stem, scores)


@pytest.mark.parametrize("stem", list(VALUE_FUNCTIONS))
def test_worse_with_more_blur(stem):
    x = camera(64)
    levels = [0.5, 1.0, 2.0, 4.0]
    dist = np.stack([gaussian_filter(x, s) for s in levels])
    scores = VALUE_FUNCTIONS[stem](dist, np.broadcast_to(x, dist.shape)).tolist()
    chain = [BEST[stem]] + scores
    assert all(better(stem, a, b) for a, b in zip(chain, chain[1:])), (stem, scores)


@pytest.mark.parametrize("stem", list(VALUE_FUNCTIONS))
def test_range_on_random_pairs(stem):
    rng = np.random.default_rng(8)
    smooth = blobs(6, 48, seed=9)
    x = np.concatenate([rng.random((6, 48, 48)), smooth, smooth, np.zeros((1, 48, 48))])
    y = np.concatenate([rng.random((6, 48, 48)), 1.0 - smooth, blobs(6, 48, seed=10), rng.random((1, 48, 48))])
    got = VALUE_FUNCTIONS[stem](x, y).numpy()
    lo, hi = RANGE[stem]
    assert np.isfinite(got).all() and (got >= lo).all() and (got <= hi).all(), got
    assert all(better(stem, BEST[stem], v) for v in got)  # none of these pairs is identical


@pytest.mark.parametrize("stem", ["ms_ssim", "ms_gmsd", "haarpsi"])
def test_symmetric(stem, pairs):
    dist, ref = pairs
    fn = VALUE_FUNCTIONS[stem]
    torch.testing.assert_close(fn(dist, ref), fn(ref, dist), rtol=0, atol=FLOAT_TOL[stem])


def test_mdsi_distinguishes_reference_from_distorted(pairs):
    # GS = S(r, d) + S(d, f) - S(r, f) is not symmetric in r and d (and the reference code agrees, above)
    dist, ref = pairs
    assert not torch.allclose(mdsi_values(dist, ref), mdsi_values(ref, dist), rtol=0, atol=1e-6)


@pytest.mark.parametrize("stem", list(VALUE_FUNCTIONS))
def test_batch_equals_one_by_one_and_chunking(stem, pairs):
    dist, ref = pairs
    fn = VALUE_FUNCTIONS[stem]
    batched = fn(dist, ref)
    single = torch.cat([fn(dist[i : i + 1], ref[i : i + 1]) for i in range(len(dist))])
    torch.testing.assert_close(batched, single, rtol=0, atol=FLOAT_TOL[stem])
    torch.testing.assert_close(fn(dist, ref, chunk=4), batched, rtol=0, atol=FLOAT_TOL[stem])
    # (N, 1, H, W) tensors give the same as (N, H, W) arrays
    torch.testing.assert_close(fn(torch.from_numpy(dist)[:, None], torch.from_numpy(ref)[:, None]), batched)


def test_input_checks():
    x = np.zeros((2, 32, 32))
    with pytest.raises(ValueError, match="differ in shape"):
        haarpsi_values(x, np.zeros((2, 32, 30)))
    with pytest.raises(ValueError, match="grayscale"):
        mdsi_values(np.zeros((2, 3, 32, 32)), np.zeros((2, 3, 32, 32)))
    assert ms_gmsd_values(np.zeros((0, 32, 32)), np.zeros((0, 32, 32))).shape == (0,)


# --- metric families ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx() -> EvalContext:
    real = blobs(6, 32, seed=11)
    fake = np.concatenate([noisy(real[[4, 1, 2]], 0.03, seed=12), real[[0]]])  # the last fake copies real 0
    sources = {"mri": blobs(4, 32, seed=13), "pet": noisy(fake, 0.1, seed=14)}
    return EvalContext(real, fake, sources=sources)


def test_iqa_nn_means_per_image_scores_vs_nearest_real(ctx):
    assert FAMILIES["iqa_nn"] is iqa_nn
    assert ctx.nn_index.tolist() == [4, 1, 2, 0]
    out = iqa_nn(ctx)
    assert list(out) == [m.name for m in INFO] == ["ms_ssim_nn", "ms_gmsd_nn", "mdsi_nn", "haarpsi_nn"]
    nearest = ctx.real[ctx.nn_index.numpy()]
    for stem, fn in VALUE_FUNCTIONS.items():
        per_image = fn(ctx.fake, nearest)
        assert out[f"{stem}_nn"] == pytest.approx(float(per_image.mean()), rel=1e-12, abs=1e-12)
        assert float(per_image[3]) == pytest.approx(BEST[stem], abs=1e-12)  # the exact copy scores best
        assert isinstance(out[f"{stem}_nn"], float)


def test_iqa_sources_names_outputs_per_source(ctx):
    assert FAMILIES["iqa_sources"] is iqa_sources
    assert iqa_sources.requires == ("sources",)
    out = iqa_sources(ctx)
    info = iqa_sources_info(list(ctx.sources))
    assert list(out) == [m.name for m in info]
    assert set(out) == {f"{s}_vs_{src}" for s in VALUE_FUNCTIONS for src in ("mri", "pet")}
    for stem, fn in VALUE_FUNCTIONS.items():
        for src in ("mri", "pet"):
            want = float(fn(ctx.fake, ctx.sources[src]).mean())
            assert out[f"{stem}_vs_{src}"] == pytest.approx(want, rel=1e-12, abs=1e-12)
        # the pet sources are mild distortions of the fused images, the mri ones unrelated images
        assert better(stem, out[f"{stem}_vs_pet"], out[f"{stem}_vs_mri"])


def test_metric_info():
    for m in INFO + iqa_sources_info(["mri", "pet"]):
        stem = m.name.rsplit("_nn", 1)[0] if m.family == "iqa_nn" else m.name.split("_vs_")[0]
        assert m.higher_is_better is HIGHER_IS_BETTER[stem]
        assert m.family in FAMILIES and m.source and m.description and m.range
    names = [m.name for m in iqa_sources_info(["ct"])]
    assert names == ["ms_ssim_vs_ct", "ms_gmsd_vs_ct", "mdsi_vs_ct", "haarpsi_vs_ct"]
