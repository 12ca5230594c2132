"""Secret randomness: the known-seed attack works against `deterministic` and fails against the default."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import attach_one, toy_study, train_toy_run

import dpmedgen.privacy.base as privacy_base
from dpmedgen.data.schema import read_image_set, write_image_set
from dpmedgen.data.split import read_splits
from dpmedgen.privacy import DPSGD, TrainingData, read_ledger
from dpmedgen.privacy.randomness import stream_seed
from dpmedgen.runs import RunSpec

TRAIN = {"steps": 4, "batch_size": 4, "device": "cpu"}
RUN = RunSpec("toy", "dcgan", "dpsgd", 1.0, 3)


@pytest.fixture(scope="module")
def hypotheses(tmp_path_factory):
    """Two cohorts that differ in one training patient (replace-one): `in` holds the target patient's images,
    `out` holds another patient's images in their place."""
    root = tmp_path_factory.mktemp("hypotheses")
    study_in = toy_study(root / "in")
    study_out = root / "out"
    study_out.mkdir()
    shutil.copy(study_in / "splits.parquet", study_out / "splits.parquet")
    images = read_image_set(study_in / "images.h5")
    splits = read_splits(study_in / "splits.parquet")
    target = sorted(splits.loc[splits.split == "train", "patient_id"])[0]
    rows = images.patient_id == target
    rng = np.random.default_rng(99)
    for pixels in images.modalities.values():
        pixels[rows] = rng.random(pixels[rows].shape, dtype=np.float32)
    write_image_set(study_out / "images.h5", images)
    return {"in": study_in, "out": study_out}


def _weights(out):
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return [t for sd in state["state_dicts"] for t in sd.values()] if "state_dicts" in state else list(
        state["state_dict"].values())


def _matches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _attack(hypotheses, tmp_path, released) -> dict[str, bool]:
    """The known-seed adversary: retrain both hypotheses with the public seed (deterministic randomness, as
    the config and the paths reveal) and compare with the released weights bit for bit."""
    guesses = {}
    for name, study in hypotheses.items():
        train_toy_run(study, tmp_path / f"adv_{name}", RUN, train=TRAIN, randomness="deterministic")
        guesses[name] = _matches(_weights(tmp_path / f"adv_{name}"), released)
    return guesses


def test_known_seed_attack_succeeds_against_deterministic_and_fails_against_secret(hypotheses, tmp_path):
    # deterministic: the released generator is reproduced exactly under the true hypothesis only (TPR 1, FPR 0)
    train_toy_run(hypotheses["in"], tmp_path / "det", RUN, train=TRAIN, randomness="deterministic")
    assert _attack(hypotheses, tmp_path / "a1", _weights(tmp_path / "det")) == {"in": True, "out": False}
    ledger = read_ledger(tmp_path / "det" / "privacy.json")
    assert ledger["randomness"] == "deterministic" and ledger["dp_release"] is False

    # secret (the default): neither hypothesis reproduces the released weights
    train_toy_run(hypotheses["in"], tmp_path / "sec", RUN, train=TRAIN, randomness="secret")
    assert _attack(hypotheses, tmp_path / "a2", _weights(tmp_path / "sec")) == {"in": False, "out": False}
    ledger = read_ledger(tmp_path / "sec" / "privacy.json")
    assert ledger["randomness"] == "secret" and ledger["dp_release"] is True
    assert ledger["guarantee"] == "formal" and ledger["epsilon_spent"] <= RUN.epsilon


def test_two_runs_differing_only_in_epsilon_share_no_noise_draws():
    """Secret roots are independent across instances (runs, classes, epsilons): their noise, Poisson sampling
    and slice choices differ; deterministic instances of one seed share them (the hazard the default removes)."""
    data = TrainingData(images=torch.zeros(64, 1, 4, 4), patient_ids=np.repeat(np.arange(32), 2).astype(str))

    def streams(mode):
        disc = torch.nn.Linear(16, 1)
        _, _, loader = attach_one(mode, disc, torch.optim.SGD(disc.parameters(), lr=0.1), data, 8, 10)
        noise = torch.normal(0, 1, size=(256,), generator=mode._noise_generator)
        batches = [tuple(sorted(loader.batch_sampler.__iter__().__next__())) for _ in range(5)]
        slices = mode._slice_datasets["discriminator"].rng.integers(0, 2**31, size=16)
        return noise, batches, slices

    a, b = streams(DPSGD(target_epsilon=1.0, delta=1e-3)), streams(DPSGD(target_epsilon=10.0, delta=1e-3))
    assert not torch.equal(a[0], b[0]) and a[1] != b[1] and not np.array_equal(a[2], b[2])
    c, d = (streams(DPSGD(target_epsilon=eps, delta=1e-3, seed=7)) for eps in (1.0, 10.0))
    assert torch.equal(c[0], d[0]) and c[1] == d[1] and np.array_equal(c[2], d[2])


def test_secret_run_resumes_exactly_from_its_private_root(hypotheses, tmp_path, monkeypatch):
    """The root lives in the resume file: a killed secret run that is started again (which would draw a new
    secret) continues with the old one and ends where an uninterrupted run with that root ends; the root is
    in no file that remains."""
    import dpmedgen.train.engine as engine

    secret = 0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321
    run = RunSpec("toy", "dcgan", "input_gaussian", 3.0, 1)
    train = TRAIN | {"steps": 9, "checkpoint_every": 1}
    monkeypatch.setattr(privacy_base, "new_secret", lambda: secret)
    train_toy_run(hypotheses["in"], tmp_path / "a", run, train=train, randomness="secret")

    original, calls = engine._update, {"n": 0}

    def dying_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 1:
            raise _Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_update", dying_update)
    with pytest.raises(_Killed):
        train_toy_run(hypotheses["in"], tmp_path / "b", run, train=train, randomness="secret")
    assert (tmp_path / "b" / "resume.pt").exists()
    monkeypatch.setattr(engine, "_update", original)
    monkeypatch.setattr(privacy_base, "new_secret", lambda: secret + 1)  # what a restarted job would draw
    train_toy_run(hypotheses["in"], tmp_path / "b", run, train=train, randomness="secret")
    assert _matches(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not (tmp_path / "b" / "resume.pt").exists()

    # the secret and the seeds derived from it are written nowhere
    needles = {str(secret), format(secret, "x"), format(secret, "X")}
    needles |= {str(stream_seed(secret, s)) for s in ("input_noise", "shuffle")}
    for path in (tmp_path / "b").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n.encode() in blob for n in needles), path
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert not _contains_int(checkpoint, {secret} | {int(n) for n in needles if n.isdigit()})


class _Killed(Exception):
    """Stands for the job being killed."""


def _contains_int(obj, values) -> bool:
    if isinstance(obj, dict):
        return any(_contains_int(v, values) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_int(v, values) for v in obj)
    return isinstance(obj, int) and obj in values


def test_stream_seeds_are_distinct_and_in_range():
    root = 2**127 + 12345
    seeds = {stream_seed(root, s, i) for s in ("noise", "sampling", "slices") for i in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(root, "noise") != stream_seed(root + 1, "noise")
    with pytest.raises(ValueError, match="non-negative"):
        stream_seed(-1, "noise")
    assert math.isfinite(torch.Generator().manual_seed(max(seeds)).initial_seed())
