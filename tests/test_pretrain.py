"""Public pretraining: weights trained on a public set are where every run (each class generator) starts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import toy_study, train_toy_run

from dpmedgen.config import ConfigError, _check_pretraining, runs, studied_datasets
from dpmedgen.privacy import read_ledger
from dpmedgen.runs import RunSpec
from dpmedgen.io import load_torch
from dpmedgen.train.pretrain import initialisation_record, load_pretrained, pretrain, weights_sha256

PARAMS = {"width": 8, "latent_dim": 8}
FROZEN = {"steps": 2, "batch_size": 4, "device": "cpu", "lr": {"generator": 1e-30, "discriminator": 1e-30}}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A DCGAN pretrained for 3 steps on a public toy set (another draw than the studied one)."""
    root = tmp_path_factory.mktemp("public")
    study = toy_study(tmp_path_factory.mktemp("study"))
    public = toy_study(root)
    out = root / "dcgan.pt"
    record = pretrain("dcgan", model_params=PARAMS, images_h5=public / "images.h5", modality="mri",
                      public_dataset="toy_public", steps=3, train={"batch_size": 4, "device": "cpu"}, seed=0,
                      out=out, progress=False)
    return study, out, record


def _weights(path, key="state_dict"):
    state = torch.load(path, weights_only=True)
    return state[key] if key in state else state["state_dicts"]


def test_pretraining_is_reproducible(pretrained, tmp_path):
    """The same settings pretrain bit-identical weights (public data and seed: no secret randomness), so a
    cluster job and a local job start every run from the same weights."""
    _, out, _ = pretrained
    again = tmp_path / "again.pt"
    pretrain("dcgan", model_params=PARAMS, images_h5=out.parent / "images.h5", modality="mri",
             public_dataset="toy_public", steps=3, train={"batch_size": 4, "device": "cpu"}, seed=0, out=again,
             progress=False)
    first, second = _weights(out), _weights(again)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the ledgers' digest is that of the weights, not of the file (which records the pretraining's timing)
    assert initialisation_record(load_torch(out)) == initialisation_record(load_torch(again))
    assert initialisation_record(load_torch(out))["initialisation_sha256"] == weights_sha256(first)
    second[next(iter(second))].view(-1)[0] += 1e-6
    assert weights_sha256(second) != weights_sha256(first)
    nested = {"generator": {"w": torch.zeros(3)}, "step": 4}  # some models keep nested state (SNGAN's u, v)
    assert weights_sha256(nested) != weights_sha256({"generator": {"w": torch.zeros(3) + 1e-9}, "step": 4})


def test_pretraining_reads_every_public_image_and_records_it(pretrained):
    _, out, record = pretrained
    assert record == {"dataset": "toy_public", "model": "dcgan", "steps": 3, "seed": 0, "n_images": 36, "n_patients": 12}
    state = load_pretrained(out, "dcgan", PARAMS, 32)
    assert state["pretraining"] == record
    with pytest.raises(ValueError, match="pretrain again"):
        load_pretrained(out, "dcgan", {"width": 16, "latent_dim": 8}, 32)


@pytest.mark.parametrize("class_generators", [False, True])
def test_every_run_starts_from_the_pretrained_weights(pretrained, tmp_path, class_generators):
    """With a learning rate of 1e-30 training cannot move the weights: a run from the pretrained weights ends
    on them (every class generator), one from a random initialisation does not."""
    study, out, _ = pretrained
    run = RunSpec("toy", "dcgan", "dpsgd", 2.0, 0)
    train = FROZEN | {"class_generators": class_generators}
    ledger = train_toy_run(study, tmp_path / "init", run, model_params=PARAMS, train=train, init_checkpoint=out)
    train_toy_run(study, tmp_path / "random", run, model_params=PARAMS, train=train)
    pre = _weights(out)
    for name, final in [("init", _weights(tmp_path / "init" / "checkpoint.pt")),
                        ("random", _weights(tmp_path / "random" / "checkpoint.pt"))]:
        for state_dict in final if class_generators else [final]:
            weight = "generator.net.0.weight"
            assert torch.allclose(state_dict[weight], pre[weight]) == (name == "init"), name
    assert "toy_public" in ledger["initialisation"] and "no privacy cost" in ledger["initialisation"]
    assert read_ledger(tmp_path / "random" / "privacy.json")["initialisation"] == "random (public seed)"
    assert ledger["epsilon_spent"] <= 2.0


def test_output_perturbation_keeps_the_initialisation_of_the_run_it_reuses(pretrained, tmp_path):
    study, out, _ = pretrained
    ref = tmp_path / "none"
    none = train_toy_run(study, ref, RunSpec("toy", "dcgan", "none", math.inf, 0), model_params=PARAMS,
                         train=FROZEN, init_checkpoint=out)
    ledger = train_toy_run(
        study, tmp_path / "out", RunSpec("toy", "dcgan", "output_laplace", 1.0, 0), model_params=PARAMS, train=FROZEN,
        reference_checkpoint=ref / "checkpoint.pt", reference_log=ref / "train_log.csv",
    )
    assert ledger["initialisation"] == none["initialisation"] and "toy_public" in ledger["initialisation"]


def _config(**public):
    return {
        "datasets": {
            "cohort": {"modality": "mri", "source": "brain_phantom", "pretrain_on": "open"},
            "open": {"modality": "mri", "source": "brain_phantom"} | public,
        },
        "models": {"dcgan": {}},
        "privacy": {"modes": ["none"], "epsilons": [1]},
        "seeds": [0],
    }


def test_public_datasets_have_no_runs_and_pretrain_on_must_name_one():
    config = _config(public=True)
    _check_pretraining(config)
    assert studied_datasets(config) == ["cohort"] and {r.dataset for r in runs(config)} == {"cohort"}
    with pytest.raises(ConfigError, match=r"config key datasets.cohort.pretrain_on: 'open' is not a dataset with `public: true`"):
        _check_pretraining(_config())
    with pytest.raises(ConfigError, match="same modality"):
        _check_pretraining(_config(public=True, modality="pet"))
    with pytest.raises(ConfigError, match="config key datasets: every dataset"):
        _check_pretraining({"datasets": {"open": {"modality": "mri", "public": True}}})


def test_pretrain_settings_take_the_model_overrides():
    from dpmedgen.config import model_params, pretrain_settings

    config = {"pretrain": {"steps": 800}, "train": {"steps": 200, "batch_size": 256, "lr": {"generator": 1e-3}},
              "models": {"ddpm": {"sampling_steps": 5, "pretrain": {"steps": 400}, "train": {"batch_size": 64}}, "dcgan": {}}}
    assert pretrain_settings(config, "ddpm") == {"steps": 400, "seed": 0, "train": {"batch_size": 64, "lr": {"generator": 1e-3}}}
    # the run's own step count is not among them: changing train.steps does not pretrain again
    assert pretrain_settings(config, "dcgan") == {"steps": 800, "seed": 0, "train": {"batch_size": 256, "lr": {"generator": 1e-3}}}
    assert model_params(config, "ddpm") == {"sampling_steps": 5}


def test_a_model_s_pretraining_learning_rate_overrides_its_training_rate_for_pretraining_only():
    from dpmedgen.config import pretrain_settings, train_settings

    config = {"pretrain": {"steps": 800}, "train": {"steps": 200, "batch_size": 32, "lr": {"generator": 1e-3, "denoiser": 1e-3}},
              "models": {"ddpm": {"train": {"lr": {"denoiser": 2e-4}}, "pretrain": {"steps": 400, "lr": {"denoiser": 1e-3}}},
                         "dcgan": {}}}
    assert pretrain_settings(config, "ddpm")["train"]["lr"] == {"generator": 1e-3, "denoiser": 1e-3}
    assert pretrain_settings(config, "ddpm")["steps"] == 400
    assert train_settings(config, "ddpm")["lr"] == {"generator": 1e-3, "denoiser": 2e-4}  # fine-tuning keeps its own
    del config["models"]["ddpm"]["pretrain"]["lr"]
    assert pretrain_settings(config, "ddpm")["train"]["lr"] == {"generator": 1e-3, "denoiser": 2e-4}


def test_a_model_s_dpsgd_clipping_norm_overrides_the_study_s_for_its_dp_sgd_runs_only():
    from dpmedgen.config import model_params, privacy_params

    config = {"privacy": {"dpsgd": {"max_grad_norm": 1.0, "unit": "patient"}, "functional": {"unit": "patient"}},
              "models": {"sngan": {"width": 16, "dpsgd": {"max_grad_norm": 10.0}}, "ddpm": {}}}
    assert privacy_params(config, "dpsgd", "sngan") == {"max_grad_norm": 10.0, "unit": "patient"}
    assert privacy_params(config, "dpsgd", "ddpm") == {"max_grad_norm": 1.0, "unit": "patient"}
    assert privacy_params(config, "dpsgd") == {"max_grad_norm": 1.0, "unit": "patient"}
    assert privacy_params(config, "functional", "sngan") == {"unit": "patient"}
    assert model_params(config, "sngan") == {"width": 16}
