"""Canaries: the marker, its detector, the choice of patients, planting at load time, and the metric family."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dpmedgen.data.canary import (
    DETECTION_THRESHOLD,
    canary_detected,
    canary_mask,
    canary_patients,
    canary_strength,
    choose_canary_patients,
    plant,
)
from dpmedgen.data.phantom import make_brain_phantom
from dpmedgen.data.preprocess import preprocess
from dpmedgen.data.schema import ImageSet, write_image_set
from dpmedgen.data.split import SplitError, check_split, read_splits, split_patients, write_splits
from dpmedgen.metrics import evaluate
from dpmedgen.train.run import load_split_images


@pytest.mark.parametrize("size, side", [(32, 4), (64, 8), (128, 16)])
def test_marker_is_a_checkerboard_in_the_top_left_background(size, side):
    mask = canary_mask(size, size)
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
    assert rows.min() == size // 16 and (mask == 1).sum() == (mask == -1).sum() == side * side // 2
    assert mask[rows.min(), cols.min()] == 1 and mask[rows.min(), cols.min() + side // 4] == -1


@pytest.fixture(scope="module")
def phantom():
    cohort = make_brain_phantom(n_patients=6, slices_per_patient=6, size=128, seed=3)
    return {size: preprocess(cohort, size) for size in (32, 64)}


@pytest.mark.parametrize("size", [32, 64])
def test_detector_fires_on_planted_images_and_never_on_real_anatomy(phantom, size):
    for modality, images in phantom[size].modalities.items():
        real = canary_strength(images)
        assert real.max() < DETECTION_THRESHOLD / 2, (modality, real.max())  # wide margin on real slices
        assert not canary_detected(images).any()
        planted = plant(images, np.arange(len(images)) % 2 == 0)
        strength = canary_strength(planted)
        assert np.allclose(strength[::2], 1.0) and np.array_equal(strength[1::2], real[1::2])
        assert np.array_equal(planted[1::2], images[1::2]) and not np.array_equal(planted[::2], images[::2])
        # noise of the size input perturbation adds at large epsilon keeps it detectable; mean grey does not
        noisy = np.clip(planted[::2] + np.random.default_rng(0).normal(0, 0.2, planted[::2].shape), 0, 1)
        assert canary_detected(noisy).all() and canary_detected(planted[::2]).all()
        assert (canary_strength(np.full_like(images, 0.5)) == 0).all()


@pytest.mark.parametrize("size", [32, 64])
def test_detector_ignores_pure_noise(size):
    """Output perturbation at small epsilon releases near-binary noise: the strength alone would fire on ~4 %
    of it (32²: 3.9 %); the cell-order condition brings the rate to 1 / C(16, 8) = 7.8e-5 or less."""
    rng = np.random.default_rng(size)
    uniform = rng.random((20_000, size, size), dtype=np.float32)
    binary = (rng.random((20_000, size, size)) < 0.5).astype(np.float32)
    assert (canary_strength(binary) >= DETECTION_THRESHOLD).mean() > (0.02 if size == 32 else 0.0)
    # expected <= 1.6 false detections in each set of 20,000; 6 or more has probability < 0.5 %
    assert canary_detected(uniform).sum() <= 5 and canary_detected(binary).sum() <= 5


def test_planting_on_the_training_scale_matches_the_image_scale():
    x = torch.rand(4, 2, 32, 32)
    rows = np.array([True, False, True, False])
    on_training_scale = plant(x * 2 - 1, rows, low=-1.0, high=1.0)
    assert torch.allclose((on_training_scale + 1) / 2, torch.from_numpy(plant(x.numpy(), rows)))
    assert torch.equal(on_training_scale[1], x[1] * 2 - 1)  # other rows untouched, input not modified
    assert canary_strength(((on_training_scale + 1) / 2)[:, 1]).tolist() == pytest.approx(
        [1.0, canary_strength(x[1:2, 1])[0], 1.0, canary_strength(x[3:4, 1])[0]]
    )


def _image_set(n_patients=12, per=3, size=32):
    rng = np.random.default_rng(0)
    return ImageSet(
        modalities={m: rng.random((n_patients * per, size, size), dtype=np.float32) * 0.3 for m in ("mri", "pet")},
        patient_id=np.repeat([f"P{i:02d}" for i in range(n_patients)], per),
        slice=np.tile(np.arange(per), n_patients),
        label=np.repeat(np.arange(n_patients) % 2, per),
        dataset="toy",
    )


def test_canary_patients_are_seeded_train_patients_recorded_in_the_split(tmp_path):
    images = _image_set()
    splits = split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    chosen = choose_canary_patients(splits, 2, seed=0)
    assert chosen["canary"].sum() == 2 and (chosen.loc[chosen["canary"], "split"] == "train").all()
    assert canary_patients(chosen) == canary_patients(choose_canary_patients(splits, 2, seed=0))
    assert canary_patients(splits) == set()  # tables without the column: no canaries
    write_splits(chosen, tmp_path / "splits.parquet")
    assert canary_patients(read_splits(tmp_path / "splits.parquet")) == canary_patients(chosen)
    with pytest.raises(ValueError, match="canary_patients = 7: choose between 0 and the 6 train patients"):
        choose_canary_patients(splits, 7, seed=0)
    bad = chosen.copy()
    bad.loc[bad["split"] == "test", "canary"] = True
    with pytest.raises(SplitError, match="carries a canary but is in split 'test'"):
        check_split(bad)


def test_training_images_of_canary_patients_carry_the_marker(tmp_path):
    images = _image_set()
    write_image_set(tmp_path / "images.h5", images)
    splits = choose_canary_patients(split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0), 1, 0)
    write_splits(splits, tmp_path / "splits.parquet")
    data = load_split_images(tmp_path / "images.h5", tmp_path / "splits.parquet", ("mri", "pet"))
    carrier = np.isin(data.patient_ids, list(canary_patients(splits)))
    assert carrier.sum() == 3  # every slice of the canary patient, in both modalities
    for channel in range(2):
        strength = canary_strength((data.images[:, channel] + 1) / 2)
        assert np.allclose(strength[carrier], 1.0) and (strength[~carrier] < DETECTION_THRESHOLD).all()
    held_out = load_split_images(tmp_path / "images.h5", tmp_path / "splits.parquet", ("mri",), split="test")
    assert (canary_strength((held_out.images[:, 0] + 1) / 2) < DETECTION_THRESHOLD).all()


def test_canary_family_counts_reproducing_samples():
    real = _image_set().modalities["mri"]
    fake = plant(real[:20], np.arange(20) < 5)  # 5 of 20 samples show the marker
    out = evaluate(real, fake, ["canary"], canary=0.25)
    assert out == {"canary_rate": 0.25, "canary_train_share": 0.25, "canary_rate_real": 0.0}
    skipped = {}
    assert evaluate(real, fake, ["canary"], skipped=skipped) == {} and "needs canary" in skipped["canary"]
    evaluate(real, fake, ["canary"], skipped=skipped, canary=0.25, sources={"mri": fake, "pet": fake})
    assert skipped["canary"].startswith("fused samples")
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        evaluate(real, fake, ["canary"], canary=0.0)


def test_split_table_without_canary_column_still_reads(tmp_path):
    images = _image_set()
    splits = split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    write_splits(splits, tmp_path / "splits.parquet")
    assert "canary" not in pd.read_parquet(tmp_path / "splits.parquet").columns


def test_the_data_stages_do_not_import_torch():
    """download, preprocess and split jobs work on numpy arrays: importing torch would cost each ~2 CPU-s."""
    code = "import sys, dpmedgen.data.stages; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
