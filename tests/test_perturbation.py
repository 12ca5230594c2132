"""Input and output perturbation: calibration (statistical), units and ledgers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting import gaussian_mechanism

from dpmedgen.privacy import PRIVACY_MODES, TrainingData, validate_ledger
from dpmedgen.privacy.perturbation import add_image_noise, image_epsilon, image_noise_scale


def _data(n_patients=6, per=4, size=32):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((n_patients * per, 1, size, size), dtype=np.float32) * 2 - 1)
    return TrainingData(images=images, patient_ids=np.repeat([f"P{i}" for i in range(n_patients)], per))


def test_laplace_is_calibrated_per_image_not_per_pixel():
    """The classic mistake: sensitivity 1 (per pixel) reported as per image. At 64x64 the per-image L1
    sensitivity is 4096, so epsilon = 10 needs scale 409.6 per pixel."""
    assert image_noise_scale("laplace", 10.0, 0.0, 64 * 64) == pytest.approx(409.6)
    assert image_noise_scale("laplace", 10.0, 0.0, 64 * 64, images=12) == pytest.approx(12 * 409.6)
    sigma = image_noise_scale("gaussian", 2.0, 1e-5, 64 * 64)
    assert sigma == pytest.approx(64 * gaussian_mechanism.get_sigma_gaussian(2.0, 1e-5))
    assert image_epsilon("gaussian", sigma, 1e-5, 64 * 64) == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noise_scale_matches_calibration_statistically(noise):
    scale = image_noise_scale(noise, 5.0, 1e-5, 256)
    draws = add_image_noise(np.zeros((200, 16, 16)), noise, scale, np.random.default_rng(1)).ravel()
    n = draws.size  # 51,200 draws
    if noise == "laplace":  # E|X| = b, sd(|X|) = b
        assert np.abs(draws).mean() == pytest.approx(scale, rel=4 / math.sqrt(n))
        assert draws.std() == pytest.approx(math.sqrt(2) * scale, rel=0.03)
    else:
        assert draws.std() == pytest.approx(scale, rel=4 / math.sqrt(2 * n))
    assert abs(draws.mean()) < 4 * draws.std() / math.sqrt(n)


@pytest.mark.parametrize("name", ["input_laplace", "input_gaussian"])
@pytest.mark.parametrize("unit", ["patient", "image"])
def test_input_perturbation_units_and_ledger(name, unit):
    data = _data()
    mode = PRIVACY_MODES.get(name)(target_epsilon=4.0, delta=1e-4, seed=0, unit=unit)
    loader = mode.make_loader(mode.release(data), batch_size=8)
    released = torch.cat(list(loader))
    assert released.min() >= -1 and released.max() <= 1
    assert not torch.allclose(released.sort(0).values, data.images[: len(released)].sort(0).values)
    ledger = mode.ledger()
    validate_ledger(ledger)
    assert ledger["max_images_per_patient"] == 4 and ledger["pixels_per_image"] == 32 * 32
    assert ledger["epsilon_per_image"] < ledger["epsilon_per_patient"]
    if unit == "patient":
        assert ledger["epsilon_spent"] == ledger["epsilon_per_patient"] <= 4.0 * (1 + 1e-6)
        assert ledger["epsilon_per_patient"] == pytest.approx(4.0, rel=1e-3)
    else:
        assert ledger["epsilon_spent"] == ledger["epsilon_per_image"] == pytest.approx(4.0, rel=1e-3)
        if name == "input_laplace":  # basic composition is exact for pure DP
            assert ledger["epsilon_per_patient"] == pytest.approx(16.0)
    if name == "input_laplace":
        assert ledger["delta"] == 0.0


def test_input_perturbation_is_deterministic_per_seed():
    data = _data()
    a = torch.cat(list((lambda m: m.make_loader(m.release(data), 24))(PRIVACY_MODES.get("input_gaussian")(target_epsilon=4.0, delta=1e-4, seed=3))))
    b = torch.cat(list((lambda m: m.make_loader(m.release(data), 24))(PRIVACY_MODES.get("input_gaussian")(target_epsilon=4.0, delta=1e-4, seed=3))))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["output_laplace", "output_gaussian"])
def test_output_perturbation_states_no_guarantee_and_adds_calibrated_noise(name):
    mode = PRIVACY_MODES.get(name)(target_epsilon=20.0, delta=1e-5)
    assert mode.reuses_nonprivate_training
    mode.set_output_shape((1, 16, 16))
    ledger = mode.ledger() | {"privacy": name}
    validate_ledger(ledger)
    assert ledger["guarantee"] == "none" and math.isinf(ledger["epsilon_spent"])
    assert "nothing about the training data" in ledger["protects"]
    spec = ledger["output_noise"]
    assert spec["noise_scale"] == pytest.approx(image_noise_scale(spec["noise"], 20.0, 1e-5, 256))
    samples = np.full((50, 16, 16), 0.5, dtype=np.float32)
    out = PRIVACY_MODES.get(name).postprocess_samples(samples, ledger, np.random.default_rng(0))
    assert out.shape == samples.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.abs(out - 0.5).mean() > 0.2  # the noise is large (per-image calibration), not cosmetic


@pytest.mark.parametrize("name, epsilon", [("input_gaussian", 100.0), ("input_laplace", 80.0)])
def test_released_images_carry_the_calibrated_noise(name, epsilon):
    """Measured on what `release` returns, so that a mode drawing less (or more) noise than its ledger states
    fails: mid-grey 4x4 images, one per patient, at an epsilon where the noise stays mostly inside [0, 1];
    clipping to [0, 1] leaves |noise| below 0.5 untouched, so its median is that of the noise:
    0.6745 sigma (Gaussian) or b ln 2 (Laplace)."""
    n = 2000
    data = TrainingData(images=torch.zeros(n, 1, 4, 4), patient_ids=np.arange(n).astype(str))
    mode = PRIVACY_MODES.get(name)(target_epsilon=epsilon, delta=1e-5, seed=0, unit="patient")
    released = (mode.release(data).images.numpy() + 1) / 2 - 0.5
    scale = mode.ledger()["noise_scale"]
    expected = scale * (0.674490 if name == "input_gaussian" else math.log(2))
    assert expected < 0.4  # the measured quantiles lie inside the clipping range
    assert np.median(np.abs(released)) == pytest.approx(expected, rel=0.03)


def test_input_gaussian_refuses_a_delta_that_permits_releasing_a_record():
    mode = PRIVACY_MODES.get("input_gaussian")(target_epsilon=1.0, delta=0.2, seed=0)
    with pytest.raises(ValueError, match=r"delta=0.2 is not below 1/N = 1/6 training patients"):
        mode.release(_data())


@pytest.mark.parametrize("name, epsilon", [("output_gaussian", 100.0), ("output_laplace", 80.0)])
def test_output_noise_has_the_stated_scale(name, epsilon):
    """As above, on `postprocess_samples`: a mode that adds less (or more) noise than its ledger states fails."""
    mode = PRIVACY_MODES.get(name)(target_epsilon=epsilon, delta=1e-5, seed=0)
    mode.set_output_shape((1, 4, 4))
    ledger = mode.ledger() | {"privacy": name}
    out = PRIVACY_MODES.get(name).postprocess_samples(np.full((2000, 4, 4), 0.5), ledger, np.random.default_rng(0))
    scale = ledger["output_noise"]["noise_scale"]
    expected = scale * (0.674490 if name == "output_gaussian" else math.log(2))
    assert expected < 0.4
    assert np.median(np.abs(out - 0.5)) == pytest.approx(expected, rel=0.03)
