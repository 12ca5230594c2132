"""One generator per class: training, the composed privacy ledger, labelled sampling and the LOGAN scorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import toy_study, train_toy_run
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import PLDAccountant

from dpmedgen.generate import generate_samples
from dpmedgen.metrics.membership import discriminator_scorer
from dpmedgen.models.mixture import ClassMixture
from dpmedgen.privacy import LedgerError, compose_parallel, read_ledger
from dpmedgen.runs import RunSpec
from dpmedgen.train import load_model

TRAIN = {"steps": 4, "batch_size": 2, "device": "cpu", "class_generators": True}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return toy_study(tmp_path_factory.mktemp("study"))


def _train(study, out, run, **overrides):
    return train_toy_run(study, out, run, **({"train": TRAIN} | overrides))


def test_dpsgd_class_generators_compose_in_parallel_and_each_epsilon_recomputes(study, tmp_path):
    run = RunSpec("toy", "dcgan", "dpsgd", 2.0, 0)
    ledger = _train(study, tmp_path, run)
    assert ledger["class_generators"] == [0, 1] and set(ledger["class_ledgers"]) == {"0", "1"}
    assert ledger["n_train_patients"] == 6
    per_class = ledger["class_ledgers"]
    for label, lg in per_class.items():
        assert lg["n_train_patients"] == 3 and lg["steps"] == 2  # 3 of the 6 train patients; 4 steps shared by 2 classes
        assert lg["sample_rate"] == 0.5  # batch 2 of 3 patients: Opacus samples each with probability 1/ceil(3/2)
        # dp-accounting's PLD (replace-one) on a finer grid recomputes each class's epsilon from its ledger
        acc = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4)
        event = dp_event.PoissonSampledDpEvent(lg["sample_rate"], dp_event.GaussianDpEvent(lg["noise_multiplier"]))
        acc.compose(event, lg["steps"])
        assert lg["epsilon_spent"] <= 2.0 and acc.get_epsilon(lg["delta"]) == pytest.approx(lg["epsilon_spent"], rel=1e-3)
        assert lg["adjacency"] == "replace_one"
    for key in ("epsilon_spent", "epsilon_per_patient", "epsilon_per_image", "delta"):
        assert ledger[key] == max(lg[key] for lg in per_class.values()), key
    assert ledger["epsilon_spent"] <= 2.0 and ledger["unit"] == "patient" and "parallel" in ledger["composition"]
    assert ledger["adjacency"] == "replace_one_within_class" and "same class" in ledger["adjacency_statement"]
    assert read_ledger(tmp_path / "privacy.json") == ledger


class _Killed(Exception):
    pass


def test_killed_class_generator_run_resumes_to_identical_weights_and_epsilon(study, tmp_path, monkeypatch):
    """Killed while the second class trains: the first class resumes from its finished state, the second
    from its last checkpoint, and the run ends exactly where an uninterrupted one ends."""
    import pandas as pd

    import dpmedgen.train.engine as engine

    run = RunSpec("toy", "dcgan", "dpsgd", 3.0, 1)
    train = TRAIN | {"steps": 10, "checkpoint_every": 1}  # 5 steps per class, 2 per epoch (q = 1/2)
    ledger_a = _train(study, tmp_path / "a", run, train=train)
    original, calls = engine._update, {"n": 0}

    def dying_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * (5 + 3) + 1:  # two players: dies in class 1's step 4, its epoch 1 checkpointed
            raise _Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_update", dying_update)
    with pytest.raises(_Killed):
        _train(study, tmp_path / "b", run, train=train)
    assert {p.name for p in (tmp_path / "b").glob("resume*.pt")} == {"resume_class0.pt", "resume_class1.pt"}
    monkeypatch.setattr(engine, "_update", original)
    ledger_b = _train(study, tmp_path / "b", run, train=train)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dicts"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dicts"]
    for sa, sb in zip(a, b):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ledger_a == ledger_b and not list((tmp_path / "b").glob("resume*.pt"))
    logs = [pd.read_csv(tmp_path / d / "train_log.csv").drop(columns="seconds_per_step") for d in ("a", "b")]
    pd.testing.assert_frame_equal(*logs)


def test_class_generators_sample_balanced_labels_reproducibly(study, tmp_path):
    run = RunSpec("toy", "dcgan", "none", math.inf, 0)
    _train(study, tmp_path, run)
    model, state = load_model(tmp_path / "checkpoint.pt")
    assert isinstance(model, ClassMixture) and state["classes"] == [0, 1]
    a = generate_samples(tmp_path / "checkpoint.pt", tmp_path / "a.h5", n_samples=7, seed=3)
    b = generate_samples(tmp_path / "checkpoint.pt", tmp_path / "b.h5", n_samples=7, seed=3)
    assert np.array_equal(a.modalities["mri"], b.modalities["mri"]) and np.array_equal(a.label, b.label)
    assert sorted(a.label.tolist()) == [0, 0, 0, 0, 1, 1, 1]  # equal shares, the remainder to the lowest label
    # each sample comes from its own class's generator
    for label in (0, 1):
        component = model.component(label)
        assert not torch.equal(component.generator.state_dict()["net.0.weight"],
                               model.component(1 - label).generator.state_dict()["net.0.weight"])
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert log[0].endswith(",class") and {row.rsplit(",", 1)[1] for row in log[1:]} == {"0", "1"}
    assert not list(tmp_path.glob("resume*.pt")) and not list(tmp_path.glob(".*"))  # nothing half-written left


def test_classes_with_identical_data_still_draw_independent_noise(tmp_path):
    """Each class's privacy mode must have its own random stream: one class's release may not reveal the
    noise that protects another. With both classes holding the same images, their models still differ."""
    from dpmedgen.data.schema import ImageSet, write_image_set
    from dpmedgen.data.split import split_patients, write_splits

    rng = np.random.default_rng(0)
    one = rng.random((6 * 2, 32, 32), dtype=np.float32)
    images = ImageSet(
        modalities={"mri": np.concatenate([one, one])},
        patient_id=np.repeat([f"P{i:02d}" for i in range(12)], 2),
        slice=np.tile(np.arange(2), 12), label=np.repeat([0] * 6 + [1] * 6, 2), dataset="twins",
    )
    write_image_set(tmp_path / "images.h5", images)
    write_splits(split_patients(images, {"train": 1.0}, seed=0), tmp_path / "splits.parquet")
    _train(tmp_path, tmp_path / "run", RunSpec("twins", "dcgan", "dpsgd", 2.0, 0))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    first, second = state["state_dicts"]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_output_perturbation_reuses_the_class_mixture(study, tmp_path):
    ref = tmp_path / "none"
    _train(study, ref, RunSpec("toy", "dcgan", "none", math.inf, 0))
    out = tmp_path / "out"
    ledger = _train(study, out, RunSpec("toy", "dcgan", "output_laplace", 1.0, 0),
                    reference_checkpoint=ref / "checkpoint.pt", reference_log=ref / "train_log.csv")
    assert ledger["class_generators"] == [0, 1]
    samples = generate_samples(out / "checkpoint.pt", out / "s.h5", n_samples=4, seed=0, ledger=out / "privacy.json")
    assert sorted(samples.label.tolist()) == [0, 0, 1, 1]


def test_fusion_models_ignore_class_generators(study, tmp_path):
    ledger = _train(study, tmp_path, RunSpec("toy", "ddcgan", "none", math.inf, 0),
                    model_params={"width": 4, "modalities": ["mri", "pet"]})
    assert "class_generators" not in ledger
    assert "classes" not in torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def test_one_class_in_the_train_split_is_a_clear_error(tmp_path):
    from dpmedgen.data.schema import ImageSet, write_image_set
    from dpmedgen.data.split import split_patients, write_splits

    images = ImageSet(
        modalities={"mri": np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)},
        patient_id=np.repeat(["A", "B", "C", "D"], 2), slice=np.tile([0, 1], 4), label=np.zeros(8), dataset="one",
    )
    write_image_set(tmp_path / "images.h5", images)
    write_splits(split_patients(images, {"train": 1.0}, seed=0), tmp_path / "splits.parquet")
    with pytest.raises(ValueError, match=r"at least two classes.*class_generators: false"):
        _train(tmp_path, tmp_path / "run", RunSpec("one", "dcgan", "none", math.inf, 0))


def test_mixture_discriminator_score_is_the_best_class_score(study, tmp_path):
    _train(study, tmp_path, RunSpec("toy", "dcgan", "none", math.inf, 0))
    model, state = load_model(tmp_path / "checkpoint.pt")
    images = torch.rand(5, 1, 32, 32)
    score = discriminator_scorer(model, state)
    per_class = [discriminator_scorer(model.component(c), state) for c in (0, 1)]
    assert torch.equal(score(images), torch.maximum(per_class[0](images), per_class[1](images)))


def _ledger(eps, delta=1e-5, **extra):
    return {"mechanism": "dpsgd", "guarantee": "formal", "unit": "patient", "epsilon_spent": eps, "delta": delta, "adjacency": "replace_one", "epsilon_target": eps,
            "noise_multiplier": 1.0 / eps, "sample_rate": 0.5, "steps": 2, "max_grad_norm": 1.0, "accountant": "x"} | extra


def test_compose_parallel_takes_the_worst_class_and_drops_bounds_not_every_class_states():
    composed = compose_parallel({0: _ledger(1.0, epsilon_per_image=2.0), 1: _ledger(3.0, delta=1e-6)})
    assert composed["epsilon_spent"] == 3.0 and composed["delta"] == 1e-5
    assert composed["noise_multiplier"] == 1.0 / 3.0  # the worst class's parameters recompute its epsilon
    assert "epsilon_per_image" not in composed  # class 1 does not state it
    none = compose_parallel({0: _ledger(1.0), 1: {"mechanism": "none", "guarantee": "none", "unit": "patient",
                                                    "adjacency": "replace_one", "epsilon_target": math.inf,
                                                    "epsilon_spent": math.inf, "delta": 0.0}})
    assert none["guarantee"] == "none" and none["epsilon_spent"] == math.inf
    with pytest.raises(LedgerError, match="different units"):
        compose_parallel({0: _ledger(1.0), 1: _ledger(1.0, unit="image")})


def test_an_unlabelled_dataset_trains_one_generator_and_has_no_downstream_reference(tmp_path):
    """Sets without class labels (all -1, e.g. the fusion pair sets) ignore class_generators instead of failing."""
    from dpmedgen.data.schema import ImageSet, write_image_set
    from dpmedgen.data.split import split_patients, write_splits
    from dpmedgen.evaluate import downstream_reference

    images = ImageSet(
        modalities={"mri": np.random.default_rng(0).random((12, 32, 32), dtype=np.float32)},
        patient_id=[f"pair_{i}" for i in range(12)], slice=np.zeros(12), label=np.full(12, -1), dataset="pairs",
    )
    write_image_set(tmp_path / "images.h5", images)
    write_splits(split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0), tmp_path / "splits.parquet")
    ledger = _train(tmp_path, tmp_path / "run", RunSpec("pairs", "dcgan", "dpsgd", 2.0, 0))
    assert "class_generators" not in ledger and ledger["n_train_patients"] == 6 and ledger["epsilon_spent"] <= 2.0
    assert "state_dict" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    rows = downstream_reference(dataset="pairs", images_h5=tmp_path / "images.h5", splits_parquet=tmp_path / "splits.parquet",
                                modality="mri", seed=0, split="test", epochs=3, out_parquet=tmp_path / "reference.parquet")
    assert rows.empty and list(rows.columns)[:2] == ["dataset", "model"]
