"""The release of a private run carries no statistic of real training data outside the privacy ledger."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import toy_study, train_toy_run

from dpmedgen.plots.training import training_curves_figure
from dpmedgen.runs import RunSpec

TINY = {
    "dcgan": {"width": 8, "latent_dim": 8},
    "ddcgan": {"width": 4},
    "ddpm": {"block_out_channels": [8, 16], "attention": False, "norm_num_groups": 4, "sampling_steps": 3},
}
# what a released training log may hold beside the losses of unprotected networks and protected networks'
# losses on generated data
PUBLIC_COLUMNS = {"epoch", "step", "epsilon_spent", "seconds_per_step", "class"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return toy_study(tmp_path_factory.mktemp("study"))


def _released_columns(columns, protected: set[str]) -> None:
    for column in columns:
        if column in PUBLIC_COLUMNS:
            continue
        assert column.startswith("loss_"), column  # no real_batch, no other count
        network = column.removeprefix("loss_").removesuffix("_generated")
        if network in protected:
            assert column.endswith("_generated"), column  # a protected network's loss on real data


@pytest.mark.parametrize(
    "model, protected, class_generators",
    [("dcgan", {"discriminator"}, True), ("ddcgan", {"generator", "discriminator_mri", "discriminator_pet"}, False),
     ("ddpm", {"denoiser"}, False)],
)
def test_dpsgd_run_releases_no_real_batch_loss_or_count(study, tmp_path, model, protected, class_generators):
    run = RunSpec("toy", model, "dpsgd", 3.0, 0)
    train = {"steps": 4, "batch_size": 4, "device": "cpu", "class_generators": class_generators}
    train_toy_run(study, tmp_path, run, train=train, model_params=TINY[model])
    log = pd.read_csv(tmp_path / "train_log.csv")
    _released_columns(log.columns, protected)
    if model == "dcgan":  # the GAN discriminator's generated half is released, and the generator's loss
        assert {"loss_discriminator_generated", "loss_generator"} <= set(log.columns)
        assert log.loss_discriminator_generated.notna().all()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # the released weights' file
    finals = state["final_log"].values() if class_generators else [state["final_log"]]
    for final in finals:
        _released_columns(final, protected)
    training_curves_figure(tmp_path / "train_log.csv", tmp_path / "privacy.json", [tmp_path / "curves.png"])
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_unprotected_runs_keep_their_losses_and_batch_sizes(study, tmp_path):
    """Input perturbation trains on released (noised) images: its losses and batch sizes are post-processing."""
    run = RunSpec("toy", "dcgan", "input_gaussian", 3.0, 0)
    train_toy_run(study, tmp_path, run, train={"steps": 4, "batch_size": 4, "device": "cpu"}, model_params=TINY["dcgan"])
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert {"loss_discriminator", "loss_generator", "real_batch"} <= set(log.columns)
    assert math.isclose(log.real_batch.iloc[0], 4.0)
