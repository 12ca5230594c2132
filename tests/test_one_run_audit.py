"""One-run auditing (Steinke, Nasr & Jagielski 2023): the bound, and its power against a broken DP-SGD run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom

import dpmedgen.privacy.dpsgd as dpsgd
from dpmedgen.models import MODELS
from dpmedgen.privacy import TrainingData
from dpmedgen.privacy.audit import AuditedDPSGD, audit_scores, epsilon_lower_bound, p_value
from dpmedgen.train import TrainConfig, train_model


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize("r", [10, 100, 400])
def test_all_correct_guesses_bound_in_closed_form(r):
    """v = r correct guesses at delta = 0: P[Binomial(r, p) >= r] = p^r = 0.05, so eps = logit(0.05^(1/r))."""
    assert epsilon_lower_bound(m=1000, r=r, v=r, delta=0.0) == pytest.approx(_logit(0.05 ** (1 / r)), abs=1e-9)


@pytest.mark.parametrize("r, v", [(100, 90), (200, 150), (400, 260), (50, 26)])
def test_bound_at_delta_zero_inverts_the_binomial_tail(r, v):
    """An independent inversion (brentq on scipy's binomial tail) gives the same epsilon."""
    def excess(eps):
        return binom.sf(v - 1, r, 1 / (1 + math.exp(-eps))) - 0.05

    expected = brentq(excess, 1e-9, 50) if excess(0.0) < 0 else 0.0
    assert epsilon_lower_bound(1000, r, v, 0.0) == pytest.approx(expected, abs=1e-6)


def test_delta_weakens_the_bound_and_chance_certifies_nothing():
    assert epsilon_lower_bound(1000, 200, 190, 1e-5) < epsilon_lower_bound(1000, 200, 190, 0.0)
    assert p_value(1000, 200, 190, 2.0, 1e-5) > p_value(1000, 200, 190, 2.0, 0.0)
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0  # half right: no evidence
    with pytest.raises(ValueError):
        p_value(10, 20, 5, 1.0, 0.0)


def test_guesses_are_fixed_fractions_at_bonferroni_confidence():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = audit_scores(included.astype(float) + 0.01 * rng.random(1000), included, delta=0.0)
    assert perfect["n_guesses"] == 400 and perfect["n_correct"] == 400  # the largest fraction wins when all correct
    assert perfect["epsilon_lower"] == pytest.approx(_logit((0.05 / 3) ** (1 / 400)), abs=1e-9)
    blind = audit_scores(rng.random(1000), included, delta=1e-5)
    assert blind["epsilon_lower"] < 0.5


def _audit(monkeypatch, noise_factor: float, epsilon: float = 1.0) -> dict:
    """A DCGAN discriminator (width 16) trained by the fast DP-SGD path with 1,000 gradient canaries on 256
    random patients (q = 1/8, 150 steps; sigma 11.4 at epsilon 1); `noise_factor` < 1 breaks the run: the noise is scaled down after the
    calibration, so the ledger still claims the calibrated epsilon."""
    original = dpsgd.NoisyStep.__init__

    def broken(self, optimizer, noise_multiplier, *args, **kwargs):
        original(self, optimizer, noise_multiplier * noise_factor, *args, **kwargs)

    monkeypatch.setattr(dpsgd.NoisyStep, "__init__", broken)
    torch.manual_seed(0)
    model = MODELS.get("dcgan")(image_size=32, latent_dim=8, width=16)  # d = 42k: real gradients project weakly
    images = torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    data = TrainingData(images=images, patient_ids=np.arange(256).astype(str))
    mode = AuditedDPSGD(n_canaries=1000, target_epsilon=epsilon, delta=1e-5, seed=3, max_grad_norm=1.0)
    train_model(model, data, mode, TrainConfig(steps=150, batch_size=32, device="cpu", checkpoint_every=0),
                progress=False)
    return mode.audit()


def test_the_audit_passes_a_correct_run_and_flags_a_run_with_a_tenth_of_the_noise(monkeypatch):
    correct = _audit(monkeypatch, 1.0)
    assert correct["n_canaries"] == 1000 and correct["epsilon_claimed"] <= 1.0
    assert correct["epsilon_lower"] <= correct["epsilon_claimed"]
    broken = _audit(monkeypatch, 0.1)
    assert broken["epsilon_claimed"] == pytest.approx(correct["epsilon_claimed"])  # the ledger does not know
    assert broken["epsilon_lower"] > broken["epsilon_claimed"], broken
