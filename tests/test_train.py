"""Training driver: artefacts, reproducibility and divergence handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import toy_study, train_toy_run
import torch

from dpmedgen.generate import generate_samples
from dpmedgen.privacy import PrivacyMode, TrainingData, read_ledger
from dpmedgen.models import MODELS
from dpmedgen.runs import RunSpec
from dpmedgen.train import TrainConfig, TrainingDiverged, load_model, train_model

TRAIN = {"steps": 4, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return toy_study(tmp_path_factory.mktemp("study"))


def _train(study, out, run, **overrides):
    return train_toy_run(study, out, run, **({"train": TRAIN} | overrides))


@pytest.mark.parametrize("privacy, epsilon", [("none", math.inf), ("dpsgd", 2.0)])
def test_train_run_is_reproducible_and_writes_artefacts(study, tmp_path, privacy, epsilon):
    run = RunSpec("toy", "dcgan", privacy, epsilon, 3)
    torch.manual_seed(1)  # whatever ran before in the process must not matter
    ledger = _train(study, tmp_path / "a", run)
    torch.manual_seed(2)
    np.random.seed(5)
    _train(study, tmp_path / "b", run)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert read_ledger(tmp_path / "a" / "privacy.json") == ledger
    assert ledger["dataset"] == "toy" and ledger["seed"] == 3 and ledger["n_train_patients"] == 6
    if privacy == "dpsgd":
        assert ledger["epsilon_spent"] <= epsilon and ledger["epsilon_target"] == epsilon
    log = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    if privacy == "dpsgd":  # the discriminator is protected: only its loss on generated images is released
        assert log[0] == "epoch,step,loss_discriminator_generated,loss_generator,epsilon_spent,seconds_per_step"
    else:
        assert log[0] == "epoch,step,loss_discriminator,loss_generator,real_batch,epsilon_spent,seconds_per_step"
    assert len(log) == 1 + (2 if privacy == "dpsgd" else 1)  # one row per epoch: 4 steps per epoch, or 1/q = 2 (6 patients, batch 4)

    samples = generate_samples(tmp_path / "a" / "checkpoint.pt", tmp_path / "a" / "samples.h5", n_samples=5, seed=0)
    pixels = samples.modalities["mri"]
    assert pixels.shape == (5, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    model, state = load_model(tmp_path / "a" / "checkpoint.pt")
    assert state["run"] == run.as_dict()


class _ExplodingMode(PrivacyMode):
    """Feeds infinite pixels, which must stop training with a clear error."""

    name = "exploding"

    def release(self, data):
        return TrainingData(data.images * math.inf, data.patient_ids)

    def ledger(self):
        return {}


def test_divergence_stops_with_run_and_step():
    data = TrainingData(images=torch.zeros(8, 1, 32, 32), patient_ids=np.arange(8).astype(str))
    model = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=8)
    with pytest.raises(TrainingDiverged, match="toy/run: non-finite discriminator loss at step 1"):
        train_model(model, data, _ExplodingMode(target_epsilon=math.inf, delta=0), TrainConfig(steps=3, batch_size=4), run_name="toy/run", progress=False)


def _trained_generator(steps: int, ema_decay: float, seed: int = 0) -> tuple[dict, dict]:
    """A tiny DCGAN trained non-privately on fixed images; its (generator, discriminator) state dicts."""
    from dpmedgen.privacy.none import NonPrivate

    images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    data = TrainingData(images=images, patient_ids=np.arange(16).astype(str))
    torch.manual_seed(seed)
    model = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=8)
    cfg = TrainConfig(steps=steps, batch_size=4, ema_decay=ema_decay, seed=seed, lr={"generator": 1e-2, "discriminator": 1e-2})
    train_model(model, data, NonPrivate(target_epsilon=math.inf, delta=0, seed=seed), cfg, progress=False)
    nets = model.networks()
    return ({k: v.clone() for k, v in nets["generator"].state_dict().items()},
            {k: v.clone() for k, v in nets["discriminator"].state_dict().items()})


def test_ema_releases_the_moving_average_of_the_generator_iterates():
    """With ema_decay d the released generator is avg_3 for avg_t = d avg_{t-1} + (1 - d) theta_t, avg_0 =
    theta_0 (floating buffers too: BatchNorm running statistics); training itself is unchanged, so the
    discriminator equals the one of a run without averaging."""
    decay = 0.6
    iterates = [_trained_generator(steps, 0.0) for steps in (1, 2, 3)]
    torch.manual_seed(0)
    theta0 = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=8).networks()["generator"].state_dict()
    generator, discriminator = _trained_generator(3, decay)
    assert _equal(discriminator, iterates[-1][1])
    checked = 0
    for key, value in generator.items():
        if not value.is_floating_point():
            assert torch.equal(value, iterates[-1][0][key])  # e.g. num_batches_tracked: not averaged
            continue
        expected = theta0[key].clone()
        for g, _ in iterates:
            expected = decay * expected + (1 - decay) * g[key]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(value, iterates[-1][0][key]), key  # not the last iterate
        checked += 1
    assert checked >= 4


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema_decay must be in"):
        TrainConfig(ema_decay=1.0)


def test_output_perturbation_reuses_the_non_private_run(study, tmp_path):
    ref = tmp_path / "none"
    _train(study, ref, RunSpec("toy", "dcgan", "none", math.inf, 3))
    out = tmp_path / "out"
    run = RunSpec("toy", "dcgan", "output_laplace", 5.0, 3)
    ledger = _train(study, out, run, reference_checkpoint=ref / "checkpoint.pt", reference_log=ref / "train_log.csv")
    assert ledger["guarantee"] == "none" and ledger["trained_by"]["privacy"] == "none"
    a = torch.load(ref / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    clean = generate_samples(ref / "checkpoint.pt", ref / "s.h5", n_samples=6, seed=3, ledger=ref / "privacy.json")
    noisy = generate_samples(out / "checkpoint.pt", out / "s.h5", n_samples=6, seed=3, ledger=out / "privacy.json")
    assert not np.allclose(clean.modalities["mri"], noisy.modalities["mri"])
    with pytest.raises(ValueError, match="expected"):
        _train(study, tmp_path / "bad", RunSpec("toy", "dcgan", "output_laplace", 5.0, 4),
               reference_checkpoint=ref / "checkpoint.pt", reference_log=ref / "train_log.csv")


def _equal(a, b) -> bool:
    """Exact equality of state-dict entries (tensors, or the extra-state dicts of spectral-norm layers)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


class _Killed(Exception):
    pass


TINY = {
    "dcgan": {"width": 8, "latent_dim": 8},
    "sngan": {"width": 8, "latent_dim": 8},
    "ddcgan": {"width": 4},
    "ddpm": {"block_out_channels": [8, 16], "attention": False, "norm_num_groups": 4, "sampling_steps": 3, "noise_draws": 2},
}


@pytest.mark.parametrize(
    "model, privacy, epsilon",
    [
        ("dcgan", "none", math.inf), ("dcgan", "dpsgd", 3.0), ("dcgan", "functional", 3.0), ("dcgan", "input_gaussian", 3.0),
        ("sngan", "dpsgd", 3.0), ("ddcgan", "dpsgd", 3.0), ("ddpm", "dpsgd", 3.0),
    ],
)
def test_killed_run_resumes_to_identical_weights_and_epsilon(study, tmp_path, monkeypatch, model, privacy, epsilon):
    """Kill training mid-epoch, start it again: it resumes from the last checkpoint and ends exactly where an
    uninterrupted run ends (weights, epsilon, log), and the resume file is gone afterwards."""
    import dpmedgen.train.engine as engine

    run = RunSpec("toy", model, privacy, epsilon, 1)
    train = TRAIN | {"steps": 9, "checkpoint_every": 1, "batch_size": 4, "ema_decay": 0.7}  # averages resume too
    players = len(MODELS.get(model)(image_size=32, **TINY[model]).players())
    ledger_a = _train(study, tmp_path / "a", run, train=train, model_params=TINY[model])

    original = engine._update
    calls = {"n": 0}

    def dying_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == players * 6 + 1:  # dies in step 7, after at least one epoch checkpoint
            raise _Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_update", dying_update)
    with pytest.raises(_Killed):
        _train(study, tmp_path / "b", run, train=train, model_params=TINY[model])
    resume = tmp_path / "b" / "resume.pt"
    assert resume.exists() and torch.load(resume, weights_only=True)["epoch"] >= 1
    monkeypatch.setattr(engine, "_update", original)
    resumed_from = torch.load(resume, weights_only=True)["epoch"]
    ledger_b = _train(study, tmp_path / "b", run, train=train, model_params=TINY[model])

    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert _equal(a[key], b[key]), key
    assert ledger_a["epsilon_spent"] == ledger_b["epsilon_spent"]
    if privacy == "dpsgd":
        private = sum(p.reads_real_data for p in MODELS.get(model)(image_size=32, **TINY[model]).players())
        assert ledger_b["steps"] == 9 * private and ledger_b["epsilon_spent"] <= epsilon
    assert not resume.exists()
    log_a = (tmp_path / "a" / "train_log.csv").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert len(log_a) == len(log_b) and resumed_from < len(log_a) - 1
    strip = lambda line: line.rsplit(",", 1)[0]  # noqa: E731  (seconds_per_step differs)
    assert [strip(x) for x in log_a] == [strip(x) for x in log_b]


def test_stale_resume_file_is_ignored(study, tmp_path, caplog):
    run = RunSpec("toy", "dcgan", "none", math.inf, 1)
    (tmp_path / "a").mkdir()
    torch.save({"format": 1, "fingerprint": "someone-else"}, tmp_path / "a" / "resume.pt")
    _train(study, tmp_path / "a", run)
    _train(study, tmp_path / "b", run)
    assert "ignoring" in caplog.text
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
