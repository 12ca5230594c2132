"""Known-answer tests for dpmedgen.metrics (encoder, FID/KID, nearest-neighbour SSIM/PSNR, evaluate)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, noisy
import torch
from scipy import linalg

from dpmedgen.metrics import METRIC_INFO, METRICS, EvalContext, evaluate, metric_names
from dpmedgen.metrics.encoder import NUM_FEATURES, extract_features, get_encoder, load_state_dict
from dpmedgen.metrics.fidelity import frechet_distance, kernel_distance
from dpmedgen.metrics.image_quality import nearest_real_indices, nn_psnr_values


@pytest.fixture(scope="module")
def real() -> np.ndarray:
    return blobs(32, seed=0)


@pytest.fixture(scope="module")
def real_features(real) -> torch.Tensor:
    return extract_features(real)


# --- encoder -----------------------------------------------------------------------------------------


def test_encoder_weights_equal_file():
    enc = get_encoder()
    loaded = enc.backbone.state_dict()
    stored = load_state_dict()
    assert set(loaded) == set(stored)
    assert len(stored) > 200  # the real EfficientNet-Lite0 checkpoint, not an empty dict
    for k, v in stored.items():
        assert torch.equal(loaded[k], v), k
    # and the BatchNorm-folded copy used by forward() computes the same function
    x = torch.from_numpy(blobs(6, size=64, seed=3)).unsqueeze(1)
    fast, ref = enc(x), enc.forward_reference(x)
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_encoder_recognises_imagenet_class():
    """Weights + normalization are right: skimage's cat photo is classified as a cat (ImageNet 281-285)."""
    skdata = pytest.importorskip("skimage.data")
    try:
        img = skdata.chelsea()
    except Exception as e:  # pragma: no cover - data not bundled
        pytest.skip(f"skimage sample image unavailable: {e}")
    enc = get_encoder()
    x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        pre = (x - 127.0 / 255.0) * (255.0 / 128.0)  # the encoder's documented normalization
        logits = enc.backbone._fc(enc.backbone.extract_features(pre).mean(dim=(2, 3)))
    assert int(logits.argmax()) in {281, 282, 283, 284, 285}
    assert float(logits.softmax(-1).max()) > 0.5


def test_encoder_shapes_dtypes_determinism():
    enc = get_encoder()
    imgs = blobs(5, size=64, seed=4)
    x = torch.from_numpy(imgs).unsqueeze(1)
    f1, f2 = enc(x), enc(x)
    assert f1.shape == (5, NUM_FEATURES) and f1.dtype == torch.float32
    assert torch.equal(f1, f2)  # deterministic
    # different images give clearly different features
    d = torch.cdist(f1, f1)
    assert float(d[~torch.eye(5, dtype=torch.bool)].min()) > 1e-2 * float(f1.norm(dim=1).mean())
    # (N, H, W) and uint8 0..255 inputs are accepted; uint8 means value / 255
    assert torch.equal(enc(torch.from_numpy(imgs)), f1)
    u8 = torch.from_numpy(np.round(imgs * 255).astype(np.uint8)).unsqueeze(1)
    assert torch.equal(enc(u8), enc(u8.float() / 255.0))
    # batching does not change the result (eval-mode BatchNorm)
    fb = extract_features(imgs, batch_size=2)
    assert fb.dtype == torch.float64
    assert torch.allclose(fb.float(), f1, atol=1e-4 * float(f1.abs().max()))
    # train() cannot switch BatchNorm to batch statistics
    enc.train()
    assert not enc.training and not enc.backbone.training and not enc.fused.training


def test_torchmetrics_fid_accepts_encoder_module_and_matches_precomputed(real):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = real[:12]
    fake = noisy(real, 0.05)
    fid = FrechetInceptionDistance(feature=get_encoder())  # custom module: images passed through unchanged
    fid.update(torch.from_numpy(real).unsqueeze(1), real=True)
    fid.update(torch.from_numpy(fake).unsqueeze(1), real=False)
    direct = float(fid.compute())
    ours = frechet_distance(extract_features(real), extract_features(fake))
    assert ours == pytest.approx(direct, rel=1e-3)
    assert "torchvision" not in sys.modules and "torch_fidelity" not in sys.modules


# --- FID / KID ----------------------------------------------------------------------------------------


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (2000, 4))
    b = rng.normal(0.0, 1.0, (2000, 4)) * np.array([1.0, 2.0, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0, 3.0])
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(scipy_fid(a, b), rel=1e-6)
    # population value: |mu|^2 + sum (1 - s)^2 = 10 + 1 + 0.25
    assert got == pytest.approx(11.25, rel=0.1)


@pytest.mark.parametrize("n_fake", [40, 256])
def test_low_rank_frechet_distance_equals_torchmetrics(n_fake):
    """Fewer fake rows than dimensions: the n x n trace formula gives torchmetrics' FID (and scipy's)."""
    from dpmedgen.metrics.fidelity import _frechet_distance_torchmetrics

    rng = np.random.default_rng(1)
    d = 300
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = torch.from_numpy(rng.normal(size=(900, d)) @ mix)
    b = torch.from_numpy(rng.normal(size=(n_fake, d)) @ (1.3 * mix) + 0.2)
    got = frechet_distance(a, b)
    assert got == pytest.approx(_frechet_distance_torchmetrics(a, b), rel=1e-6)
    assert got == pytest.approx(scipy_fid(a.numpy(), b.numpy()), rel=1e-5)
    assert frechet_distance(a, a[:n_fake]) < got  # a subset of the same distribution is closer


def test_fid_kid_identical_sets(real, real_features):
    f = real_features
    fid = frechet_distance(f, f)
    assert abs(fid) < 1e-3
    kid, kid_std = kernel_distance(f, f, seed=0, subset_size=f.shape[0])
    # the unbiased MMD^2 of a set with itself is exactly -2/m * (mean k(x,x) - mean_{x!=y} k(x,y))
    k = (f @ f.T / f.shape[1] + 1.0) ** 3
    m = f.shape[0]
    off = (k.sum() - k.diag().sum()) / (m * (m - 1))
    expected = float(-2.0 / m * (k.diag().mean() - off))
    assert kid == pytest.approx(expected, rel=1e-6)
    kid_noisy, _ = kernel_distance(f, extract_features(noisy(real, 0.05)), seed=0)
    assert abs(kid) < 0.05 * kid_noisy
    assert kid_std < 1e-9  # subset_size == m: every subset is the whole set (hence the default m // 2)


def test_fid_grows_with_noise_and_is_symmetric(real, real_features):
    fr = real_features
    fids = [frechet_distance(fr, extract_features(noisy(real, sd))) for sd in (0.02, 0.05, 0.1)]
    print("FID vs noise sd (0.02, 0.05, 0.1):", fids)
    assert 0 < fids[0] < fids[1] < fids[2]
    ff = extract_features(noisy(real, 0.05, seed=2))
    assert frechet_distance(fr, ff) == pytest.approx(frechet_distance(ff, fr), rel=1e-4)


def test_kid_deterministic_and_leaves_global_rng_alone(real, real_features):
    fr = real_features[:20]
    ff = torch.cat([real_features, extract_features(noisy(real, 0.03))])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = kernel_distance(fr, ff, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert kernel_distance(fr, ff, seed=0) == a
    assert kernel_distance(fr, ff, seed=1) != a
    assert a[1] > 0  # 64 fakes, subsets of 20: a real spread


# --- nearest-neighbour SSIM / PSNR --------------------------------------------------------------------


def test_ssim_psnr_identical_sets_even_when_shuffled(real):
    perm = np.random.default_rng(0).permutation(len(real))
    out = evaluate(real, real[perm], families=["ssim_nn", "psnr_nn"])
    assert out["ssim_nn"] == pytest.approx(1.0, abs=1e-6)
    assert out["psnr_nn"] == math.inf  # exact copies: MSE 0 -> +inf, no arbitrary cap


def test_nearest_neighbour_is_the_nearest():
    rng = np.random.default_rng(5)
    real = blobs(30, seed=5)
    perm = rng.permutation(30)[:10]
    fake = noisy(real[perm], 0.02, seed=6)
    assert nearest_real_indices(real, fake).tolist() == perm.tolist()
    # brute force on unrelated images
    fake2 = blobs(12, seed=7)
    brute = [int(np.argmin(((real - f) ** 2).sum(axis=(1, 2)))) for f in fake2]
    assert nearest_real_indices(real, fake2).tolist() == brute
    # L2-nearest, not "most similar structure": fake = real[0] * 0.5 + 0.25 (same pattern, lower contrast)
    # is closer in L2 to the flat 0.5 image than to real[0] itself.
    pattern = (np.indices((32, 32)).sum(0) % 2).astype(np.float32)  # checkerboard 0/1
    real3 = np.stack([pattern, np.full((32, 32), 0.5, np.float32)])
    fake3 = np.stack([pattern * 0.2 + 0.4] * 2).astype(np.float32)
    assert nearest_real_indices(real3, fake3).tolist() == [1, 1]


def test_psnr_closed_form():
    real = np.stack([np.zeros((32, 32)), np.ones((32, 32)) * 0.9]).astype(np.float32)
    fake = real.copy()
    fake[0, :16] = 0.1  # MSE = 0.5 * 0.01 vs nearest real[0]
    fake[1, :, :8] = 0.5  # MSE = 0.25 * 0.16 vs nearest real[1]
    expected = [10 * math.log10(1 / 0.005), 10 * math.log10(1 / 0.04)]
    got = nn_psnr_values(real, fake)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    out = evaluate(real, fake, families=["psnr_nn", "ssim_nn"])
    assert out["psnr_nn"] == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert 0 < out["ssim_nn"] < 1


# --- evaluate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_real, bad_fake, words",
    [
        (np.zeros((0, 32, 32), np.float32), None, ["real", "empty"]),
        (None, np.zeros((32, 32), np.float32), ["fake", "shape"]),
        (None, np.zeros((4, 3, 32, 32), np.float32), ["fake", "shape"]),
        (None, np.full((4, 32, 32), 1.5, np.float32), ["fake", "[0, 1]"]),
        (np.full((4, 32, 32), -0.1, np.float32), None, ["real", "[0, 1]"]),
        (None, np.full((4, 32, 32), np.nan, np.float32), ["fake", "nan"]),
        (None, np.zeros((4, 16, 16), np.float32), ["differ in size"]),
    ],
)
def test_evaluate_rejects_bad_input(real, bad_real, bad_fake, words):
    r = real if bad_real is None else bad_real
    f = real if bad_fake is None else bad_fake
    with pytest.raises(ValueError) as exc:
        evaluate(r, f)
    for w in words:
        assert w.lower() in str(exc.value).lower()


def test_evaluate_unknown_family(real):
    with pytest.raises(ValueError, match="unknown metric families"):
        evaluate(real, real, families=["inception_score"])


def test_metric_info_covers_every_output_and_is_deterministic(real):
    from dpmedgen.metrics import EXTERNAL_FAMILIES

    fake = noisy(real, 0.05)[:24]
    skipped = {}
    out = evaluate(real, fake, seed=3, skipped=skipped)
    assert set(skipped) == {f for f in METRICS.names() if getattr(METRICS.get(f), "requires", ())}
    assert list(out) == metric_names([f for f in METRICS.names() if f not in skipped])
    assert set(out) <= set(METRIC_INFO)
    for name, info in METRIC_INFO.items():
        assert info.name == name and (info.family in METRICS or info.family in EXTERNAL_FAMILIES)
        assert info.description and info.range and info.source
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert METRIC_INFO["fid_effnetlite0"].higher_is_better is False
    assert METRIC_INFO["ssim_nn"].higher_is_better is True
    assert evaluate(real, fake, seed=3) == out  # deterministic given seed


def test_context_computes_features_once(real, monkeypatch):
    import dpmedgen.metrics as metrics_pkg

    calls = []
    orig = metrics_pkg.extract_features

    def counting(images, **kw):
        calls.append(len(images))
        return orig(images, **kw)

    monkeypatch.setattr(metrics_pkg, "extract_features", counting)
    out = evaluate(real[:12], real[:10], families=["fid_effnetlite0", "kid_effnetlite0"])
    assert sorted(calls) == [10, 12]
    assert set(out) == {"fid_effnetlite0", "kid_effnetlite0", "kid_effnetlite0_std"}
    ctx = EvalContext(real, real[:10])
    assert ctx.real_features is ctx.real_features


def test_precomputed_real_features_give_identical_results():
    from dpmedgen.metrics import evaluate
    from dpmedgen.metrics.encoder import extract_features

    rng = np.random.default_rng(4)
    real = rng.random((12, 32, 32), dtype=np.float32)
    fake = np.clip(real[:10] + rng.normal(0, 0.05, (10, 32, 32)).astype(np.float32), 0, 1)
    families = ["fid_effnetlite0", "kid_effnetlite0"]
    direct = evaluate(real, fake, families, seed=1)
    cached = evaluate(real, fake, families, seed=1, real_features=extract_features(real))
    assert cached == pytest.approx(direct, rel=1e-9)
    with pytest.raises(ValueError, match="real_features must be"):
        evaluate(real, fake, families, real_features=extract_features(real[:5]))


def test_readme_metric_table_matches_the_code():
    """README's metric reference is the generated table: every metric name the code can emit, documented."""
    from pathlib import Path

    from dpmedgen.metrics import all_metric_info, metric_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- metric-table:start -->\n")[1].split("\n<!-- metric-table:end -->")[0]
    assert table == metric_table_markdown(), "regenerate README's table with dpmedgen.metrics.metric_table_markdown()"
    names = {i.name for i in all_metric_info()}
    assert set(METRIC_INFO) <= names and {"fusion_qabf", "ms_ssim_vs_pet", "mia_dcr_auc_patient"} <= names
    assert all(f"| `{name}` |" in table for name in names)


def test_every_metric_family_is_declared_one_way_beside_its_definition():
    """One way to add a metric: a module's FAMILIES and INFO, and the module listed in METRIC_MODULES; the
    registry, the descriptions and README's family order all come from there (no hand-kept list)."""
    import dpmedgen.metrics as metrics

    declared = [f for module in metrics.METRIC_MODULES for f in module.FAMILIES]
    assert sorted(declared) == sorted(metrics.METRICS.names()) and len(set(declared)) == len(declared)
    for module in metrics.METRIC_MODULES:
        for info in module.INFO:
            assert info.family in module.FAMILIES or info.family in metrics.EXTERNAL_FAMILIES, info.name
    sources = "".join(p.read_text() for p in Path(metrics.__file__).parent.glob("*.py"))
    assert sources.count("METRICS.register(") == 1
    assert metrics.FAMILY_ORDER[: len(declared)] == tuple(declared)
