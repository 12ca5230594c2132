"""Precision/recall/density/coverage (prdc) and the Inception FID from a user-supplied TorchScript file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpmedgen.metrics import EvalContext
from dpmedgen.metrics import fidelity
from dpmedgen.metrics.fidelity import (
    FAMILIES,
    INFO,
    fid_inception,
    fid_inception_family,
    frechet_distance,
    make_fid_inception_family,
    prdc_effnetlite0,
    prdc_scores,
)
from dpmedgen.metrics.inception import (
    INCEPTION_FILENAME,
    NUM_INCEPTION_FEATURES,
    inception_features,
    load_inception,
)

PRDC_NAMES = ("precision", "recall", "density", "coverage")


# --- prdc --------------------------------------------------------------------------------------------


def _clusters(rng: np.random.Generator, n_per: int = 100, n_clusters: int = 5, dim: int = 16):
    centers = rng.normal(size=(n_clusters, dim)) * 10.0
    return centers, np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centers])


def test_prdc_identical_sets_are_perfect(capsys):
    x = np.random.default_rng(0).normal(size=(200, 64))
    s = prdc_scores(x, x.copy())
    # each real k-NN ball holds its centre and its k-1 nearest neighbours -> density = N*k/(k*N) = 1 exactly
    assert s == {"precision": 1.0, "recall": 1.0, "density": pytest.approx(1.0, abs=1e-12), "coverage": 1.0}
    assert capsys.readouterr().out == ""  # prdc's "Num real: ..." print is swallowed


def test_prdc_far_away_fakes_score_zero():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(150, 32))
    fake = rng.normal(size=(120, 32)) + 1000.0
    assert prdc_scores(real, fake) == {name: 0.0 for name in PRDC_NAMES}


def test_prdc_mode_collapse_high_precision_low_recall_and_coverage():
    rng = np.random.default_rng(2)
    centers, real = _clusters(rng)  # 5 well separated modes of 100 samples
    fake = centers[0] + 0.3 * rng.normal(size=(200, centers.shape[1]))  # a tight blob inside mode 0
    s = prdc_scores(real, fake)
    assert s["precision"] > 0.95
    assert s["recall"] <= 0.2 and s["coverage"] <= 0.2  # at most mode 0's share of the reals
    assert s["coverage"] > 0.0
    assert s["density"] > 1.0  # fakes piled up in the dense centre of a mode: density exceeds 1


def test_prdc_ranges_and_partial_overlap():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(size=(250, 16)) * 0.7 + 0.5  # narrower and shifted: partial overlap
    s = prdc_scores(torch.as_tensor(real), torch.as_tensor(fake))
    for name in ("precision", "recall", "coverage"):
        assert 0.0 < s[name] < 1.0, (name, s[name])
    assert 1.0 < s["density"] <= len(real) / fidelity.PRDC_NEAREST_K  # concentrated fakes: density > 1


def test_prdc_matches_reference_package_and_clips_k_for_tiny_sets():
    from prdc import compute_prdc

    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(40, 8)), rng.normal(size=(30, 8)) + 0.3
    ref = compute_prdc(real, fake, nearest_k=5)
    assert prdc_scores(real, fake) == pytest.approx({k: float(v) for k, v in ref.items()}, abs=0)
    # prdc itself fails for k > n - 2; we clip k to min(5, n_real - 2, n_fake - 2)
    small_real, small_fake = real[:6], fake[:4]
    with pytest.raises(ValueError):
        compute_prdc(small_real, small_fake, nearest_k=5)
    ref2 = compute_prdc(small_real, small_fake, nearest_k=2)
    assert prdc_scores(small_real, small_fake) == pytest.approx({k: float(v) for k, v in ref2.items()}, abs=0)
    with pytest.warns(RuntimeWarning, match="at least 3"):
        s = prdc_scores(real[:2], fake)
    assert all(np.isnan(v) for v in s.values())
    with pytest.raises(ValueError, match="nearest_k"):
        prdc_scores(real, fake, nearest_k=0)


def test_prdc_family_on_cached_features():
    rng = np.random.default_rng(5)
    images = rng.random((12, 16, 16)).astype(np.float32)
    ctx = EvalContext(images, images[::-1].copy())
    real = torch.as_tensor(rng.normal(size=(12, 1280)))
    ctx.__dict__["real_features"] = real  # skip the encoder: the family only reads the cached features
    ctx.__dict__["fake_features"] = real.clone()
    out = prdc_effnetlite0(ctx)
    assert out == {
        "precision_effnetlite0": 1.0,
        "recall_effnetlite0": 1.0,
        "density_effnetlite0": pytest.approx(1.0, abs=1e-12),
        "coverage_effnetlite0": 1.0,
    }
    assert FAMILIES["prdc_effnetlite0"] is prdc_effnetlite0 and FAMILIES["fid_inception"] is fid_inception_family


def test_info_entries():
    names = [m.name for m in INFO]
    assert len(names) == len(set(names))
    assert set(names) == {"fid_effnetlite0", "kid_effnetlite0", "kid_effnetlite0_std", "fid_inception"} | {
        f"{n}_effnetlite0" for n in PRDC_NAMES}
    by_name = {m.name: m for m in INFO}
    assert by_name["fid_inception"].family == "fid_inception"
    assert by_name["fid_inception"].higher_is_better is False
    assert "resolution" in by_name["fid_inception"].description
    assert all(by_name[f"{n}_effnetlite0"].family == "prdc_effnetlite0" for n in PRDC_NAMES)
    assert "exceed 1" in by_name["density_effnetlite0"].range


# --- Inception FID -----------------------------------------------------------------------------------

ACTIVE = 64  # nonzero feature columns of the stand-in; zero columns keep torchmetrics' 2048x2048 eig fast


class TinyInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: ``forward(x, return_features=False)``, uint8 RGB in, (N, 2048) out.

    It refuses anything but uint8 (N, 3, size, size) with ``return_features=True``, so the tests also check
    that images reach the detector unresized. Features: tanh of a fixed random projection of the 8x8-pooled
    image in the first ACTIVE columns, zeros elsewhere.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, ACTIVE, generator=g))
        self.size = size
        self.active = ACTIVE

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("TinyInception: expected uint8 images")
        if x.dim() != 4 or x.shape[1] != 3:
            raise RuntimeError("TinyInception: expected (N, 3, H, W)")
        if x.shape[2] != self.size or x.shape[3] != self.size:
            raise RuntimeError("TinyInception: images were resized before the detector")
        if not return_features:
            raise RuntimeError("TinyInception: expected return_features=True")
        pooled = F.adaptive_avg_pool2d(x.to(torch.float32), 8).flatten(1) / 255.0
        out = torch.zeros(x.shape[0], 2048, dtype=torch.float32, device=x.device)
        out[:, : self.active] = torch.tanh(pooled @ self.proj)
        return out


SIZE = 16


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILENAME
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; NVIDIA's file is TorchScript
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.script(TinyInception(SIZE)).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(6)
    real = rng.random((20, SIZE, SIZE)).astype(np.float32)
    fake = np.clip(rng.random((18, SIZE, SIZE)) * 0.7 + 0.2, 0, 1).astype(np.float32)
    return real, fake


def _by_hand(path: str, imgs: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        det = torch.jit.load(path)
    u8 = torch.round(torch.as_tensor(imgs) * 255).to(torch.uint8)[:, None].repeat(1, 3, 1, 1)
    return det(u8, return_features=True).to(torch.float64)


def test_inception_features_match_direct_call(weights, images):
    real, _ = images
    det = load_inception(weights)
    assert load_inception(weights) is det  # cached
    f = inception_features(real, det, batch_size=64)  # one batch, like the direct call: bit-identical
    assert f.dtype == torch.float64 and tuple(f.shape) == (len(real), NUM_INCEPTION_FEATURES)
    torch.testing.assert_close(f, _by_hand(weights, real), rtol=0, atol=0)
    torch.testing.assert_close(inception_features(real[:, None], det), f, rtol=0, atol=0)  # (N, 1, H, W)
    # other batch sizes: the same up to float32 matmul rounding
    torch.testing.assert_close(inception_features(real, det, batch_size=7), f, rtol=1e-5, atol=1e-5)


def test_fid_inception_equals_frechet_distance_of_features(weights, images):
    real, fake = images
    expected = frechet_distance(_by_hand(weights, real), _by_hand(weights, fake))
    assert expected > 0.1
    assert fid_inception(real, fake, weights, batch_size=64) == pytest.approx(expected, rel=1e-12)
    assert abs(fid_inception(real, real.copy(), weights)) < 1e-3  # identical sets


def test_fid_inception_families(weights, images):
    real, fake = images
    expected = fid_inception(real, fake, weights)
    ctx = EvalContext(real, fake, batch_size=5, inception_weights=weights)
    assert fid_inception_family.requires == ("inception_weights",)
    assert fid_inception_family(ctx) == {"fid_inception": pytest.approx(expected, rel=1e-6)}
    bound = make_fid_inception_family(weights)
    assert not hasattr(bound, "requires") and bound.__name__ == "fid_inception"
    assert bound(EvalContext(real, fake)) == {"fid_inception": pytest.approx(expected, rel=1e-6)}


def test_load_inception_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / INCEPTION_FILENAME
    with pytest.raises(FileNotFoundError) as e:
        load_inception(missing)
    assert str(missing) in str(e.value) and INCEPTION_FILENAME in str(e.value) and "https://" in str(e.value)
    with pytest.raises(FileNotFoundError, match="directory"):
        load_inception(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fid_inception(np.zeros((3, 16, 16)), np.zeros((3, 16, 16)), missing)
    for name, write in (
        ("garbage.pt", lambda p: p.write_bytes(b"not a model")),
        ("state_dict.pt", lambda p: torch.save({"w": torch.zeros(2)}, p)),
    ):
        bad = tmp_path / name
        write(bad)
        with pytest.raises(ValueError) as e:
            load_inception(bad)
        assert str(bad) in str(e.value) and INCEPTION_FILENAME in str(e.value)


def test_inception_features_rejects_bad_inputs_and_detectors(weights, images):
    real, _ = images
    det = load_inception(weights)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(real * 2, det)
    with pytest.raises(ValueError, match="shape"):
        inception_features(real[0], det)

    class Logits(torch.nn.Module):
        def forward(self, x, return_features=False):
            return torch.zeros(x.shape[0], 1008)

    with pytest.raises(ValueError, match="2048"):
        inception_features(real, Logits())
    with pytest.raises(Exception, match="uint8"):  # the stand-in really checks what it is given
        det(torch.zeros(1, 3, SIZE, SIZE), return_features=True)
