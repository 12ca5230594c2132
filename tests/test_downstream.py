"""Downstream utility: a small CNN trained on labelled images, epoch picked on val, scored once on test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import blobs
from dpmedgen.metrics import downstream
from dpmedgen.metrics.downstream import LabelledImages, class_weights, downstream_utility

SIZE = 32
EPOCHS = 6
KEYS = {"downstream_auroc", "downstream_accuracy", "downstream_val_auroc", "downstream_epoch"}
PATIENT_KEYS = {"downstream_auroc_patient", "downstream_accuracy_patient"}


def marked(labels: np.ndarray, seed: int) -> np.ndarray:
    """Smooth random backgrounds; class c > 0 carries a bright 8x8 square, at row band c (flip-invariant)."""
    images = blobs(len(labels), SIZE, seed) * 0.6
    for c in range(1, int(labels.max()) + 1):
        top = 4 + (c - 1) * 16
        images[labels == c, top : top + 8, 12:20] += 0.4
    return np.clip(images, 0.0, 1.0)


def patients(n_patients: int, per_patient: int, seed: int, num_classes: int = 2, prefix: str = "P") -> LabelledImages:
    """`n_patients` patients of `per_patient` images each, patient i of class i % num_classes, marked images."""
    labels = np.repeat(np.arange(n_patients) % num_classes, per_patient)
    patient_id = np.repeat([f"{prefix}{i:03d}" for i in range(n_patients)], per_patient)
    return LabelledImages(marked(labels, seed), labels, patient_id)


def synthetic(n: int, seed: int, num_classes: int = 2) -> LabelledImages:
    """Marked images with balanced labels and no patients (like a generator's labelled samples)."""
    labels = np.random.default_rng(seed).permutation(np.arange(n) % num_classes)
    return LabelledImages(marked(labels, seed), labels)


def run(train, val, test, seed=0, epochs=EPOCHS, **kwargs):
    return downstream_utility(train, val, test, seed=seed, epochs=epochs, threads=1, **kwargs)


@pytest.fixture(scope="module")
def separable():
    return synthetic(128, seed=0), patients(20, 3, seed=1, prefix="V"), patients(20, 3, seed=2, prefix="T")


def noisy_train(separable) -> LabelledImages:
    """The separable training images with 30 % of the labels flipped: a harder task whose scores are not
    saturated at 1 (so they vary across epochs and seeds)."""
    train = separable[0]
    rng = np.random.default_rng(3)
    return LabelledImages(train.images, np.where(rng.random(len(train)) < 0.3, 1 - train.labels, train.labels))


def test_separable_classes_score_near_perfectly_at_image_and_patient_level(separable):
    scores = run(*separable)
    assert set(scores) == KEYS | PATIENT_KEYS and all(isinstance(v, float) for v in scores.values())
    assert scores["downstream_auroc"] > 0.95 and scores["downstream_accuracy"] > 0.9, scores
    assert scores["downstream_auroc_patient"] > 0.95 and scores["downstream_accuracy_patient"] > 0.9, scores
    assert scores["downstream_val_auroc"] > 0.95 and 1 <= scores["downstream_epoch"] <= EPOCHS


def test_no_patient_keys_without_test_patients(separable):
    train, val, test = separable
    scores = run(train, val, LabelledImages(test.images, test.labels), epochs=2)
    assert set(scores) == KEYS


def random_labels(n: int, seed: int) -> LabelledImages:
    """Smooth random images with balanced labels independent of them."""
    return LabelledImages(blobs(n, SIZE, seed), np.random.default_rng(seed).permutation(np.arange(n) % 2))


def test_labels_independent_of_the_images_give_chance_auroc():
    scores = run(random_labels(128, 10), random_labels(60, 11), random_labels(300, 12))
    assert abs(scores["downstream_auroc"] - 0.5) < 0.15, scores


def test_flipped_training_and_val_labels_invert_the_test_auroc(separable):
    """The metric reflects what training taught: labels swapped in train and val (not test) -> AUROC near 0."""
    train, val, test = separable
    flipped_train = LabelledImages(train.images, 1 - train.labels)
    flipped_val = LabelledImages(val.images, 1 - val.labels, val.patient_id)
    scores = run(flipped_train, flipped_val, test)
    assert scores["downstream_auroc"] < 0.1 and scores["downstream_auroc_patient"] < 0.1, scores
    assert scores["downstream_val_auroc"] > 0.9, scores


def test_selection_never_looks_at_test(separable, monkeypatch):
    """Different test labels and images leave the selected epoch and its val AUROC unchanged, and the test
    images are scored exactly once (after training), val once per epoch."""
    _, val, test = separable
    train = noisy_train(separable)
    other_test = patients(20, 3, seed=7, prefix="T")
    other_test = LabelledImages(other_test.images, 1 - other_test.labels, other_test.patient_id)

    seen = []
    original = downstream.class_probabilities

    def counting(model, images, batch_size):
        seen.append("test" if images is test_set.images else "val" if images is val.images else "other")
        return original(model, images, batch_size)

    monkeypatch.setattr(downstream, "class_probabilities", counting)
    results = []
    for test_set in (test, other_test):
        seen.clear()
        results.append(run(train, val, test_set))
        assert seen == ["val"] * EPOCHS + ["test"], seen
    first, second = results
    assert first["downstream_epoch"] == second["downstream_epoch"]
    assert first["downstream_val_auroc"] == second["downstream_val_auroc"]
    assert first["downstream_auroc"] != second["downstream_auroc"]  # the test set did change the test score


def test_ties_keep_the_earliest_epoch(separable, monkeypatch):
    """Constant predictions give val AUROC 0.5 every epoch: the first epoch is kept."""
    original = downstream.class_probabilities

    def constant(model, images, batch_size):
        probabilities = original(model, images, batch_size)
        return torch.full_like(probabilities, 0.5)

    monkeypatch.setattr(downstream, "class_probabilities", constant)
    scores = run(*separable, epochs=3)
    assert scores["downstream_epoch"] == 1.0 and scores["downstream_val_auroc"] == 0.5


def test_same_inputs_and_seed_give_identical_results():
    """Random labels keep every score away from 0 and 1, where a different model would show."""
    sets = random_labels(64, 30), random_labels(40, 31), random_labels(40, 32)
    threads = torch.get_num_threads()
    first = run(*sets, seed=3, epochs=3)
    assert 0 < first["downstream_auroc"] < 1 and 0 < first["downstream_val_auroc"] < 1, first  # not saturated
    assert run(*sets, seed=3, epochs=3) == first  # bit-identical
    assert torch.get_num_threads() == threads  # the call's thread count is not left behind
    run(*sets, seed=4, epochs=3)  # another seed runs (it may give other numbers; not asserted)


def test_three_separable_classes_give_high_macro_auroc():
    train = synthetic(150, seed=20, num_classes=3)
    val = patients(21, 3, seed=21, num_classes=3, prefix="V")
    test = patients(21, 3, seed=22, num_classes=3, prefix="T")
    scores = run(train, val, test, epochs=8)
    assert scores["downstream_auroc"] > 0.9 and scores["downstream_auroc_patient"] > 0.9, scores
    assert scores["downstream_accuracy"] > 0.8, scores


def test_multiclass_auroc_averages_over_the_classes_present():
    """A 3-class model scored on a set holding classes 0 and 1 only: class 2's AUROC is undefined and left
    out of the macro average instead of counting as 0."""
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    assert downstream.auroc(probabilities, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert downstream.auroc(probabilities, np.array([1, 1, 0, 0])) == pytest.approx(0.0)


def test_class_weights_balance_the_classes():
    labels = np.array([0] * 30 + [1] * 10)
    weights = class_weights(labels, 3)
    assert torch.allclose(weights, torch.tensor([40 / 60, 40 / 20, 0.0]))
    totals = weights[:2] * torch.tensor([30.0, 10.0])
    assert torch.allclose(totals, totals[0].expand(2))  # each present class weighs the same in total


def test_training_loss_uses_the_train_class_weights(separable, monkeypatch):
    """Every training step's cross-entropy weighs the classes by the inverse of their train frequencies."""
    _, val, test = separable
    labels = np.array([0] * 48 + [1] * 16)
    train = LabelledImages(marked(labels, seed=40), labels)
    weights = []

    def spy(logits, target, weight=None, **kwargs):
        weights.append(weight)
        return torch.nn.functional.cross_entropy(logits, target, weight=weight, **kwargs)

    monkeypatch.setattr(downstream, "F", SimpleNamespace(cross_entropy=spy))
    run(train, val, test, epochs=2, batch_size=16)
    assert len(weights) == 2 * 4
    assert all(w is not None and torch.allclose(w, torch.tensor([64 / 96, 64 / 32])) for w in weights), weights


def test_labelled_images_converts_dtypes():
    data = LabelledImages(np.zeros((4, 16, 16)), [0, 1, 1, 0], np.array([1, 1, 2, 2]))
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.patient_id.dtype.kind == "U" and list(data.patient_id) == ["1", "1", "2", "2"]
    assert LabelledImages(np.zeros((2, 16, 16)), np.array([0.0, 1.0])).labels.dtype == np.int64


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LabelledImages(np.zeros((10, 16, 16)), np.zeros(9, dtype=int)), r"labels must have shape \(10,\)"),
        (lambda: LabelledImages(np.zeros((4, 16, 16)), [0, 1, 0, 1], ["a", "b"]), r"patient_id must have shape \(4,\)"),
        (lambda: LabelledImages(np.zeros((4, 16)), [0, 1, 0, 1]), r"\(N, H, W\)"),
        (lambda: LabelledImages(np.full((2, 16, 16), 2.0), [0, 1]), r"\[0, 1\]"),
        (lambda: LabelledImages(np.zeros((2, 16, 16)), [0.5, 1]), "integer class indices"),
        (lambda: LabelledImages(np.zeros((2, 16, 16)), [-1, 1]), ">= 0"),
    ],
)
def test_labelled_images_rejects_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_errors_name_the_set_and_its_classes(separable):
    train, val, test = separable
    one_class = LabelledImages(train.images, np.ones(len(train), dtype=int))
    with pytest.raises(ValueError, match=r"train labels have a single class \[1\]"):
        run(one_class, val, test)
    with pytest.raises(ValueError, match=r"val labels have a single class \[0\]"):
        run(train, LabelledImages(val.images, np.zeros(len(val), dtype=int)), test)
    with pytest.raises(ValueError, match=r"test labels have a single class \[0\]"):
        run(train, val, LabelledImages(test.images, np.zeros(len(test), dtype=int)))
    mixed = test.labels.copy()
    mixed[0] = 1 - mixed[0]  # T000's first image gets the other label
    with pytest.raises(ValueError, match=r"patient 'T000' has images with different labels \[0, 1\]"):
        run(train, val, LabelledImages(test.images, mixed, test.patient_id))
    with pytest.raises(ValueError, match=r"val images are \(16, 16\); train images are \(32, 32\)"):
        run(train, LabelledImages(val.images[:, :16, :16], val.labels), test)
    with pytest.raises(ValueError, match="at least 16x16"):
        small = LabelledImages(np.zeros((4, 8, 8)), [0, 1, 0, 1])
        run(small, small, small)
