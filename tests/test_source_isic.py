"""The ISIC 2020 adapter on a tiny fixture laid out as the ISIC bucket serves it (tests/raw_fixtures/isic.py)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from raw_fixtures.isic import write_raw

from dpmedgen.data.sources.base import DatasetError, unpacked_dir
from dpmedgen.data.sources.isic import ISIC

# (patient, slice) -> label, planted in the fixture (max_per_patient 2)
EXPECTED = {
    ("IP_0000001", 1): 1, ("IP_0000002", 0): 1, ("IP_0000003", 0): 1, ("IP_0000003", 2): 1,
    ("IP_0000004", 0): 1, ("IP_0000005", 0): 1, ("IP_0000006", 0): 1,
    ("IP_0000007", 0): 0, ("IP_0000007", 1): 0, ("IP_0000008", 0): 0, ("IP_0000009", 0): 0,
    ("IP_0000010", 0): 0, ("IP_0000011", 0): 0, ("IP_0000012", 0): 0,
}


def unpack_all(folder, source):
    for remote in source.remote_files():
        if remote.unpack and (folder / remote.name).exists():
            with zipfile.ZipFile(folder / remote.name) as z:
                z.extractall(unpacked_dir(folder, remote))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("isic")
    info = write_raw(folder)
    unpack_all(folder, ISIC(**info["params"]))
    return folder, info["params"]


def rows(images):
    return {(p, int(s)): int(lab) for p, s, lab in zip(images.patient_id, images.slice, images.label)}


def test_fixture_is_small_and_names_the_remote_files(tmp_path):
    info = write_raw(tmp_path)
    assert set(info["files"]) == {r.name for r in ISIC(**info["params"]).remote_files()}
    assert sum((tmp_path / n).stat().st_size for n in info["files"]) < 2_000_000
    with zipfile.ZipFile(tmp_path / "ISIC_2020_Training_JPEG.zip") as z:
        assert "train/ISIC_0000101.jpg" in z.namelist()


def test_reads_the_planted_cohort(raw):
    folder, params = raw
    images = ISIC(**params).read(folder)
    assert rows(images) == EXPECTED
    assert images.dataset == "isic" and list(images.modalities) == ["dermoscopy"]
    x = images.modalities["dermoscopy"]
    assert x.shape == (14, 32, 32) and x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    order = list(zip(images.patient_id, images.slice))
    assert order == sorted(order)
    assert images.provenance["n_per_class_used"] == 7 and images.provenance["duplicates_dropped"] == 2


def test_luminance_crop_and_classes(raw):
    folder, params = raw
    images = ISIC(**params).read(folder)
    x = images.modalities["dermoscopy"]
    at = {(p, int(s)): i for i, (p, s) in enumerate(zip(images.patient_id, images.slice))}
    np.testing.assert_allclose(x[at["IP_0000008", 0]], 124.2 / 255, atol=0.02)  # ITU-R 601-2 luma of (200,100,50)
    np.testing.assert_allclose(x[at["IP_0000010", 0]], 230 / 255, atol=0.03)  # black side margins cropped away
    centre = lambda i: x[i, 12:20, 12:20].mean() - x[i, :, :4].mean()  # noqa: E731
    assert centre(at["IP_0000002", 0]) < -0.2 and centre(at["IP_0000007", 0]) > 0.1


def test_deterministic_and_seeded(raw):
    folder, params = raw
    a, b = ISIC(**params).read(folder), ISIC(**params).read(folder)
    assert rows(a) == rows(b)
    np.testing.assert_array_equal(a.modalities["dermoscopy"], b.modalities["dermoscopy"])
    small = {s: rows(ISIC(**{**params, "n_per_class": 3, "seed": s}).read(folder)) for s in (0, 1)}
    for sel in small.values():
        assert sorted(sel.values()) == [0, 0, 0, 1, 1, 1] and set(sel) <= set(EXPECTED)
    assert small[0] != small[1]


def test_shortfall_is_balanced_with_a_warning(raw):
    folder, params = raw
    with pytest.warns(UserWarning, match="only 6 images per class"):
        images = ISIC(**{**params, "n_per_class": 50, "max_per_patient": 1}).read(folder)
    assert sorted(images.label.tolist()) == [0] * 6 + [1] * 6
    assert len(set(images.patient_id)) == 12


@pytest.mark.parametrize("bad, name", [
    ({"n_per_class": 0}, "n_per_class"), ({"max_per_patient": -1}, "max_per_patient"), ({"seed": "a"}, "seed"),
    ({"max_size": 2}, "max_size"), ({"n_per_class": True}, "n_per_class"),
])
def test_parameter_validation_names_the_parameter(bad, name):
    with pytest.raises(DatasetError, match=name):
        ISIC(**bad)


def test_remote_files():
    files = {r.name: r for r in ISIC().remote_files()}
    assert files["ISIC_2020_Training_JPEG.zip"].unpack
    assert all(r.url == "https://isic-challenge-data.s3.amazonaws.com/2020/" + n for n, r in files.items())


def test_missing_or_corrupt_files_name_the_file(tmp_path):
    info = write_raw(tmp_path)
    source = ISIC(**info["params"])
    with pytest.raises(DatasetError, match="ISIC_2020_Training_JPEG"):
        source.read(tmp_path)  # zip not unpacked
    unpack_all(tmp_path, source)
    (tmp_path / "ISIC_2020_Training_JPEG" / "train" / "ISIC_0000401.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match="ISIC_0000401.jpg"):
        source.read(tmp_path)
    table = tmp_path / "ISIC_2020_Training_GroundTruth_v2.csv"
    good = table.read_text()
    table.write_text(good.replace(",target", ",label"))
    with pytest.raises(DatasetError, match="GroundTruth_v2.csv.*target"):
        source.read(tmp_path)
    table.write_text(good.replace("benign,0", "benign,2", 1))
    with pytest.raises(DatasetError, match="GroundTruth_v2.csv.*'2'"):
        source.read(tmp_path)
    table.write_text(good)
    (tmp_path / "ISIC_2020_Training_Duplicates.csv").unlink()
    with pytest.raises(DatasetError, match="ISIC_2020_Training_Duplicates.csv"):
        source.read(tmp_path)
