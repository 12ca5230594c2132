"""Privacy modes: noise calibration, accounting, sampling unit and ledgers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dpmedgen.models import MODELS
from dpmedgen.privacy import PRIVACY_MODES, LedgerError, TrainingData, read_ledger, write_ledger
from dpmedgen.privacy.dpsgd import DPSGD
from dpmedgen.train import TrainConfig, train_model
from conftest import attach_one, paired_loss

warnings.filterwarnings("ignore", message="Secure RNG turned off")


def _indexed_data(n_patients: int, per_patient: list[int] | int, size: int = 8) -> TrainingData:
    """Image i is filled with the value i, so a batch reveals which images (and patients) it holds."""
    counts = [per_patient] * n_patients if isinstance(per_patient, int) else per_patient
    pids = np.concatenate([[f"P{p:03d}"] * c for p, c in enumerate(counts)])
    n = len(pids)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    return TrainingData(images=images, patient_ids=pids)


def _pld_epsilon(ledger: dict) -> float:
    from dp_accounting import NeighboringRelation, dp_event, pld

    accountant = pld.PLDAccountant(  # replace-one, the study's adjacency, on a finer grid than the ledger's
        neighboring_relation=NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4)
    event = dp_event.PoissonSampledDpEvent(ledger["sample_rate"], dp_event.GaussianDpEvent(ledger["noise_multiplier"]))
    accountant.compose(dp_event.SelfComposedDpEvent(event, ledger["steps"]))
    return accountant.get_epsilon(ledger["delta"])


def test_patient_unit_samples_one_slice_per_sampled_patient():
    counts = [1, 3, 5, 7, 2, 4, 6, 8, 3, 5]
    data = _indexed_data(10, counts)
    mode = DPSGD(target_epsilon=5.0, delta=1e-3, seed=3, unit="patient")
    disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    _, _, loader = attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=0.1), data, batch_size=4, steps=200)
    assert mode.n_units == 10
    assert loader.sample_rate == pytest.approx(1 / math.ceil(10 / 4))
    patient_of = data.patient_index
    sizes, seen = [], set()
    for _ in range(100):
        for batch in loader:
            idx = batch[:, 0, 0, 0].long().numpy()
            patients = patient_of[idx]
            assert len(set(patients)) == len(patients), "a patient contributed two slices to one step"
            sizes.append(len(idx))
            seen.update(idx.tolist())
    # Poisson sampling: batch sizes vary around N * q, and every slice of every patient is eventually drawn.
    assert len(set(sizes)) > 3
    assert np.mean(sizes) == pytest.approx(10 * loader.sample_rate, rel=0.15)
    assert seen == set(range(data.n_images))


def test_image_unit_counts_images():
    data = _indexed_data(5, 4)
    mode = DPSGD(target_epsilon=5.0, delta=1e-3, unit="image")
    disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=0.1), data, batch_size=4, steps=10)
    assert mode.n_units == 20


def test_delta_must_be_below_one_over_n():
    data = _indexed_data(10, 2)
    mode = DPSGD(target_epsilon=1.0, delta=0.2, unit="patient")
    disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    with pytest.raises(ValueError, match="delta=0.2 is not below 1/N = 1/10"):
        attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=0.1), data, batch_size=4, steps=10)


@pytest.mark.parametrize("bad", [{"target_epsilon": math.inf}, {"target_epsilon": 0.0}, {"unit": "slice"}])
def test_dpsgd_rejects_bad_parameters(bad):
    params = {"target_epsilon": 1.0, "delta": 1e-5} | bad
    with pytest.raises(ValueError):
        DPSGD(**params)


def test_dpsgd_noise_is_calibrated():
    """With zero per-sample gradients the update is pure noise: std must be sigma * C / expected batch size."""
    data = _indexed_data(40, 2)
    mode = DPSGD(target_epsilon=2.0, delta=1e-4, seed=11, max_grad_norm=0.7, unit="patient")
    disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 500, bias=False))
    module, optimizer, loader = attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=1.0), data, batch_size=8, steps=50)
    grads = []
    for _ in range(4):
        batch = next(iter(loader))
        optimizer.zero_grad(set_to_none=True)
        (module(batch).sum() * 0.0).backward()
        optimizer.step()
        grads.append(next(disc.parameters()).grad.detach().flatten().clone())
    noise = torch.cat(grads)
    expected = mode.noise_multiplier * 0.7 / optimizer.expected_batch_size
    n = noise.numel()  # 128,000 draws: the sample std is within ~0.6 % of the truth (4 standard errors)
    assert noise.mean().abs() < 4 * expected / math.sqrt(n)
    assert noise.std().item() == pytest.approx(expected, rel=4 / math.sqrt(2 * n))


@pytest.fixture(scope="module")
def trained_dpsgd():
    torch.manual_seed(0)
    data = TrainingData(images=torch.rand(60, 1, 32, 32) * 2 - 1, patient_ids=np.repeat([f"P{i}" for i in range(20)], 3))
    model = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=16)
    mode = PRIVACY_MODES.get("dpsgd")(target_epsilon=3.0, delta=1e-3, seed=0)
    rows = train_model(model, data, mode, TrainConfig(steps=12, batch_size=6), progress=False)
    return mode, rows


def test_dpsgd_spends_at_most_target_and_recomputes_with_pld(trained_dpsgd):
    mode, rows = trained_dpsgd
    ledger = mode.ledger()
    assert ledger["steps"] == 12
    assert ledger["unit"] == "patient" and ledger["guarantee"] == "formal"
    assert 0 < ledger["epsilon_spent"] <= 3.0
    assert ledger["epsilon_spent"] > 0.9 * 3.0, "sigma should be the smallest that meets the target"
    assert rows[-1]["epsilon_spent"] == pytest.approx(ledger["epsilon_spent"])
    assert ledger["epsilon_per_patient"] == ledger["epsilon_spent"]
    # replace-one: changing one image replaces one patient's record, so the per-image bound is the same
    assert ledger["epsilon_per_image"] == ledger["epsilon_spent"] and ledger["adjacency"] == "replace_one"
    # dp-accounting's PLD (replace-one) on a 10x finer grid, from the ledger's own parameters: the ledger's
    # pessimistic estimate is an upper bound within its discretisation
    assert ledger["epsilon_spent"] >= _pld_epsilon(ledger) - 1e-9
    assert _pld_epsilon(ledger) == pytest.approx(ledger["epsilon_spent"], rel=1e-3)


def test_ledger_roundtrip_and_validation(tmp_path, trained_dpsgd):
    mode, _ = trained_dpsgd
    path = tmp_path / "privacy.json"
    write_ledger(path, mode.ledger())
    assert read_ledger(path)["noise_multiplier"] == mode.noise_multiplier
    incomplete = {k: v for k, v in mode.ledger().items() if k != "sample_rate"}
    with pytest.raises(LedgerError, match="sample_rate"):
        write_ledger(tmp_path / "bad.json", incomplete)
    assert not (tmp_path / "bad.json").exists()


def test_non_private_ledger_states_no_guarantee(tmp_path):
    ledger = PRIVACY_MODES.get("none")(target_epsilon=math.inf, delta=0.0).ledger()
    assert ledger["guarantee"] == "none" and math.isinf(ledger["epsilon_spent"])
    write_ledger(tmp_path / "p.json", ledger)
    assert "Infinity" in (tmp_path / "p.json").read_text()
    with pytest.raises(LedgerError, match="Infinity"):
        write_ledger(tmp_path / "q.json", ledger | {"epsilon_spent": 3.0})


def test_dpsgd_per_sample_gradients_pair_real_and_fake_exactly():
    """Opacus' per-sample gradient of the D loss = the gradient of (real_i, fake_i)'s loss alone."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    disc = MODELS.get("dcgan")(image_size=32, width=8).discriminator
    real, fake = torch.randn(5, 1, 32, 32), torch.randn(5, 1, 32, 32)
    wrapped = GradSampleModule(disc, loss_reduction="sum")
    paired_loss(wrapped, real, fake).backward()
    per_sample = [p.grad_sample.clone() for p in disc.parameters()]
    wrapped._close()  # remove Opacus' hooks before the reference computation
    for i in range(5):
        expected = torch.autograd.grad(paired_loss(disc, real[i : i + 1], fake[i : i + 1]), list(disc.parameters()))
        for gs, g in zip(per_sample, expected):
            assert torch.allclose(gs[i], g, rtol=1e-4, atol=1e-6), "per-sample gradient mismatch"


def test_group_privacy_conversion():
    from dpmedgen.privacy.mechanisms import group_privacy

    assert group_privacy(1.0, 1e-6, 1) == (1.0, 1e-6)
    eps, delta = group_privacy(0.5, 1e-8, 3)
    assert eps == pytest.approx(1.5) and delta == pytest.approx(3 * math.exp(1.0) * 1e-8)
    assert group_privacy(10.0, 1e-5, 12) == (math.inf, 1.0)  # vacuous: reported as such
    assert group_privacy(2.0, 0.0, 4) == (8.0, 0.0)  # pure DP: exactly k * epsilon


def test_image_unit_ledger_reports_patient_level_conversion():
    data = _indexed_data(30, 3)
    mode = DPSGD(target_epsilon=0.5, delta=1e-6, unit="image")
    disc = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    module, optimizer, loader = attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=0.1), data, batch_size=10, steps=3)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        module(next(iter(loader))).sum().backward()
        optimizer.step()
    ledger = mode.ledger()
    assert ledger["unit"] == "image" and ledger["epsilon_per_image"] == ledger["epsilon_spent"] <= 0.5
    assert ledger["epsilon_per_patient"] == pytest.approx(3 * ledger["epsilon_spent"])
    assert ledger["delta_per_patient"] == pytest.approx(3 * math.exp(2 * ledger["epsilon_spent"]) * 1e-6)
