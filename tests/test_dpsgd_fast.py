"""DP-SGD's two clipping paths implement one mechanism: the fast path (book-keeping, mixed ghost norms) gives
the update of the Opacus path for every model, with the same Poisson batches, the same noise draw and the
same normalisation, and both hand the accountant the same steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DiscriminatorOnly

from dpmedgen.models import MODELS
from dpmedgen.privacy import TrainingData
from dpmedgen.privacy.dpsgd import DPSGD, calibrate_noise_multiplier, dpsgd_epsilon
from dpmedgen.train import TrainConfig, train_model

BUILD = {
    "dcgan": lambda: MODELS.get("dcgan")(image_size=32, latent_dim=8, width=8),
    "sngan": lambda: MODELS.get("sngan")(image_size=32, latent_dim=8, width=8),
    "ddcgan": lambda: MODELS.get("ddcgan")(image_size=32, width=4),
    "ddpm": lambda: MODELS.get("ddpm")(
        image_size=32, block_out_channels=(8, 16), attention=True, norm_num_groups=4, noise_draws=2, sampling_steps=2
    ),
}


def _data(channels: int) -> TrainingData:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(60, channels, 32, 32, generator=gen) * 2 - 1
    return TrainingData(images=images, patient_ids=np.repeat([f"P{i:02d}" for i in range(20)], 3))


def _train_recording(name: str, clipping: str, steps: int = 2, max_grad_norm: float = 0.05):
    """Train `steps` steps; return every optimizer's gradient at every step (what Adam is given), the
    ledger and the final weights."""
    torch.manual_seed(0)
    model = BUILD[name]()
    data = _data(2 if model.kind == "fusion" else 1)
    mode = DPSGD(target_epsilon=4.0, delta=1e-3, seed=5, max_grad_norm=max_grad_norm, clipping=clipping)
    grads: list[list[torch.Tensor]] = []
    original = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = recording
    try:
        train_model(
            model, data, mode, TrainConfig(steps=steps, batch_size=8, device="cpu", checkpoint_every=0), progress=False
        )
    finally:
        torch.optim.Adam.step = original
    return grads, mode.ledger(), {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max() + 1e-9)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_fast_update_equals_opacus_update(name):
    """Same batches, same noise: the noisy clipped update differs only by float rounding (relative 1e-5 of
    each gradient's largest entry; measured 1e-8 to 2e-6). A small clip norm (0.05) clips every example, so a
    wrong norm or clipped sum would show at the scale of C / B. Two steps: after more, Adam amplifies float
    rounding in coordinates whose gradient is near zero (measured 8e-4 at the third DCGAN step)."""
    fast, fast_ledger, fast_weights = _train_recording(name, "fast")
    ref, ref_ledger, ref_weights = _train_recording(name, "opacus")
    assert len(fast) == len(ref) > 0
    for step_fast, step_ref in zip(fast, ref):
        assert len(step_fast) == len(step_ref)
        for a, b in zip(step_fast, step_ref):
            assert close(a, b), (a - b).abs().max()
    for key in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "epsilon_spent", "delta", "n_units"):
        assert fast_ledger[key] == ref_ledger[key], key
    assert (fast_ledger["clipping"], ref_ledger["clipping"]) == ("fast", "opacus")
    for key in ref_weights:
        torch.testing.assert_close(fast_weights[key], ref_weights[key], rtol=1e-4, atol=1e-5)


def test_the_comparison_can_fail():
    """A clip norm twice as large changes the update far beyond the tolerance used above."""
    fast, _, _ = _train_recording("dcgan", "fast", steps=1, max_grad_norm=0.05)
    other, _, _ = _train_recording("dcgan", "fast", steps=1, max_grad_norm=0.1)
    assert not all(close(a, b) for a, b in zip(fast[0], other[0]))


class ZeroLoss(DiscriminatorOnly):
    """A one-player model whose per-example loss is 0 * D(x): the clipped sum is exactly zero."""

    def loss(self, player, nets, real, batch_size):
        return nets["discriminator"](real).sum(1) * 0.0


@pytest.mark.parametrize("clipping", ["fast", "opacus"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
def test_noise_std_is_sigma_c_over_expected_batch(clipping, scale):
    """Zero loss: the update is the noise alone, with std sigma * C / E[B]. Exact enough to fail when the
    noise is halved or doubled: the mutated multipliers (scale 0.5, 2) must be rejected."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 400, bias=False))
    data = TrainingData(images=torch.rand(80, 1, 8, 8), patient_ids=np.repeat([f"P{i}" for i in range(40)], 2))
    model = ZeroLoss(net)
    mode = DPSGD(target_epsilon=2.0, delta=1e-4, seed=11, max_grad_norm=0.7, clipping=clipping)
    sgd = torch.optim.SGD(net.parameters(), lr=1.0)
    nets, opts, loaders = mode.attach(model, {"discriminator": net}, {"discriminator": sgd}, data, 8, 50)
    player, opt = model.players()[0], opts["discriminator"]
    (opt.dp_optimizer if clipping == "opacus" else opt).noise_multiplier = mode.noise_multiplier * scale  # the mutation
    draws = []
    for _ in range(4):
        batch = next(iter(loaders["discriminator"]))
        opt.zero_grad(set_to_none=True)
        mode.backward(player, nets["discriminator"], mode.player_loss(model, player, nets, batch, 8), None)
        opt.step()
        draws.append(net[1].weight.grad.detach().flatten().clone())
    noise = torch.cat(draws)
    expected = mode.noise_multiplier * 0.7 / 8  # E[B] = N q = 40 / 5
    n = noise.numel()  # 102,400 draws: the sample std is within 4 / sqrt(2n) = 0.9 % of the truth
    assert noise.mean().abs() < 4 * expected / math.sqrt(n)
    assert (noise.std().item() == pytest.approx(expected, rel=4 / math.sqrt(2 * n))) == (scale == 1.0)


def test_calibration_meets_the_target_within_tolerance():
    for target, q, steps in [(1.0, 0.1, 500), (10.0, 0.25, 2000), (4.0, 0.02, 3000)]:
        sigma = calibrate_noise_multiplier(target, 1e-5, q, steps)
        eps = dpsgd_epsilon([(sigma, q, steps)], 1e-5)
        assert target - 0.01 <= eps <= target
        assert dpsgd_epsilon([(sigma * 0.99, q, steps)], 1e-5) > eps  # less noise, more epsilon: monotone


@pytest.mark.parametrize(
    "sigma, q, steps, delta", [(2.64, 128 / 2800, 200, 1e-5), (1.2, 128 / 2800, 200, 1e-4), (2.0, 0.25, 30, 1e-3)]
)
def test_replace_one_epsilon_lies_between_add_remove_and_its_group_of_two(sigma, q, steps, delta):
    """A cross-check of the replace-one PLD bound against Opacus' PRV accountant (add/remove), an independent
    implementation: replacing a patient is removing one and adding one, so
    eps_add/remove(delta) <= eps_replace(delta) <= 2 eps_add/remove(delta / (1 + e^eps_add/remove))
    (group privacy at size 2, Dwork & Roth 2014 Thm 2.2)."""
    from opacus.accountants import PRVAccountant

    def prv(delta):
        accountant = PRVAccountant()
        accountant.history = [(sigma, q, steps)]
        return accountant.get_epsilon(delta=delta)

    replace = dpsgd_epsilon([(sigma, q, steps)], delta)
    add_remove = prv(delta)
    assert add_remove < replace

    def within(log_d: float) -> bool:  # the group-of-two delta d (1 + e^eps(d)) stays within delta
        return math.exp(log_d) * (1 + math.exp(prv(math.exp(log_d)))) <= delta

    lo, hi = math.log(delta) - 12, math.log(delta)  # the largest such inner delta, by bisection
    assert within(lo)
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if within(mid) else (lo, mid)
    assert replace <= 2 * prv(math.exp(lo))


def test_log_epsilon_is_an_upper_bound_and_exact_at_the_end():
    from dpmedgen.privacy.dpsgd import LOG_ANCHORS

    torch.manual_seed(0)
    model = BUILD["dcgan"]()
    mode = DPSGD(target_epsilon=3.0, delta=1e-3, seed=0)
    rows = train_model(
        model, _data(1), mode, TrainConfig(steps=40, batch_size=8, device="cpu", checkpoint_every=0), progress=False
    )
    logged = [(r["step"], r["epsilon_spent"]) for r in rows if math.isfinite(r["epsilon_spent"])]
    assert len(logged) > len(LOG_ANCHORS)
    for step, eps in logged:
        assert eps >= dpsgd_epsilon([(mode.noise_multiplier, mode.sample_rate, step)], 1e-3) - 1e-12
    assert logged[-1][1] == mode.ledger()["epsilon_spent"]
    assert len(mode._epsilon_cache) <= len(LOG_ANCHORS) + 1  # the accountant is queried at the anchors only
    assert mode.accounting_seconds > 0


def test_discriminator_step_does_not_couple_patients_through_the_generated_batch():
    """The generated half has a fixed batch (train.batch_size), so the generator's BatchNorm statistics and
    every other patient's clipped gradient are the same whether or not one more patient was sampled."""
    from dpmedgen.models.base import Player

    torch.manual_seed(0)
    model = BUILD["dcgan"]()
    data = _data(1)
    mode = DPSGD(target_epsilon=4.0, delta=1e-3, seed=5, max_grad_norm=0.05)
    nets = model.networks()
    opts = {p.name: torch.optim.Adam(nets[p.name].parameters()) for p in model.players()}
    nets, opts, _ = mode.attach(model, nets, opts, data, 8, 10)
    player = Player("discriminator", "discriminator", True)

    def step(real):
        torch.manual_seed(7)  # the same latents for the generated half
        mode.public_loss(model, player, nets, 8)
        public = {p: g.clone() for p, g in mode._public.pop("discriminator").items()}
        losses = mode.player_loss(model, player, nets, real, 8)
        clipper = mode._clippers["discriminator"]
        norms = clipper.clipped_sum(losses)
        return public, norms

    real = data.images[:6]
    public_a, norms_a = step(real[:5])
    public_b, norms_b = step(real)  # one more patient sampled
    assert all(torch.equal(public_a[p], public_b[p]) for p in public_a)
    torch.testing.assert_close(norms_b[:5], norms_a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("max_grad_norm", [0.05, 1e6])
def test_public_gradient_is_capped_at_the_clipping_norm(max_grad_norm):
    """The generated half's gradient is the exact gradient of the public loss scaled to norm min(||g||, C):
    with a small C it has norm C (not 2C, not the raw norm), with a huge C it is the raw gradient."""
    from dpmedgen.models.base import Player

    torch.manual_seed(0)
    model = BUILD["dcgan"]()
    data = _data(1)
    mode = DPSGD(target_epsilon=4.0, delta=1e-3, seed=5, max_grad_norm=max_grad_norm)
    nets = model.networks()
    opts = {p.name: torch.optim.Adam(nets[p.name].parameters()) for p in model.players()}
    nets, opts, _ = mode.attach(model, nets, opts, data, 8, 10)
    player = Player("discriminator", "discriminator", True)
    torch.manual_seed(7)
    mode.public_loss(model, player, nets, 8)
    public = mode._public.pop("discriminator")
    torch.manual_seed(7)
    disc = nets["discriminator"]
    params = [p for p in disc.parameters() if p.requires_grad]
    raw = torch.autograd.grad(model.public_loss("discriminator", nets, 8), params)
    raw_norm = float(torch.sqrt(sum((g**2).sum() for g in raw)))
    norm = float(torch.sqrt(sum((g**2).sum() for g in public.values())))
    assert raw_norm > 0.05 * 4  # the small cap binds
    assert norm == pytest.approx(min(raw_norm, max_grad_norm), rel=1e-5)
    for p, g in zip(params, raw):  # a scaled copy of the true gradient (direction kept)
        torch.testing.assert_close(public[p], g * (norm / raw_norm), rtol=1e-5, atol=1e-9)
