"""The functional mechanism: feature-map norm bound, sensitivity, noise calibration, ledger, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dpmedgen.models import MODELS
from dpmedgen.privacy import TrainingData, validate_ledger
from dpmedgen.privacy.functional import (
    L1_NORM_BOUND,
    L1_SENSITIVITY_PER_IMAGE,
    L2_NORM_BOUND,
    L2_SENSITIVITY_PER_IMAGE,
    FeatureMap,
    FunctionalDiscriminator,
    FunctionalMechanism,
)
from dpmedgen.privacy.mechanisms import gaussian_epsilon, gaussian_sigma, laplace_scale
from dpmedgen.train import TrainConfig, train_model
from conftest import attach_one, functional_discriminator_loss

NORMS = {"gaussian": ("l2", 2, L2_NORM_BOUND), "laplace": ("l1", 1, L1_NORM_BOUND)}
REPLACE_ONE = {"gaussian": L2_SENSITIVITY_PER_IMAGE, "laplace": L1_SENSITIVITY_PER_IMAGE}


def _data(n_patients: int, per_patient: list[int] | int, size: int = 32, seed: int = 0) -> TrainingData:
    counts = [per_patient] * n_patients if isinstance(per_patient, int) else per_patient
    pids = np.concatenate([[f"P{p:03d}"] * c for p, c in enumerate(counts)])
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(len(pids), 1, size, size, generator=gen) * 2 - 1
    return TrainingData(images=images, patient_ids=pids)


def _adversarial(size: int) -> torch.Tensor:
    """All-background, all-white, single bright pixel, one bright pooled cell, a brightness ramp, out-of-range."""
    out = [torch.full((size, size), -1.0), torch.ones(size, size), torch.full((size, size), -1.0), torch.full((size, size), -1.0)]
    out[2][0, 0] = 1.0
    out[3][: size // 4, : size // 4] = 1.0
    out.append(torch.linspace(-1, 1, size * size).view(size, size))
    out.append(torch.full((size, size), 1e6))
    out.append(torch.full((size, size), -1e6))
    out.append(torch.randn(size, size) * 1e3)
    return torch.stack(out)[:, None]


def _attached(noise="gaussian", unit="patient", n_patients=12, per_patient=3, size=32, feature_size=8, eps=1.0, delta=1e-3, seed=0, **kw):
    data = _data(n_patients, per_patient, size=size, seed=seed)
    mode = FunctionalMechanism(target_epsilon=eps, delta=delta, seed=seed, unit=unit, noise=noise, feature_size=feature_size, **kw)
    disc = nn.Linear(1, 1)
    head, opt, loader = attach_one(mode, disc, torch.optim.Adam(disc.parameters(), lr=3e-4, betas=(0.5, 0.9)), data, 4, 10)
    return mode, data, head, opt, loader


# ---------------------------------------------------------------------------------------------- feature map
@pytest.mark.parametrize("norm,order", [("l2", 2), ("l1", 1)])
@pytest.mark.parametrize("feature_size", [2, 4, 8])
def test_feature_map_norm_at_most_one_for_every_input(norm, order, feature_size):
    psi = FeatureMap(feature_size, channels=1, norm=norm)
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([_adversarial(16), torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1, torch.randn(64, 1, 16, 16, generator=gen) * 50])
    for dtype in (torch.float64, torch.float32):
        norms = torch.linalg.vector_norm(psi(x.to(dtype)), ord=order, dim=1)
        assert torch.isfinite(norms).all()
        assert norms.max().item() <= 1 + (1e-12 if dtype == torch.float64 else 1e-6)
    # All-white and far-out-of-range images reach the bound; the all-background image maps to 0.
    all_white = torch.linalg.vector_norm(psi(torch.ones(1, 1, 16, 16, dtype=torch.float64)), ord=order).item()
    assert all_white == pytest.approx(1.0)
    assert psi(torch.full((1, 1, 16, 16), -1.0)).abs().max().item() == 0.0


def test_feature_map_keeps_brightness_below_the_floor_and_is_differentiable():
    psi = FeatureMap(8, channels=1, norm="l2")
    dim = torch.full((1, 1, 32, 32), -0.8)  # v = 0.1 everywhere, ||v||_2 = 0.8 < r = 4: linear regime
    assert torch.allclose(psi(dim), torch.full((1, 64), 0.1 / 4.0))
    assert torch.allclose(psi(dim * 0 - 0.9), psi(dim) / 2)  # half as bright -> half the features
    x = torch.cat([_adversarial(32)[:5], torch.rand(3, 1, 32, 32) * 2 - 1]).requires_grad_(True)
    disc = FunctionalDiscriminator(psi)
    nn.init.normal_(disc.head.weight)
    disc(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- sensitivity
@pytest.fixture
def one_thread():
    """Thousands of tiny tensor ops: threading only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_removing_or_replacing_one_patient_moves_exact_coefficients_by_at_most_k_times_delta(noise, one_thread):
    """Removal moves t(D) by at most k_P * B (the norm bound); replacement, the study's adjacency, by at most
    k * Delta = k * 2B (`*_SENSITIVITY_PER_IMAGE`, which the calibration uses)."""
    norm, order, delta_image = NORMS[noise]
    assert REPLACE_ONE[noise] == pytest.approx(2 * delta_image) and delta_image == pytest.approx(
        math.sqrt(3) if noise == "gaussian" else 3.0)
    rng = np.random.default_rng(0)
    size, feature_size = 16, 4
    psi = FeatureMap(feature_size, channels=1, norm=norm)
    adversarial = _adversarial(size)
    worst = 0.0
    for trial in range(300):
        counts = rng.integers(1, 6, size=rng.integers(1, 6))
        n = int(counts.sum())
        kind = rng.integers(0, 3)
        if kind == 0:  # in-range random
            images = torch.as_tensor(rng.uniform(-1, 1, (n, 1, size, size)), dtype=torch.float32)
        elif kind == 1:  # adversarial images only
            images = adversarial[torch.as_tensor(rng.integers(0, len(adversarial), n))]
        else:  # mixture, including saturated images (the worst case for the bound)
            images = torch.as_tensor(rng.choice([-1.0, 1.0], (n, 1, size, size)) * rng.uniform(0, 3, (n, 1, 1, 1)), dtype=torch.float32)
            images[: n // 2] = adversarial[torch.as_tensor(rng.integers(0, len(adversarial), n // 2))]
        owner = np.repeat(np.arange(len(counts)), counts)
        full = FunctionalMechanism._exact_coefficients(psi, images)
        k = int(counts.max())
        for patient in range(len(counts)):
            rest = images[torch.as_tensor(owner != patient)]
            without = FunctionalMechanism._exact_coefficients(psi, rest)
            change = np.linalg.norm(full - without, ord=order)
            assert change <= k * delta_image * (1 + 1e-12), (trial, patient, change)
            assert change <= counts[patient] * delta_image * (1 + 1e-12)
            worst = max(worst, change / (counts[patient] * delta_image))
            other = adversarial[torch.as_tensor(rng.integers(0, len(adversarial), rng.integers(1, k + 1)))]
            replaced = FunctionalMechanism._exact_coefficients(psi, torch.cat([rest, other]))
            assert np.linalg.norm(full - replaced, ord=order) <= k * REPLACE_ONE[noise] * (1 + 1e-12)
    # The bound is not vacuous: a patient of all-white images comes close to it.
    assert worst > 0.5
    # Single images: ||tau(x)|| <= Delta for every adversarial image; the count coordinate is exactly 1.
    for x in adversarial:
        tau = FunctionalMechanism._exact_coefficients(psi, x[None])
        assert tau[0] == 1.0
        assert np.linalg.norm(tau, ord=order) <= delta_image * (1 + 1e-12)


def test_coefficient_layout_is_count_then_sum_then_upper_triangle():
    psi = FeatureMap(2, channels=1, norm="l2")
    images = _data(2, 3, size=8).images
    coeffs = FunctionalMechanism._exact_coefficients(psi, images)
    f = psi(images.double())
    p = f.shape[1]
    assert coeffs.shape == ((p + 1) * (p + 2) // 2,)
    assert coeffs[0] == len(images)
    np.testing.assert_allclose(coeffs[1 : p + 1], f.sum(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(coeffs[p + 1 :], (f.T @ f).numpy()[np.triu_indices(p)], rtol=1e-12)


# ---------------------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("unit", ["patient", "image"])
def test_gaussian_noise_has_the_calibrated_standard_deviation(unit):
    mode, data, head, _, _ = _attached("gaussian", unit=unit, seed=3)
    k = 3
    expected = gaussian_sigma(1.0, 1e-3, (k if unit == "patient" else 1) * 2 * math.sqrt(3))
    assert mode.ledger()["noise_scale"] == expected
    noise = mode._released - FunctionalMechanism._exact_coefficients(head.psi, data.images)
    m = len(noise)
    assert m == 65 * 66 // 2
    assert abs(noise.std() - expected) < 4 * expected / math.sqrt(2 * m)
    assert abs(noise.mean()) < 4 * expected / math.sqrt(m)


@pytest.mark.parametrize("unit", ["patient", "image"])
def test_laplace_noise_has_the_calibrated_scale(unit):
    mode, data, head, _, _ = _attached("laplace", unit=unit, seed=4)
    expected = laplace_scale(1.0, (3 if unit == "patient" else 1) * 6.0)
    assert mode.ledger()["noise_scale"] == expected
    noise = mode._released - FunctionalMechanism._exact_coefficients(head.psi, data.images)
    m = len(noise)
    # |Laplace(b)| is exponential with mean b and standard deviation b.
    assert abs(np.abs(noise).mean() - expected) < 4 * expected / math.sqrt(m)
    assert abs(noise.mean()) < 4 * expected * math.sqrt(2) / math.sqrt(m)


def test_noise_is_reproducible_from_the_seed():
    a = _attached(seed=5)[0]._released
    b = _attached(seed=5)[0]._released
    c = _attached(seed=6)[0]._released
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------------------------- ledger
@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_ledger_patient_unit(noise):
    mode, *_ = _attached(noise, unit="patient")
    led = mode.ledger()
    validate_ledger(led)
    for key in (
        "epsilon_per_image", "epsilon_per_patient", "noise", "noise_scale", "max_images_per_patient", "feature_map",
        "n_coefficients", "taylor_order", "theorem", "protected_networks",
        "l2_sensitivity_per_image" if noise == "gaussian" else "l1_sensitivity_per_image",
    ):
        assert key in led, key
    assert led["mechanism"] == "functional" and led["guarantee"] == "formal" and led["unit"] == "patient"
    assert led["epsilon_spent"] == led["epsilon_per_patient"] == mode.epsilon_spent()
    assert led["epsilon_per_patient"] <= 1.0 * (1 + 1e-9)
    assert led["epsilon_per_image"] < led["epsilon_per_patient"]
    assert led["max_images_per_patient"] == 3
    assert led["n_coefficients"] == 2145 and led["taylor_order"] == 2
    assert led["delta"] == (1e-3 if noise == "gaussian" else 0.0)
    if noise == "gaussian":
        sigma = led["noise_scale"]
        assert led["epsilon_per_image"] == pytest.approx(gaussian_epsilon(sigma, 2 * math.sqrt(3), 1e-3))
        assert led["epsilon_per_patient"] == pytest.approx(1.0, rel=1e-6)
    else:
        assert led["epsilon_per_patient"] == pytest.approx(1.0) and led["epsilon_per_image"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_ledger_image_unit(noise):
    mode, *_ = _attached(noise, unit="image")
    led = mode.ledger()
    validate_ledger(led)
    assert led["unit"] == "image"
    assert led["epsilon_spent"] == led["epsilon_per_image"] <= 1.0 * (1 + 1e-9)
    assert led["epsilon_per_patient"] > led["epsilon_per_image"]
    assert led["epsilon_per_patient"] >= led["epsilon_spent"]


def test_single_image_patients_have_equal_epsilons():
    mode, *_ = _attached("gaussian", per_patient=1, n_patients=40, delta=1e-3)
    led = mode.ledger()
    assert led["epsilon_per_image"] == pytest.approx(led["epsilon_per_patient"])


def test_epsilon_is_zero_before_attach_and_no_ledger():
    mode = FunctionalMechanism(target_epsilon=1.0, delta=1e-5)
    assert mode.epsilon_spent() == 0.0
    with pytest.raises(RuntimeError, match="before attach"):
        mode.ledger()


def test_public_cap_on_images_per_patient_is_enforced():
    data = _data(6, [1, 2, 5, 9, 3, 4], size=16)
    mode = FunctionalMechanism(target_epsilon=1.0, delta=1e-2, feature_size=4, max_images_per_patient=3)
    disc = nn.Linear(1, 1)
    attach_one(mode, disc, torch.optim.Adam(disc.parameters()), data, 4, 10)
    led = mode.ledger()
    assert led["max_images_per_patient"] == 3
    assert led["n_images_dropped_by_cap"] == (5 - 3) + (9 - 3) + (4 - 3)
    assert led["noise_scale"] == gaussian_sigma(1.0, 1e-2, 3 * 2 * math.sqrt(3))
    # The count coordinate is the kept images plus noise.
    assert mode._released[0] == pytest.approx(1 + 2 + 3 + 3 + 3 + 3, abs=8 * led["noise_scale"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_epsilon": math.inf}, "finite"),
        ({"target_epsilon": 0.0}, "finite"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"noise": "uniform"}, "noise"),
        ({"feature_size": 6}, "power of two"),
        ({"feature_size": 1}, "power of two"),
        ({"unit": "slice"}, "unit"),
        ({"max_images_per_patient": 0}, "max_images_per_patient"),
    ],
)
def test_constructor_validates(kwargs, match):
    args = {"target_epsilon": 1.0, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=match):
        FunctionalMechanism(**args)


def test_laplace_accepts_zero_delta():
    FunctionalMechanism(target_epsilon=1.0, delta=0.0, noise="laplace")


@pytest.mark.parametrize("size,feature_size", [(12, 8), (16, 32)])
def test_attach_rejects_feature_size_that_does_not_divide_the_image(size, feature_size):
    data = _data(3, 2, size=size)
    mode = FunctionalMechanism(target_epsilon=1.0, delta=1e-3, feature_size=feature_size)
    disc = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="feature_size"):
        attach_one(mode, disc, torch.optim.Adam(disc.parameters()), data, 4, 10)


def test_attach_rejects_large_delta():
    data = _data(12, 3)
    mode = FunctionalMechanism(target_epsilon=1.0, delta=0.1)
    disc = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="1/N"):
        attach_one(mode, disc, torch.optim.Adam(disc.parameters()), data, 4, 10)


# ---------------------------------------------------------------------------------------------- training
def test_attach_replaces_the_discriminator_and_returns_no_loader():
    mode, data, head, opt, loader = _attached()
    assert loader is None
    assert isinstance(head, FunctionalDiscriminator)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in head.parameters()}
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["betas"] == (0.5, 0.9)
    with pytest.raises(RuntimeError, match="only once"):
        attach_one(mode, head, opt, data, 4, 10)
    with pytest.raises(AssertionError):
        functional_discriminator_loss(mode, head, torch.zeros(4, 1, 32, 32), real=data.images[:4])


def test_post_processed_moment_matrix_is_psd_and_loss_bounded_below():
    mode, data, head, _, _ = _attached(eps=0.1)
    eig = torch.linalg.eigvalsh(mode._moment.double())
    assert eig.min().item() >= -1e-4 * eig.abs().max().item()
    assert mode._n_hat >= 1.0
    # Along random directions of (c, w) the real loss grows (does not fall without bound).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(5):
            direction = torch.randn(65, generator=gen)
            values = []
            for scale in (1e2, 1e3, 1e4):
                head.head.bias.fill_(scale * direction[0].item())
                head.head.weight.copy_(scale * direction[1:].view(1, -1))
                values.append(mode._real_loss(head, 16).item())
            assert values[-1] >= values[0] - 1e-3 * abs(values[0])


def test_discriminator_loss_does_not_depend_on_the_data_after_release():
    mode, data, head, opt, _ = _attached()
    fake = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    nn.init.normal_(head.head.weight, generator=torch.Generator().manual_seed(3))
    before = functional_discriminator_loss(mode, head, fake).item()
    data.images.zero_()
    after = functional_discriminator_loss(mode, head, fake).item()
    assert before == after
    assert math.isfinite(before)


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_polynomial_loss_equals_the_taylor_expansion_without_noise(noise):
    mode, data, head, _, _ = _attached(noise)
    exact = FunctionalMechanism._exact_coefficients(head.psi, data.images)
    mode._set_coefficients(exact)  # noise disabled
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        nn.init.normal_(head.head.weight, std=2.0, generator=gen)
        head.head.bias.fill_(0.3)
        s = head(data.images).double()
        n = len(s)
        taylor = (math.log(2.0) - s / 2 + s**2 / 8).sum()
        for batch in (n, 16):
            got = mode._real_loss(head, batch).double()
            assert got.item() == pytest.approx((batch / n) * taylor.item(), rel=1e-5)
    # The Taylor polynomial is the logistic loss to second order: close for small scores.
    with torch.no_grad():
        head.head.weight.mul_(1e-2)
        s = head(data.images).double()
        logistic = nn.functional.softplus(-s).sum().item()
        assert mode._real_loss(head, len(s)).item() == pytest.approx(logistic, rel=1e-4)


def test_polynomial_loss_gradient_matches_autograd_of_the_taylor_expansion():
    mode, data, head, _, _ = _attached()
    mode._set_coefficients(FunctionalMechanism._exact_coefficients(head.psi, data.images))
    nn.init.normal_(head.head.weight, generator=torch.Generator().manual_seed(8))
    mode._real_loss(head, len(data.images)).backward()
    grad_poly = head.head.weight.grad.clone()
    head.zero_grad()
    s = head(data.images)
    (math.log(2.0) - s / 2 + s**2 / 8).sum().backward()
    assert torch.allclose(grad_poly, head.head.weight.grad, rtol=1e-4, atol=1e-5)


def _train(noise: str, zero_after_release: bool, steps: int = 5):
    torch.manual_seed(0)
    model = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=8)
    data = _data(12, 3, size=32, seed=11)
    mode = FunctionalMechanism(target_epsilon=1.0, delta=1e-3, seed=0, noise=noise)
    loaders = []
    original = mode.attach

    def attach(*args, **kwargs):
        out = original(*args, **kwargs)
        loaders.append(out[2].get("discriminator"))
        if zero_after_release:
            data.images.zero_()  # the real images are gone: training must not notice
        return out

    mode.attach = attach
    rows = train_model(model, data, mode, TrainConfig(steps=steps, batch_size=4), progress=False)
    return model, mode, rows, loaders


@pytest.mark.parametrize("noise", ["gaussian", "laplace"])
def test_engine_trains_without_reading_real_data_after_release(noise):
    model_a, mode_a, rows_a, loaders = _train(noise, zero_after_release=False)
    model_b, _, rows_b, _ = _train(noise, zero_after_release=True)
    assert loaders == [None]
    assert len(rows_a) == 1  # 5 steps in one epoch (no loader: ceil(36 images / 4) = 9 steps per epoch)
    assert all(math.isfinite(r["loss_discriminator"]) and math.isfinite(r["loss_generator"]) for r in rows_a)
    assert all(r["epsilon_spent"] == mode_a.epsilon_spent() > 0 for r in rows_a)
    # Bit-identical training whether or not the real images still exist after the release.
    assert [(r["loss_discriminator"], r["loss_generator"]) for r in rows_a] == [(r["loss_discriminator"], r["loss_generator"]) for r in rows_b]
    for (name, a), b in zip(model_a.generator.state_dict().items(), model_b.generator.state_dict().values()):
        assert torch.equal(a, b), name
    validate_ledger(mode_a.ledger())
