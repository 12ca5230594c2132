"""The MedMNIST adapter on tiny npz files with the publisher's keys and names."""

from __future__ import annotations

import re

import numpy as np
import pytest
from raw_fixtures.medmnist import CHEST_PATTERNS, make_arrays, write_flag, write_raw

from dpmedgen.data.sources.base import DatasetError
from dpmedgen.data.sources.medmnist import FLAGS, SIZES, MedMNIST, npz_name


@pytest.fixture
def pneumonia(tmp_path):
    return tmp_path, write_raw(tmp_path)


def test_reads_planted_images_ids_and_labels(pneumonia):
    folder, info = pneumonia
    source = MedMNIST(**info["params"])
    assert [r.name for r in source.remote_files()] == info["files"]
    images = source.read(folder)
    arrays = make_arrays("pneumoniamnist", 64)
    ids = [f"train_{i}" for i in range(10)] + [f"val_{i}" for i in range(3)] + [f"test_{i}" for i in range(3)]
    assert list(images.patient_id) == ids
    assert list(images.label) == [0, 1] * 5 + [0, 1, 0] + [1, 0, 1]
    assert np.bincount(images.label).tolist() == [8, 8]
    assert (images.slice == 0).all() and images.shape == (64, 64)
    assert images.dataset == "medmnist" and list(images.modalities) == ["image"]
    expected = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")]) / 255.0
    np.testing.assert_allclose(images.modalities["image"], expected, atol=1e-6)
    img = images.modalities["image"]
    assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    assert img[images.label == 1].mean() > img[images.label == 0].mean() + 0.1
    again = MedMNIST(**info["params"]).read(folder)
    np.testing.assert_array_equal(again.modalities["image"], img)
    assert images.provenance["flag"] == "pneumoniamnist" and images.provenance["n_images"] == 16


def test_splits_are_pooled_in_canonical_order(pneumonia):
    folder, _ = pneumonia
    images = MedMNIST(splits=["test", "train"]).read(folder)
    assert list(images.patient_id) == [f"train_{i}" for i in range(10)] + [f"test_{i}" for i in range(3)]


def test_label_mapping_single_label(pneumonia):
    folder, _ = pneumonia
    only = MedMNIST(labels={0: [1]}).read(folder)
    assert len(only) == 8 and (only.label == 0).all()
    assert all(p in {"train_1", "train_3", "train_5", "train_7", "train_9", "val_1", "test_0", "test_2"} for p in only.patient_id)
    swapped = MedMNIST(labels={"0": [1], "1": [0]}).read(folder)
    original = MedMNIST().read(folder)
    np.testing.assert_array_equal(swapped.label, 1 - original.label)


def test_rgb_flag_at_28_pixels_uses_luminance(tmp_path):
    counts = {"train": 8, "val": 4, "test": 4}
    arrays = write_flag(tmp_path, "bloodmnist", 28, counts=counts, n_classes=8)
    source = MedMNIST(flag="bloodmnist", size=28)
    assert source.remote_files()[0].name == "bloodmnist.npz"
    images = source.read(tmp_path)
    rgb = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")]).astype(np.float64)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    assert images.shape == (28, 28)
    np.testing.assert_allclose(images.modalities["image"], luma, atol=1e-4)
    assert list(images.label[:8]) == list(range(8))


def test_chestmnist_needs_and_applies_a_mapping(tmp_path):
    counts = {"train": 10, "val": 5, "test": 5}
    write_flag(tmp_path, "chestmnist", 64, counts=counts)
    with pytest.raises(DatasetError, match="labels"):
        MedMNIST(flag="chestmnist")
    images = MedMNIST(flag="chestmnist", labels={0: [], 1: [6]}).read(tmp_path)
    # patterns cycle (), (6,), (2, 6), (2,), (0,): only "no finding" -> 0 and "pneumonia only" -> 1 are kept
    per_split = {"train": [0, 1, 5, 6], "val": [0, 1], "test": [0, 1]}
    assert list(images.patient_id) == [f"{s}_{i}" for s, rows in per_split.items() for i in rows]
    assert list(images.label) == [0, 1, 0, 1, 0, 1, 0, 1]
    wider = MedMNIST(flag="chestmnist", labels={0: [], 1: [2, 6]}).read(tmp_path)
    rows = [int(p.split("_")[1]) % len(CHEST_PATTERNS) for p in wider.patient_id]
    assert set(rows) == {0, 1, 2, 3} and list(wider.label[:4]) == [0, 1, 1, 1]


def test_max_images_subset_is_deterministic(pneumonia):
    folder, _ = pneumonia
    a = MedMNIST(max_images=6, seed=1).read(folder)
    b = MedMNIST(max_images=6, seed=1).read(folder)
    c = MedMNIST(max_images=6, seed=2).read(folder)
    full = MedMNIST().read(folder)
    assert len(a) == 6 and list(a.patient_id) == list(b.patient_id) and list(a.patient_id) != list(c.patient_id)
    where = [list(full.patient_id).index(p) for p in a.patient_id]
    assert where == sorted(where)
    np.testing.assert_array_equal(a.label, full.label[where])
    np.testing.assert_array_equal(a.modalities["image"], full.modalities["image"][where])


@pytest.mark.parametrize("params, name", [
    ({"flag": "organmnist3d"}, "3D"), ({"flag": "mnist"}, "flag"), ({"size": 32}, "size"), ({"size": True}, "size"),
    ({"splits": "train"}, "splits"), ({"splits": []}, "splits"), ({"splits": ["train", "train"]}, "splits"),
    ({"splits": ["dev"]}, "splits"), ({"labels": {0: [5]}}, "labels"), ({"labels": {1: [0]}}, "labels"),
    ({"labels": {0: [0], 1: [0]}}, "labels"), ({"labels": {0: []}}, "labels"), ({"labels": [0, 1]}, "labels"),
    ({"labels": {0: "01"}}, "labels"), ({"max_images": 0}, "max_images"), ({"seed": -1}, "seed"),
])
def test_bad_params_name_the_parameter(params, name):
    with pytest.raises(DatasetError, match=name):
        MedMNIST(**params)


def test_remote_files_carry_the_published_md5():
    (remote,) = MedMNIST(flag="pneumoniamnist", size=64).remote_files()
    assert remote.name == "pneumoniamnist_64.npz" and not remote.unpack and remote.sha256 is None
    assert remote.url == "https://zenodo.org/records/10519652/files/pneumoniamnist_64.npz?download=1"
    assert remote.md5 == "8f4eceb4ccffa70c672198ea285246c6"
    assert MedMNIST(flag="breastmnist", size=28).remote_files()[0].md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert MedMNIST(flag="breastmnist", size=28).remote_files()[0].url.endswith("/breastmnist.npz?download=1")
    md5s = {FLAGS[f].md5[s] for f in FLAGS for s in SIZES}
    assert len(FLAGS) == 12 and len(md5s) == 48 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in md5s)
    assert npz_name("chestmnist", 224) == "chestmnist_224.npz"


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetError, match="pneumoniamnist_64.npz"):
        MedMNIST().read(tmp_path)
    (tmp_path / "pneumoniamnist_64.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DatasetError, match="pneumoniamnist_64.npz"):
        MedMNIST().read(tmp_path)
    (tmp_path / "pneumoniamnist_64.npz").write_bytes(b"plain garbage")
    with pytest.raises(DatasetError, match="pneumoniamnist_64.npz"):
        MedMNIST().read(tmp_path)


def test_missing_key_and_wrong_size(tmp_path):
    arrays = make_arrays("pneumoniamnist", 64)
    del arrays["val_labels"]
    np.savez_compressed(tmp_path / "pneumoniamnist_64.npz", **arrays)
    with pytest.raises(DatasetError, match="val_labels"):
        MedMNIST().read(tmp_path)
    assert len(MedMNIST(splits=["train", "test"]).read(tmp_path)) == 13  # val not needed then
    np.savez_compressed(tmp_path / "pneumoniamnist_64.npz", **make_arrays("pneumoniamnist", 28))
    with pytest.raises(DatasetError, match="train_images"):
        MedMNIST().read(tmp_path)
    bad = make_arrays("pneumoniamnist", 64)
    bad["test_labels"][0, 0] = 7
    np.savez_compressed(tmp_path / "pneumoniamnist_64.npz", **bad)
    with pytest.raises(DatasetError, match="test_labels"):
        MedMNIST().read(tmp_path)
