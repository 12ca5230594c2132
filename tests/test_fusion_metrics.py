"""Known-answer tests of the image-fusion metrics (dpmedgen.metrics.fusion)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d

from dpmedgen.metrics import EvalContext
from dpmedgen.metrics import fusion as fu


def _smooth_images(n: int, size: int = 64, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1] with some flat (clipped) areas, like slices with background."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random((n, size, size)), (0, sigma, sigma))
    x = (x - x.mean()) / x.std()
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


# --- EN -------------------------------------------------------------------------------------------------


def test_entropy_known_answers():
    constant = np.full((64, 64), 0.3)
    all_levels = (np.arange(64 * 64) % 256).reshape(64, 64) / 255.0  # each of 256 levels 16 times
    two_levels = np.zeros((64, 64))
    two_levels[:, 32:] = 1.0
    four_levels = (np.arange(64 * 64) % 4).reshape(64, 64) / 255.0  # adjacent 8-bit levels stay distinct
    en = fu.entropy_values(np.stack([constant, all_levels, two_levels, four_levels]))
    np.testing.assert_allclose(en, [0.0, 8.0, 1.0, 2.0], atol=1e-12)


def test_entropy_skewed_histogram_and_range_check():
    img = np.zeros((8, 8))
    img.flat[:16] = 1.0  # p = (3/4, 1/4)
    expected = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert fu.entropy_values(img)[0] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fu.entropy_values(img + 0.5)


# --- SD, SF, MG ----------------------------------------------------------------------------------------


def test_sd_known_image():
    img = np.zeros((2, 16, 16))
    img[0, :, 8:] = 1.0  # half black, half white: SD 0.5
    img[1] = np.tile([0.2, 0.4, 0.6, 0.8], (16, 4))  # SD of {0.2, 0.4, 0.6, 0.8} = sqrt(0.05)
    np.testing.assert_allclose(fu.sd_values(img, scale=1.0), [0.5, math.sqrt(0.05)], rtol=1e-12)
    np.testing.assert_allclose(fu.sd_values(img), [127.5, 255 * math.sqrt(0.05)], rtol=1e-12)  # 8-bit default


def test_sf_and_mg_constant_and_ramps():
    n, c = 16, 0.01
    j = np.arange(n, dtype=float)
    constant = np.full((n, n), 0.7)
    horizontal = np.tile(c * j, (n, 1))  # F(i, j) = c j
    diagonal = c * (j[:, None] + j[None, :])  # F(i, j) = c (i + j)
    imgs = np.stack([constant, horizontal, horizontal.T, diagonal])
    sf = fu.spatial_frequency_values(imgs, scale=1.0)
    mg = fu.average_gradient_values(imgs, scale=1.0)
    # SF: RF^2 = (1/n^2) * n (n - 1) c^2 for each direction that varies
    np.testing.assert_allclose(
        sf, [0.0, c * math.sqrt((n - 1) / n), c * math.sqrt((n - 1) / n), c * math.sqrt(2 * (n - 1) / n)], atol=1e-15
    )
    # MG (VIFB): sqrt((Gx^2 + Gy^2) / 2) at every one of the n^2 pixels, divided by (n - 1)^2
    k = n * n / (n - 1) ** 2
    np.testing.assert_allclose(mg, [0.0, k * c / math.sqrt(2), k * c / math.sqrt(2), k * c], atol=1e-15)
    np.testing.assert_allclose(fu.spatial_frequency_values(imgs), 255 * sf, rtol=1e-12)
    np.testing.assert_allclose(fu.average_gradient_values(imgs), 255 * mg, rtol=1e-12)


def test_sf_and_mg_hand_computed_small_image():
    img = np.array([[0.0, 1, 3], [0, 2, 5], [1, 1, 1]])
    # MATLAB gradient (VIFB's AG): Gx = one-sided at the first / last column, central (halved) in the middle
    gx = np.array([[1, 1.5, 2], [2, 2.5, 3], [0, 0, 0]])
    gy = np.array([[0, 1, 2], [0.5, 0, -1], [1, -1, -4]])
    mg = np.sqrt((gx**2 + gy**2) / 2).sum() / 4  # sum over 9 pixels / ((3 - 1) (3 - 1))
    assert fu.average_gradient_values(img, scale=1.0)[0] == pytest.approx(mg, abs=1e-12)
    # row differences 1,2 | 2,3 | 0,0 -> 18; column differences 0,1 | 1,-1 | 2,-4 -> 23; normalised by 3 * 3
    assert fu.spatial_frequency_values(img, scale=1.0)[0] == pytest.approx(math.sqrt((18 + 23) / 9), abs=1e-12)


def test_sf_mg_grow_with_detail():
    smooth = _smooth_images(4, sigma=3.0)
    sharp = _smooth_images(4, sigma=1.0)
    assert (fu.spatial_frequency_values(sharp) > fu.spatial_frequency_values(smooth)).all()
    assert (fu.average_gradient_values(sharp) > fu.average_gradient_values(smooth)).all()


# --- MI ----------------------------------------------------------------------------------------------


def test_mi_of_image_with_itself_is_its_entropy():
    rng = np.random.default_rng(0)
    a = np.rint(_smooth_images(3) * 255) / 255
    b = rng.integers(0, 256, (3, 64, 64)) / 255.0
    h_nats = fu.entropy_values(a) * math.log(2)  # EN is in bits, MI in nats
    np.testing.assert_allclose(fu.mutual_information_values(a, a), h_nats, atol=1e-10)
    # symmetric, and fusion MI with F = A is H(A) + MI(B, A)
    np.testing.assert_allclose(fu.mutual_information_values(a, b), fu.mutual_information_values(b, a), atol=1e-10)
    np.testing.assert_allclose(fu.fusion_mi_values(a, b, a), h_nats + fu.mutual_information_values(b, a), atol=1e-10)
    # a deterministic relabelling of the levels (here 255 - x) keeps all information: MI = H
    np.testing.assert_allclose(fu.mutual_information_values(a, 1.0 - a), h_nats, atol=1e-10)


def test_mi_of_independent_noise_is_near_zero():
    rng = np.random.default_rng(1)
    # two levels: plug-in bias ~ 1 / (2 n) = 1.2e-4 nats at 64x64
    x, y = (rng.integers(0, 2, (2, 4, 64, 64)) * 1.0)
    mi = fu.mutual_information_values(x, y)
    assert (mi < 0.005).all() and (mi >= 0).all()
    # 256 levels need many pixels: bias ~ 255^2 / (2 n) = 0.12 nats at 512x512 (vs H = 8 ln 2 = 5.5 nats)
    x, y = rng.integers(0, 256, (2, 1, 512, 512)) / 255.0
    assert fu.mutual_information_values(x, y)[0] < 0.25
    # ... and at 64x64 the documented upward bias is large (not a bug, a property of the estimator)
    x, y = rng.integers(0, 256, (2, 2, 64, 64)) / 255.0
    assert (fu.mutual_information_values(x, y) > 2.5).all()  # ~2.8 nats


# --- SCD, CC -------------------------------------------------------------------------------------------


def test_scd_known_answers():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 6, 64, 64))
    # F = A + B: F - B = A and F - A = B, so both correlations are exactly 1
    np.testing.assert_allclose(fu.scd_values(a, b, a + b), 2.0, atol=1e-12)
    # F = A: r(A - B, A) + r(0, B), the second defined as 0; with sample moments
    # r(A - B, A) = (var A - cov AB) / (sd A * sd(A - B)); independent equal-variance sources: ~ 1/sqrt(2)
    scd = fu.scd_values(a, b, a)
    af, bf = a.reshape(6, -1), b.reshape(6, -1)
    cov = ((af - af.mean(1, keepdims=True)) * (bf - bf.mean(1, keepdims=True))).mean(1)
    expected = (af.var(1) - cov) / (af.std(1) * (af - bf).std(1))
    np.testing.assert_allclose(scd, expected, atol=1e-12)
    np.testing.assert_allclose(scd, 1 / math.sqrt(2), atol=0.03)
    # F = (A + B) / 2: r(A - B, A) + r(B - A, B) ~ 2 / sqrt(2)
    np.testing.assert_allclose(fu.scd_values(a, b, (a + b) / 2), math.sqrt(2), atol=0.05)


def test_cc_known_answers():
    f = _smooth_images(3)
    np.testing.assert_allclose(fu.cc_values(f, f), 1.0, atol=1e-12)
    np.testing.assert_allclose(fu.cc_values(f, 0.5 * f + 0.1), 1.0, atol=1e-12)
    np.testing.assert_allclose(fu.cc_values(f, 1.0 - f), -1.0, atol=1e-12)
    np.testing.assert_allclose(fu.cc_values(f, np.full_like(f, 0.2)), 0.0)  # constant: 0 by convention
    noisy = np.clip(f + 0.2 * np.random.default_rng(3).standard_normal(f.shape), 0, 1)
    assert (fu.cc_values(noisy, f) < 0.99).all()


# --- SSIM, PSNR ----------------------------------------------------------------------------------------


def test_ssim_psnr_identity_and_known_psnr():
    f = _smooth_images(3)
    np.testing.assert_allclose(fu.ssim_values(f, f), 1.0, atol=1e-6)
    assert np.isposinf(fu.psnr_values(f, f)).all()
    shifted = np.clip(f, 0.0, 0.9) + 0.1
    src = np.clip(f, 0.0, 0.9)
    np.testing.assert_allclose(fu.psnr_values(shifted, src), 20.0, atol=1e-9)  # MSE 0.01 -> 20 dB
    assert (fu.ssim_values(np.clip(f + 0.3 * np.random.default_rng(4).random(f.shape), 0, 1), f) < 0.9).all()


# --- VIF ----------------------------------------------------------------------------------------------


def test_vif_matches_torchmetrics_on_8bit_scale():
    from torchmetrics.functional.image import visual_information_fidelity

    rng = np.random.default_rng(5)
    s = _smooth_images(4, size=48)
    s[:2, :12] = 0.0  # flat background: exercises the masks
    f = np.clip(0.6 * s + 0.1 * rng.random(s.shape), 0, 1)
    f[0] = 0.4  # flat fused image
    ref = visual_information_fidelity(
        torch.from_numpy(f[:, None] * 255), torch.from_numpy(s[:, None] * 255), reduction="none"
    ).numpy()
    np.testing.assert_allclose(fu.vif_values(f, s), ref, atol=1e-10)


def test_vif_identity_noise_and_fusion_sum():
    s = _smooth_images(3)
    np.testing.assert_allclose(fu.vif_values(s, s), 1.0, atol=1e-12)
    np.testing.assert_allclose(fu.fusion_vif_values(s, s, s), 2.0, atol=1e-12)
    noisy = np.clip(s + 0.1 * np.random.default_rng(6).standard_normal(s.shape), 0, 1)
    assert (fu.vif_values(noisy, s) < 0.7).all()
    # on [0, 1] without the 8-bit rescaling every VIF would collapse to ~0; ours stays meaningful
    assert (fu.vif_values(gaussian_filter(s, (0, 1, 1)), s) > 0.3).all()


def test_vif_small_images_give_nan_with_warning():
    s = _smooth_images(2, size=32)
    with pytest.warns(UserWarning, match="41x41"):
        v = fu.vif_values(s, s)
    assert np.isnan(v).all()


# --- Qabf ---------------------------------------------------------------------------------------------


def _qabf_reference(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Per-pixel loops after the MATLAB reference (conv2 'same'; G = 1 on ties), for one small image."""
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def edges(x):
        sx, sy = convolve2d(x, h3, mode="same"), convolve2d(x, h1, mode="same")
        g = np.sqrt(sx**2 + sy**2)
        alpha = np.empty_like(x)
        for i, j in np.ndindex(x.shape):
            alpha[i, j] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
        return g, alpha

    def q(gs, as_, gf, af):
        out = np.empty_like(gs)
        for i, j in np.ndindex(gs.shape):
            if gs[i, j] > gf[i, j]:
                rel = gf[i, j] / gs[i, j]
            elif gs[i, j] < gf[i, j]:
                rel = gs[i, j] / gf[i, j]
            else:
                rel = 1.0
            orient = 1 - abs(as_[i, j] - af[i, j]) / (math.pi / 2)
            out[i, j] = 0.9994 / (1 + math.exp(-15 * (rel - 0.5))) * 0.9879 / (1 + math.exp(-22 * (orient - 0.8)))
        return out

    (ga, aa), (gb, ab), (gf, af) = edges(a), edges(b), edges(f)
    return float((q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb).sum() / (ga + gb).sum())


def test_qabf_matches_per_pixel_reference():
    rng = np.random.default_rng(7)
    a, b = _smooth_images(2, size=12, sigma=1.0, seed=8)
    f = np.clip(0.5 * a + 0.5 * b + 0.05 * rng.standard_normal(a.shape), 0, 1)
    assert fu.qabf_values(a, b, f)[0] == pytest.approx(_qabf_reference(a, b, f), abs=1e-12)


def test_qabf_identity_is_its_maximum():
    # F = A = B: every pixel has G = 1 and orientation agreement 1, so Qabf = Qg(1) Qa(1) exactly; with the
    # standard constants that is 0.9994/(1+e^-7.5) * 0.9879/(1+e^-4.4) = 0.97480, not 1 (tolerance: rounding)
    a = _smooth_images(3)
    np.testing.assert_allclose(fu.qabf_values(a, a, a), fu.QABF_MAX, atol=1e-12)
    assert fu.QABF_MAX == pytest.approx(0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4)), abs=1e-15)
    assert fu.QABF_MAX == pytest.approx(0.9748, abs=1e-4)


def test_qabf_decreases_with_blur_and_noise():
    a = _smooth_images(4, sigma=1.5, seed=9)
    b = _smooth_images(4, sigma=1.5, seed=10)
    f = 0.5 * (a + b)
    base = fu.qabf_values(a, b, f)
    blurred = fu.qabf_values(a, b, gaussian_filter(f, (0, 1.5, 1.5)))
    noisy = fu.qabf_values(a, b, np.clip(f + 0.05 * np.random.default_rng(11).standard_normal(f.shape), 0, 1))
    assert (blurred < base).all() and (noisy < base).all()
    assert (base <= fu.QABF_MAX).all() and (blurred >= 0).all()
    # keeping one source intact scores higher than averaging when the other source is flat
    flat = np.full_like(a, 0.5)
    assert (fu.qabf_values(a, flat, a) > fu.qabf_values(a, flat, f)).all()
    black = np.zeros_like(a)
    assert np.isnan(fu.qabf_values(black, black, f)).all()  # no source edges at all: 0/0
    # zero padding (as the MATLAB reference): a constant non-zero source has edges on its frame only
    g, _ = fu._sobel(torch.from_numpy(flat))
    assert (g[:, 1:-1, 1:-1] == 0).all() and (g[:, 0] > 0).all()


# --- input handling -----------------------------------------------------------------------------------


def test_input_shapes():
    a = _smooth_images(2, size=16)
    np.testing.assert_allclose(fu.entropy_values(a[:, None]), fu.entropy_values(a))  # (N, 1, H, W)
    np.testing.assert_allclose(fu.entropy_values(torch.from_numpy(a)), fu.entropy_values(a))
    assert fu.sd_values(a[0]).shape == (1,)  # a single (H, W) image
    with pytest.raises(ValueError, match="differ in shape"):
        fu.scd_values(a, a, a[:1])


# --- the family ---------------------------------------------------------------------------------------


def _family_context(sources_order=("mri", "pet")) -> tuple[EvalContext, dict[str, np.ndarray]]:
    n = 12
    mri = _smooth_images(n, sigma=1.5, seed=20).astype(np.float32)
    pet = _smooth_images(n, sigma=4.0, seed=21).astype(np.float32)
    fake = np.clip(0.6 * mri + 0.4 * pet, 0, 1).astype(np.float32)
    srcs = {"mri": mri, "pet": pet}
    sources = {k: srcs[k] for k in sources_order}
    return EvalContext(real=mri, fake=fake, sources=sources), srcs


def test_fusion_family_names_and_values():
    ctx, srcs = _family_context()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for 64x64 images
        out = fu.FAMILIES["fusion"](ctx)
    expected = [m.name for m in fu.fusion_info(["mri", "pet"])]
    assert list(out) == expected
    assert len(expected) == len(set(expected)) == 8 + 2 * 4 + 4  # + the four *_n_undefined counts
    assert all(np.isfinite(v) for v in out.values()), out
    assert {k: v for k, v in out.items() if k.endswith("_n_undefined")} == {
        "fusion_vif_n_undefined": 0, "fusion_qabf_n_undefined": 0,
        "fusion_vif_mri_n_undefined": 0, "fusion_vif_pet_n_undefined": 0,
    }
    assert fu.fusion.requires == ("sources",)
    assert [m.name for m in fu.INFO] == [
        f"fusion_{s}" for s in ("en", "sd", "sf", "mg", "mi", "scd", "vif", "qabf")
    ]
    assert all(m.family == "fusion" for m in fu.fusion_info(["mri", "pet"]))
    assert all(
        m.higher_is_better is (None if m.name.endswith("_n_undefined") else True)
        for m in fu.fusion_info(["mri", "pet"])
    )
    # the per-source values belong to the right source, and the fusion VIF is their sum
    per_source = {"ssim": fu.ssim_values, "psnr": fu.psnr_values, "cc": fu.cc_values, "vif": fu.vif_values}
    for s in ("mri", "pet"):
        for stem, fn in per_source.items():
            assert out[f"fusion_{stem}_{s}"] == pytest.approx(float(fn(ctx.fake, srcs[s]).mean()), rel=1e-9)
    assert out["fusion_cc_mri"] > out["fusion_cc_pet"]  # fused image is 60 % MRI
    assert out["fusion_vif"] == pytest.approx(out["fusion_vif_mri"] + out["fusion_vif_pet"])
    assert 0 < out["fusion_qabf"] <= fu.QABF_MAX and 0 <= out["fusion_en"] <= 8


def test_fusion_family_source_order_and_count():
    ctx, _ = _family_context()
    ctx_rev, _ = _family_context(("pet", "mri"))
    out, out_rev = fu.fusion(ctx), fu.fusion(ctx_rev)
    assert list(out_rev)[8:12] == ["fusion_ssim_pet", "fusion_psnr_pet", "fusion_cc_pet", "fusion_vif_pet"]
    for name in out:  # symmetric in A and B (SCD and Qabf swap their two terms)
        assert out_rev[name] == pytest.approx(out[name], rel=1e-9), name
    ctx.sources = {**ctx.sources, "ct": ctx.fake}
    with pytest.raises(ValueError, match="exactly two"):
        fu.fusion(ctx)
