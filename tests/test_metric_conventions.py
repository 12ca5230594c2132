"""Metric conventions (issue #21): each metric follows the convention of the reference it cites, checked
against an independent implementation (scikit-image, scikit-learn, a SciPy transcription of the authors'
MATLAB code) or a hand-computed case.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import signal
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

import conftest

from dpmedgen.metrics import EvalContext, METRIC_INFO, metric_table_markdown
from dpmedgen.metrics import fusion as fu
from dpmedgen.metrics.fidelity import kernel_distance, kid_subset_size
from dpmedgen.metrics.image_quality import nn_ssim_values, ssim_values
from dpmedgen.metrics.iqa import MS_SSIM_BETAS, ms_ssim_scales, ms_ssim_values


def _pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth blob images (black background, as brain slices) and noisy / blurred / shifted versions."""
    x = conftest.blobs(n, size, seed).astype(np.float64)
    rng = np.random.default_rng(seed)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0.0, 1.0)
    y[0] = gaussian_filter(x[0], 2.0)
    y[1] = np.roll(x[1], 3, axis=1)
    return x, y


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for a, b in zip(x, y)
    ])


# --- 1. SSIM / MS-SSIM: the standard (valid-region) convention --------------------------------------------


@pytest.mark.parametrize("size", [32, 45, 64])
def test_ssim_equals_scikit_image_standard_convention(size):
    x, y = _pairs(5, size, seed=size)
    want = _skimage_ssim(x, y)
    np.testing.assert_allclose(ssim_values(x, y).numpy(), want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fu.ssim_values(y, x), _skimage_ssim(y, x), rtol=0, atol=1e-10)
    # ssim_nn: each fake vs its L2-nearest real image, same convention
    np.testing.assert_allclose(nn_ssim_values(x, y, torch.arange(len(y))).numpy(), _skimage_ssim(y, x), atol=1e-10)
    np.testing.assert_array_equal(ssim_values(x, x).numpy(), 1.0)


def test_ssim_is_not_the_reflect_padded_full_map_mean():
    """torchmetrics' convention (reflect padding, full-map mean) differs by up to ~0.2 at 64 px: the border
    windows of a black-background image are nearly perfect matches there, so it is biased towards 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    x, y = _pairs(6, 64, seed=3)
    tm = tm_ssim(torch.from_numpy(y[:, None]), torch.from_numpy(x[:, None]), data_range=1.0, reduction="none")
    assert np.abs(ssim_values(y, x).numpy() - tm.numpy()).max() > 0.01


def test_ssim_needs_one_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_values(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)))


def _ref_ms_ssim(x: np.ndarray, y: np.ndarray, betas: tuple[float, ...]) -> float:
    """SciPy transcription of Wang et al.'s msssim.m / ssim_index_new.m (filter2 'valid', ones(2)/4 with
    'symmetric' boundary, then (1:2:end)), one image pair, float64."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    out = 1.0
    def halve(v: np.ndarray) -> np.ndarray:
        return signal.correlate2d(np.pad(v, ((0, 1), (0, 1)), mode="symmetric"), np.ones((2, 2)) / 4, "valid")[::2, ::2]

    for j, beta in enumerate(betas):
        if j > 0:
            x, y = halve(x), halve(y)
        mx, my = (signal.correlate2d(v, win, "valid") for v in (x, y))
        sxx = signal.correlate2d(x * x, win, "valid") - mx * mx
        syy = signal.correlate2d(y * y, win, "valid") - my * my
        sxy = signal.correlate2d(x * y, win, "valid") - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        ssim = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
        term = ssim.mean() if j == len(betas) - 1 else cs.mean()
        out *= max(term, 0.0) ** beta
    return out


@pytest.mark.parametrize("size", [32, 64, 128])
def test_ms_ssim_matches_transcription_of_the_authors_code(size):
    x, y = _pairs(3, size, seed=size + 1)
    m = ms_ssim_scales(size, size)
    assert m == {32: 2, 64: 3, 128: 4}[size]
    betas = tuple(b / sum(MS_SSIM_BETAS[:m]) for b in MS_SSIM_BETAS[:m])
    want = [_ref_ms_ssim(a, b, betas) for a, b in zip(y, x)]
    np.testing.assert_allclose(ms_ssim_values(y, x).numpy(), want, rtol=0, atol=1e-10)


def test_ms_ssim_size_limits():
    # 32 px: two scales, the coarsest 16 px (a 6 x 6 valid region); under 32 px: one scale, plain SSIM
    x, y = _pairs(2, 24, seed=9)
    assert ms_ssim_scales(24, 24) == 1
    np.testing.assert_allclose(ms_ssim_values(y, x).numpy(), _skimage_ssim(y, x), atol=1e-10)
    with pytest.raises(ValueError, match="at least 11x11"):
        ms_ssim_values(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)))


# --- 2. average gradient: VIFB's formula -------------------------------------------------------------------


def test_average_gradient_is_vifb_formula_hand_computed():
    # 2 x 3 image; MATLAB gradient: Gx row 1 = [2-0, (5-0)/2, 5-2] = [2, 2.5, 3], row 2 = [1, 0.5, 0];
    # Gy (two rows: one-sided both) = row2 - row1 = [1-0, 1-2, 1-5] = [1, -1, -4] on both rows
    img = np.array([[0.0, 2, 5], [1, 1, 1]])
    gx = np.array([[2, 2.5, 3], [0, 0, 0]])
    gy = np.array([[1, -1, -4], [1, -1, -4]])
    want = np.sqrt((gx**2 + gy**2) / 2).sum() / ((2 - 1) * (3 - 1))
    assert fu.average_gradient_values(img, scale=1.0)[0] == pytest.approx(want, abs=1e-12)
    # forward differences / (M-1)(N-1) pixels, the old convention, give another number
    fwd = np.sqrt(((img[:-1, 1:] - img[:-1, :-1]) ** 2 + (img[1:, :-1] - img[:-1, :-1]) ** 2) / 2).mean()
    assert abs(want - fwd) > 0.1


def test_average_gradient_rewards_noise():
    """Documented: AG is not a quality ranking by itself, a noisy fusion scores higher than a clean one."""
    a, b = conftest.blobs(4, 64, 30), conftest.blobs(4, 64, 31)
    clean = (a + b) / 2
    noisy = np.clip(clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1)
    assert (fu.average_gradient_values(noisy) > 1.5 * fu.average_gradient_values(clean)).all()
    assert "noisy fusion scores high" in METRIC_INFO["fusion_mg"].description


# --- 3. MI in nats, as VIFB / sklearn ------------------------------------------------------------------------


def test_fusion_mi_is_in_nats():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(4)
    a = np.rint(conftest.blobs(3, 64, 40) * 255) / 255
    b = rng.integers(0, 256, a.shape) / 255.0
    f = np.rint((a + b) / 2 * 255) / 255
    # MI of an image with itself = its entropy, in nats (EN is in bits)
    np.testing.assert_allclose(fu.mutual_information_values(a, a), fu.entropy_values(a) * math.log(2), atol=1e-10)
    # = sklearn's mutual_info_score (natural log), as the SeAFusion / CDDFuse evaluators compute MI
    lv = [np.rint(v * 255).astype(int).reshape(len(v), -1) for v in (a, b, f)]
    want = [mutual_info_score(x, z) + mutual_info_score(y, z) for x, y, z in zip(*lv)]
    np.testing.assert_allclose(fu.fusion_mi_values(a, b, f), want, rtol=1e-9)
    assert "nats" in METRIC_INFO["fusion_mi"].range


# --- 4. VIF of a flat source: undefined, left out of the mean, counted ------------------------------------


def test_vif_with_flat_source_is_counted_as_undefined():
    n = 5
    mri = conftest.blobs(n, 64, 50).astype(np.float64)
    pet = conftest.blobs(n, 64, 51).astype(np.float64)
    pet[1] = 0.4  # a flat PET slice: VIF(PET -> F) = 0 / 0
    fake = np.clip(0.5 * mri + 0.5 * pet, 0, 1)
    assert np.isnan(fu.vif_values(fake, pet)[1]) and np.isfinite(fu.vif_values(fake, pet)[[0, 2, 3, 4]]).all()
    ctx = EvalContext(real=mri.astype(np.float32), fake=fake.astype(np.float32),
                      sources={"mri": mri.astype(np.float32), "pet": pet.astype(np.float32)})
    with pytest.warns(UserWarning, match="undefined .* 1 of 5"):
        out = fu.fusion(ctx)
    assert out["fusion_vif_n_undefined"] == 1 and out["fusion_vif_pet_n_undefined"] == 1
    assert out["fusion_vif_mri_n_undefined"] == 0 and out["fusion_qabf_n_undefined"] == 0
    keep = [0, 2, 3, 4]
    assert out["fusion_vif_pet"] == pytest.approx(float(fu.vif_values(fake[keep], pet[keep]).mean()), rel=1e-9)
    assert {f"fusion_vif_{s}_n_undefined" for s in ("mri", "pet")} <= {m.name for m in fu.fusion_info(["mri", "pet"])}


# --- 5. KID std over subsets of a set of <= 1000 ------------------------------------------------------------


def test_kid_std_is_positive_for_small_sets():
    rng = np.random.default_rng(6)
    real = torch.from_numpy(rng.normal(size=(200, 16)))
    fake = torch.from_numpy(rng.normal(0.3, 1.2, size=(200, 16)))
    assert kid_subset_size(200, 200) == 100 and kid_subset_size(5000, 3000) == 1000
    assert kid_subset_size(3, 3) == 2 and kid_subset_size(1, 5) == 1
    mean, std = kernel_distance(real, fake, seed=0)
    assert mean > 0 and std > 0
    _, std_whole = kernel_distance(real, fake, seed=0, subset_size=200)  # one subset = the whole set
    assert std_whole < 1e-9


# --- 6. attack AUCs: distance from 0.5, never "lower is better" ---------------------------------------------


def test_attack_auc_is_labelled_two_sided_everywhere():
    from dpmedgen.plots.privacy_utility import _ylabel
    from dpmedgen.tables import main_results_table, to_markdown

    info = METRIC_INFO["mia_dcr_auc_patient"]
    assert info.ideal == 0.5
    label = _ylabel("mia_dcr_auc_patient", METRIC_INFO)
    assert "lower is better" not in label and "0.5" in label
    row = next(r for r in metric_table_markdown().splitlines() if r.startswith("| `mia_dcr_auc_patient`"))
    assert row.split(" | ")[2] == "closer to 0.5"
    import pandas as pd

    rows = [
        dict(dataset="toy", model="dcgan", privacy=p, epsilon_target=e, seed=0, metric="mia_dcr_auc_patient", value=v,
             reference="members", n_real=10.0, n_fake=10.0)
        for p, e, v in (("none", math.inf, 0.31), ("dpsgd", 1.0, 0.55))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = main_results_table(pd.DataFrame(rows), "toy", ["mia_dcr_auc_patient"])
        md = to_markdown(table, metric_info=METRIC_INFO)
    assert "`mia_dcr_auc_patient` → 0.5" in md and "`mia_dcr_auc_patient` ↓" not in md
    assert "**0.550**" in md and "**0.310**" not in md  # bold by distance from 0.5 (tables.py)
