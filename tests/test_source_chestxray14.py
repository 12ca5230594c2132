"""The ChestX-ray14 adapter on a tiny fixture laid out as NIH serves it (tests/raw_fixtures/chestxray14.py)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from raw_fixtures.chestxray14 import write_raw

from dpmedgen.data.sources.base import DatasetError, unpacked_dir
from dpmedgen.data.sources.chestxray14 import ChestXray14

# (patient, follow-up) -> label, planted in the fixture (archives 1-2, max_per_patient 2)
EXPECTED = {
    ("00000001", 1): 1, ("00000001", 2): 1, ("00000002", 0): 1, ("00000005", 0): 1, ("00000005", 1): 1,
    ("00000007", 1): 1, ("00000009", 0): 1, ("00000011", 0): 1, ("00000011", 1): 1, ("00000013", 0): 1,
    ("00000003", 0): 0, ("00000003", 1): 0, ("00000004", 1): 0, ("00000006", 0): 0, ("00000006", 1): 0,
    ("00000008", 0): 0, ("00000010", 0): 0, ("00000010", 1): 0, ("00000012", 0): 0, ("00000014", 0): 0,
}


def unpack_all(folder, source):
    for remote in source.remote_files():
        if remote.unpack and (folder / remote.name).exists():
            with tarfile.open(folder / remote.name) as tar:
                tar.extractall(unpacked_dir(folder, remote), filter="data")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chestxray14")
    info = write_raw(folder)
    unpack_all(folder, ChestXray14(**info["params"]))
    return folder, info["params"]


def rows(images):
    return {(p, int(s)): int(lab) for p, s, lab in zip(images.patient_id, images.slice, images.label)}


def test_fixture_is_small_and_names_the_remote_files(tmp_path):
    info = write_raw(tmp_path)
    names = {r.name for r in ChestXray14(**info["params"]).remote_files()}
    assert set(info["files"]) == names
    assert sum((tmp_path / n).stat().st_size for n in info["files"]) < 2_000_000
    with tarfile.open(tmp_path / "images_001.tar.gz") as tar:
        assert "images/00000001_000.png" in tar.getnames()


def test_reads_the_planted_cohort(raw):
    folder, params = raw
    images = ChestXray14(**params).read(folder)
    assert rows(images) == EXPECTED
    assert images.dataset == "chestxray14" and list(images.modalities) == ["xray"]
    assert images.modalities["xray"].shape == (20, 32, 32)
    x = images.modalities["xray"]
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    order = list(zip(images.patient_id, images.slice))
    assert order == sorted(order)
    assert images.provenance["n_per_class_used"] == 10
    assert images.provenance["labels"] == {"0": "No Finding", "1": "Infiltration"}


def test_intensities_and_colour_conversion(raw):
    folder, params = raw
    images = ChestXray14(**params).read(folder)
    x = images.modalities["xray"]
    at = {(p, int(s)): i for i, (p, s) in enumerate(zip(images.patient_id, images.slice))}
    np.testing.assert_allclose(x[at["00000008", 0]], 200 / 255, atol=1e-5)  # 8-bit gray / 255
    np.testing.assert_allclose(x[at["00000002", 0]], 120 / 255, atol=1e-5)  # RGBA: gray, alpha ignored
    np.testing.assert_allclose(x[at["00000011", 1]], 80 / 255, atol=1e-5)  # RGB -> luminance
    centre = lambda i: x[i, 10:22, 10:22].mean() - x[i, :, :4].mean()  # noqa: E731
    assert centre(at["00000001", 1]) > 0.2 and abs(centre(at["00000003", 0])) < 0.1


def test_deterministic_and_seeded(raw):
    folder, params = raw
    a, b = ChestXray14(**params).read(folder), ChestXray14(**params).read(folder)
    assert rows(a) == rows(b)
    np.testing.assert_array_equal(a.modalities["xray"], b.modalities["xray"])
    small = {s: rows(ChestXray14(**{**params, "n_per_class": 3, "seed": s}).read(folder)) for s in (0, 1)}
    for sel in small.values():
        assert sorted(sel.values()) == [0, 0, 0, 1, 1, 1] and set(sel) <= set(EXPECTED)
    assert small[0] == rows(ChestXray14(**{**params, "n_per_class": 3, "seed": 0}).read(folder))
    assert small[0] != small[1]


def test_only_downloaded_archives_and_balanced_shortfall(raw):
    folder, params = raw
    with pytest.warns(UserWarning, match="only 6 images per class"):
        images = ChestXray14(**{**params, "archives": [1]}).read(folder)
    assert rows(images) == {k: v for k, v in EXPECTED.items() if int(k[0]) <= 8}
    assert [r.name for r in ChestXray14(archives=[1]).remote_files()] == ["Data_Entry_2017_v2020.csv", "images_001.tar.gz"]


def test_other_classes_and_size(raw):
    folder, params = raw
    with pytest.warns(UserWarning, match="only 1 images per class"):
        images = ChestXray14(**{**params, "positive": "Effusion", "negative": "Mass", "max_size": 64}).read(folder)
    # Effusion patients: 1 (follow-up 2), 4 (0), 15 (1); Mass patients without Effusion: 5 (1); balanced to 1 each
    assert sorted(images.label.tolist()) == [0, 1]
    assert images.modalities["xray"].shape == (2, 64, 64)
    assert ("00000005", 1) in rows(images)


@pytest.mark.parametrize("bad, name", [
    ({"n_per_class": 0}, "n_per_class"), ({"max_per_patient": 0}, "max_per_patient"), ({"seed": -1}, "seed"),
    ({"max_size": 4}, "max_size"), ({"archives": [13]}, "archives"), ({"archives": []}, "archives"),
    ({"positive": "Infiltrate"}, "positive"), ({"negative": "No Finding", "positive": "No Finding"}, "positive"),
    ({"n_per_class": 2.5}, "n_per_class"),
])
def test_parameter_validation_names_the_parameter(bad, name):
    with pytest.raises(DatasetError, match=name):
        ChestXray14(**bad)


def test_remote_files_carry_the_published_md5():
    files = ChestXray14(archives=[1, 12]).remote_files()
    assert files[1].md5 == "fe8ed0a6961412fddcbb3603c11b3698" and files[1].unpack
    assert files[2].name == "images_012.tar.gz" and files[2].md5 == "dc9fda1757c2de0032b63347a7d2895c"
    assert ChestXray14(archives=3).remote_files()[1].name == "images_003.tar.gz"


def test_missing_or_corrupt_files_name_the_file(tmp_path):
    info = write_raw(tmp_path)
    source = ChestXray14(**info["params"])
    with pytest.raises(DatasetError, match="images_001"):
        source.read(tmp_path)  # archives not unpacked
    unpack_all(tmp_path, source)
    (tmp_path / "images_002" / "images" / "00000011_000.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="00000011_000.png"):
        source.read(tmp_path)
    csv = tmp_path / "Data_Entry_2017_v2020.csv"
    csv.write_text(csv.read_text().replace("Finding Labels", "Findings"))
    with pytest.raises(DatasetError, match="Data_Entry_2017_v2020.csv.*Finding Labels"):
        source.read(tmp_path)
    csv.unlink()
    with pytest.raises(DatasetError, match="Data_Entry_2017_v2020.csv"):
        source.read(tmp_path)
