"""The DDcGAN fusion-pair adapters (mripet, irvis) on tiny fixtures in the authors' HDF5 layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from raw_fixtures.irvis import write_raw as write_irvis
from raw_fixtures.mripet import LEFT_COLS, N_PAIRS, SIZE, TOP_ROWS, make_pairs, write_pairs
from raw_fixtures.mripet import write_raw as write_mripet

from dpmedgen.data.sources import fusion_pairs
from dpmedgen.data.sources.base import DatasetError
from dpmedgen.data.sources.fusion_pairs import IRVIS, MRIPET


@pytest.fixture
def mripet_dir(tmp_path):
    info = write_mripet(tmp_path)
    return tmp_path, info


def test_mripet_reads_planted_pairs(mripet_dir):
    folder, info = mripet_dir
    assert info["files"] == [r.name for r in MRIPET(**info["params"]).remote_files()]
    images = MRIPET(**info["params"]).read(folder)
    truth = make_pairs(seed=0)
    assert images.dataset == "mripet" and list(images.modalities) == ["mri", "pet"]
    assert list(images.patient_id) == [f"pair_{i}" for i in range(N_PAIRS)]
    assert (images.slice == 0).all() and (images.label == -1).all()
    assert images.shape == (SIZE, SIZE)
    np.testing.assert_allclose(images.modalities["mri"], truth[..., 0], atol=1e-6)
    np.testing.assert_allclose(images.modalities["pet"], truth[..., 1], atol=1e-6)
    # orientation survives the MATLAB transpose: MRI bright on top, PET bright on the left
    assert np.allclose(images.modalities["mri"][:, :TOP_ROWS], 0.9)
    assert np.allclose(images.modalities["pet"][:, :, :LEFT_COLS], 0.95)
    assert images.modalities["pet"][:, TOP_ROWS:, LEFT_COLS:].max() < 0.9
    # planted per-pair levels, in file order
    levels = images.modalities["pet"][:, -1, -1]
    np.testing.assert_allclose(levels, 0.2 + 0.03 * np.arange(N_PAIRS), atol=0.01)
    for arr in images.modalities.values():
        assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    assert images.provenance["layout"].startswith("matlab") and images.provenance["n_pairs_in_file"] == N_PAIRS


def test_irvis_channel_order(tmp_path):
    info = write_irvis(tmp_path)
    images = IRVIS(**info["params"]).read(tmp_path)
    truth = make_pairs(seed=1)
    assert images.dataset == "irvis" and set(images.modalities) == {"ir", "vis"}
    np.testing.assert_allclose(images.modalities["vis"], truth[..., 0], atol=1e-6)
    np.testing.assert_allclose(images.modalities["ir"], truth[..., 1], atol=1e-6)
    assert len(images) == N_PAIRS and len(set(images.patient_id)) == N_PAIRS


def test_channels_last_file_reads_the_same(tmp_path, mripet_dir):
    folder, _ = mripet_dir
    other = tmp_path / "cl"
    other.mkdir()
    with h5py.File(other / "mripet.h5", "w") as f:
        f["data"] = make_pairs(seed=0)  # (N, H, W, 2)
    a = MRIPET(max_pairs=None).read(folder)
    b = MRIPET(max_pairs=None).read(other)
    assert b.provenance["layout"].startswith("channels-last")
    for m in ("mri", "pet"):
        np.testing.assert_array_equal(a.modalities[m], b.modalities[m])


def test_max_pairs_subset_is_deterministic(mripet_dir, monkeypatch):
    folder, _ = mripet_dir
    monkeypatch.setattr(fusion_pairs, "BLOCK", 4)  # exercise reading across several blocks
    a = MRIPET(max_pairs=5, seed=3).read(folder)
    b = MRIPET(max_pairs=5, seed=3).read(folder)
    c = MRIPET(max_pairs=5, seed=4).read(folder)
    assert len(a) == 5 and list(a.patient_id) == list(b.patient_id)
    np.testing.assert_array_equal(a.modalities["mri"], b.modalities["mri"])
    assert list(a.patient_id) != list(c.patient_id)
    rows = [int(p.split("_")[1]) for p in a.patient_id]
    assert rows == sorted(rows)
    truth = make_pairs(seed=0)
    np.testing.assert_allclose(a.modalities["pet"], truth[rows, :, :, 1], atol=1e-6)
    assert len(MRIPET(max_pairs=100).read(folder)) == N_PAIRS


def test_max_size_downsamples(mripet_dir):
    folder, _ = mripet_dir
    images = MRIPET(max_pairs=None, max_size=24).read(folder)
    assert images.shape == (24, 24)
    assert images.modalities["mri"][:, :2].min() > 0.85  # the bright top rows are still on top
    assert 0 <= images.modalities["pet"].min() and images.modalities["pet"].max() <= 1


def test_uint8_file_is_scaled_by_dtype_range(tmp_path):
    pairs = np.round(make_pairs(seed=0) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "mripet.h5", "w") as f:
        f["data"] = np.transpose(pairs, (0, 3, 2, 1))
    images = MRIPET(max_pairs=None).read(tmp_path)
    np.testing.assert_allclose(images.modalities["mri"], pairs[..., 0] / 255.0, atol=1e-6)
    assert "255" in images.provenance["intensity"]


@pytest.mark.parametrize("params, name", [
    ({"max_pairs": 0}, "max_pairs"), ({"max_pairs": True}, "max_pairs"), ({"max_pairs": "10"}, "max_pairs"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"max_size": 4}, "max_size"),
])
def test_bad_params_name_the_parameter(params, name):
    for cls in (MRIPET, IRVIS):
        with pytest.raises(DatasetError, match=name):
            cls(**params)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="mripet.h5"):
        MRIPET().read(tmp_path)


def test_corrupt_file(tmp_path):
    (tmp_path / "irvis.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError, match="irvis.h5"):
        IRVIS().read(tmp_path)


def test_wrong_key_or_shape(tmp_path):
    with h5py.File(tmp_path / "mripet.h5", "w") as f:
        f["images"] = np.zeros((3, 2, 8, 8), dtype=np.float32)
    with pytest.raises(DatasetError, match="mripet.h5.*'data'"):
        MRIPET().read(tmp_path)
    with h5py.File(tmp_path / "mripet.h5", "w") as f:
        f["data"] = np.zeros((3, 3, 8, 8), dtype=np.float32)
    with pytest.raises(DatasetError, match="shape"):
        MRIPET().read(tmp_path)


def test_out_of_range_floats_are_refused(tmp_path):
    write_pairs(tmp_path / "mripet.h5", make_pairs(seed=0) * 1000)
    with pytest.raises(DatasetError, match="mripet.h5"):
        MRIPET(max_pairs=None).read(tmp_path)


def test_remote_files():
    for cls, name in ((MRIPET, "mripet.h5"), (IRVIS, "irvis.h5")):
        (remote,) = cls().remote_files()
        assert remote.name == name and remote.google_drive
        assert remote.url.startswith("https://drive.google.com/uc?export=download&id=")
        assert remote.sha256 is None and remote.md5 is None and not remote.unpack
    assert MRIPET.modalities == ("mri", "pet") and IRVIS.modalities == ("ir", "vis")
