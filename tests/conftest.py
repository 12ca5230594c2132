"""Shared test helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dpmedgen.models.base import GenerativeModel, Player

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SLURM_PROFILE = ["--profile", "slurm", "--profile", str(ROOT / "tests" / "slurm" / "profile")]

#: The end-to-end test files, slowest first: the CI study (and the SLURM test that compares with it), the
#: real-dataset DAG, the interrupted and failing runs.
SLOW_FILES = ("test_workflow.py", "test_real_datasets.py", "test_workflow_recovery.py")


def pytest_collection_modifyitems(items: list) -> None:
    """Slowest files first: pytest-xdist hands out files in collection order (pyproject.toml: `-n 2 --dist
    loadfile --no-loadscope-reorder`), so one worker starts on the CI study at once while the other takes the
    other end-to-end files and then the unit tests, instead of a long file starting last and running alone."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(SLOW_FILES)))  # stable within a file


def run_snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    """The workflow with `args` in `workdir` (the CI config unless `config`), called from the repository root,
    where `--profile slurm` finds ./slurm as a user's call would."""
    cmd = SNAKEMAKE + ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(config or ROOT / "configs" / "ci.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def require_slurm() -> None:
    """Skip (or, with DPMEDGEN_REQUIRE_SLURM set, as CI does, fail) when no SLURM cluster is up."""
    up = shutil.which("sbatch") and subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0
    if not up:
        message = "no SLURM cluster is up: run tests/slurm/start_cluster.sh as root (CI does)"
        if os.environ.get("DPMEDGEN_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)


class DiscriminatorOnly(GenerativeModel):
    """A one-player model around a bare discriminator, to attach a privacy mode to it in isolation."""

    kind = "gan"

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def players(self) -> list[Player]:
        return [Player("discriminator", "discriminator", True)]


def attach_one(mode, disc, optimizer, data, batch_size, steps):
    """`mode.attach` for a single discriminator: returns (network, optimizer, loader or None)."""
    nets, opts, loaders = mode.attach(
        DiscriminatorOnly(disc), {"discriminator": disc}, {"discriminator": optimizer}, data, batch_size, steps
    )
    return nets["discriminator"], opts["discriminator"], loaders.get("discriminator")


def paired_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The GAN discriminator loss summed over pairs: BCE(D(real_i), 1) + BCE(D(fake_i), 0), real pass first."""
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    return bce(disc(real), torch.ones(len(real))) + bce(disc(fake), torch.zeros(len(fake)))


def functional_discriminator_loss(mode, head, fake: torch.Tensor, real=None) -> torch.Tensor:
    """The functional mechanism's discriminator loss on fixed fakes (a stub generator returns them)."""
    model = SimpleNamespace(sample_latent=lambda n, device=None: torch.zeros(n, 1))
    nets = {"discriminator": head, "generator": lambda z: fake[: len(z)]}
    return mode.player_loss(model, Player("discriminator", "discriminator", True), nets, real, len(fake)).sum()


def blobs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random smooth blob images in [0, 1], float32 (n, size, size)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random((n, size, size)), sigma=(0, size / 16, size / 16))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def noisy(x: np.ndarray, sd: float, seed: int = 1) -> np.ndarray:
    """`x` plus Gaussian noise of standard deviation `sd`, clipped to [0, 1], float32."""
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, sd, x.shape), 0.0, 1.0).astype(np.float32)


def toy_study(root: Path, canary_patients: int = 0) -> Path:
    """`images.h5` (12 patients x 3 slices of random 32² MRI and PET, labels alternating) and `splits.parquet`
    (train / val / test = 6 / 3 / 3 patients, `canary_patients` of the train patients carrying the canary)."""
    from dpmedgen.data.canary import choose_canary_patients
    from dpmedgen.data.schema import ImageSet, write_image_set
    from dpmedgen.data.split import split_patients, write_splits

    rng = np.random.default_rng(0)
    n_patients, per = 12, 3
    images = ImageSet(
        modalities={m: rng.random((n_patients * per, 32, 32), dtype=np.float32) for m in ("mri", "pet")},
        patient_id=np.repeat([f"P{i:02d}" for i in range(n_patients)], per),
        slice=np.tile(np.arange(per), n_patients),
        label=np.repeat(np.arange(n_patients) % 2, per),
        dataset="toy",
    )
    write_image_set(root / "images.h5", images)
    splits = split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    if canary_patients:
        splits = choose_canary_patients(splits, canary_patients, seed=0)
    write_splits(splits, root / "splits.parquet")
    return root


def train_toy_run(study: Path, out: Path, run, **overrides):
    """`train_run` of `run` on a `toy_study` (small DCGAN-sized settings) with its artefacts in `out`;
    keyword arguments (e.g. `train`) override any of train_run's."""
    from dpmedgen.train import train_run

    kwargs = dict(
        images_h5=study / "images.h5", splits_parquet=study / "splits.parquet", modality="mri",
        model_params={"width": 8, "latent_dim": 8}, privacy_params={}, delta=1e-3,
        train={"steps": 4, "batch_size": 4, "device": "cpu"},
        checkpoint=out / "checkpoint.pt", ledger=out / "privacy.json", log_csv=out / "train_log.csv", progress=False,
        randomness="deterministic",  # bit-identical reruns; tests of the secret setting pass "secret"
    )
    return train_run(run, **(kwargs | overrides))
