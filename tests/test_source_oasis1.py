"""The oasis1 adapter on a tiny OASIS-1 download (tests/raw_fixtures/oasis1.py)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from raw_fixtures.oasis1 import MARKER_VIEW, PLANTED, SLICES, TABLE, table_rows, write_raw, xlsx_bytes

from dpmedgen.data.sources.base import DatasetError, unpacked_dir
from dpmedgen.data.sources.oasis1 import OASIS1


def _download(folder: Path) -> dict:
    """The fixture, with the archives unpacked the way the download machinery does."""
    raw = write_raw(folder)
    for remote in OASIS1(**raw["params"]).remote_files():
        if remote.unpack:
            with tarfile.open(folder / remote.name) as tar:
                tar.extractall(unpacked_dir(folder, remote), filter="data")
    return raw


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("oasis1")
    return folder, _download(folder)


@pytest.fixture(scope="module")
def images(raw):
    folder, info = raw
    return OASIS1(**info["params"]).read(folder)


def test_remote_files_are_the_chosen_discs_and_the_table():
    files = OASIS1(discs=[3, 1]).remote_files()
    assert [f.name for f in files] == [
        "oasis_cross-sectional_disc1.tar.gz", "oasis_cross-sectional_disc3.tar.gz", TABLE]
    assert files[1].url == "https://download.nrg.wustl.edu/data/oasis_cross-sectional_disc3.tar.gz"
    assert files[2].url == f"https://sites.wustl.edu/oasisbrains/files/2024/04/{TABLE}"
    assert [f.unpack for f in files] == [True, True, False]
    assert all(f.sha256 is None and f.md5 is None for f in files)  # nothing published
    assert [f.name for f in OASIS1().remote_files()] == ["oasis_cross-sectional_disc1.tar.gz", TABLE]


def test_fixture_files_match_remote_files(raw):
    _, info = raw
    assert info["files"] == [f.name for f in OASIS1(**info["params"]).remote_files()]


def test_patients_slices_labels_as_planted(images):
    pids = sorted(set(images.patient_id))
    assert pids == sorted(PLANTED)  # MR1 with a CDR only: no young subject, no MR2, no disc-3 subject
    assert len(pids) == 13 and sum(PLANTED.values()) == 7
    for pid in pids:
        rows = images.patient_id == pid
        assert images.slice[rows].tolist() == SLICES.get(pid, [4, 7])
        assert set(images.label[rows].tolist()) == {PLANTED[pid]}
    assert images.patient_id.tolist() == sorted(images.patient_id.tolist())  # deterministic order
    assert images.dataset == "oasis1"
    assert images.provenance["excluded"] == {"no_cdr": 2, "mr2_rescans": 1}
    assert images.provenance["class_counts"] == {"0": 12, "1": 14}


def test_values_orientation_and_scaling(images):
    mri = images.modalities["mri"]
    assert mri.shape == (26, 40, 32) and mri.dtype == np.float32  # 32 x 40 volumes -> 40 rows x 32 columns
    assert mri.min() >= 0.0 and mri.max() <= 1.0
    rows, cols = MARKER_VIEW
    for image in mri:
        # the anterior-right marker lands top left (anterior up, subject's right on the left) at 1.0
        assert np.all(image[rows, cols] == 1.0)
        assert image[-rows.stop:-rows.start, cols].max() < 0.5  # not flipped anterior-posterior
        assert image[rows, -cols.stop:-cols.start].max() < 0.5  # not flipped left-right
        brain = image[image > 0.1]
        assert abs(float(np.median(brain)) - 0.2) < 0.01  # 600 / 3000 (the 99.5th brain percentile)
    # the decoy unmasked image (all 50) was not used: the background is 0
    assert mri[0][0, 0] == 0.0


def test_classes_differ(images):
    mri = images.modalities["mri"]
    centre = mri[:, 17:23, 13:19].mean(axis=(1, 2))  # dark "ventricles": wider when CDR > 0
    assert centre[images.label == 1].mean() < centre[images.label == 0].mean() - 0.05


def test_deterministic(raw, images):
    folder, info = raw
    again = OASIS1(**info["params"]).read(folder)
    assert np.array_equal(again.modalities["mri"], images.modalities["mri"])
    assert np.array_equal(again.patient_id, images.patient_id) and np.array_equal(again.slice, images.slice)


def test_one_disc_and_resize(raw):
    folder, info = raw
    out = OASIS1(discs=[2], slices_per_subject=1, max_size=20).read(folder)
    assert sorted(set(out.patient_id)) == [p for p in sorted(PLANTED) if p >= "OAS1_0010"]
    assert out.modalities["mri"].shape[1:] == (20, 16)  # aspect kept, the longer side max_size
    assert out.slice.tolist() == [round(2 + 0.5 * 7)] * len(out)  # one slice: the middle of the band
    assert 0.0 <= out.modalities["mri"].min() and out.modalities["mri"].max() <= 1.0


def test_csv_table_accepted(tmp_path):
    _download(tmp_path)
    lines = [",".join("" if v is None else str(v) for v in row) for row in table_rows()]
    (tmp_path / TABLE).write_text("\n".join(lines) + "\n")
    out = OASIS1(discs=[1, 2], slices_per_subject=2).read(tmp_path)
    assert sorted(set(out.patient_id)) == sorted(PLANTED)


@pytest.mark.parametrize("params, name", [
    ({"discs": []}, "discs"), ({"discs": [0]}, "discs"), ({"discs": [13]}, "discs"), ({"discs": 1}, "discs"),
    ({"discs": [1, 1]}, "discs"), ({"discs": [True]}, "discs"),
    ({"slices_per_subject": 0}, "slices_per_subject"), ({"slices_per_subject": 2.5}, "slices_per_subject"),
    ({"slice_band": [0.7, 0.3]}, "slice_band"), ({"slice_band": [0.2]}, "slice_band"),
    ({"slice_band": [-0.1, 0.5]}, "slice_band"), ({"label": "cdr"}, "label"),
    ({"max_size": 4}, "max_size"), ({"max_size": True}, "max_size"),
])
def test_parameter_validation_names_the_parameter(params, name):
    with pytest.raises(DatasetError, match=rf"param {name}\b"):
        OASIS1(**params)


def _broken(tmp_path: Path) -> dict:
    return _download(tmp_path)["params"]


def test_missing_table(tmp_path):
    params = _broken(tmp_path)
    (tmp_path / TABLE).unlink()
    with pytest.raises(DatasetError, match=TABLE):
        OASIS1(**params).read(tmp_path)


def test_corrupt_table(tmp_path):
    params = _broken(tmp_path)
    (tmp_path / TABLE).write_bytes(xlsx_bytes(table_rows())[:300])  # truncated zip
    with pytest.raises(DatasetError, match=rf"{TABLE}.*download it again"):
        OASIS1(**params).read(tmp_path)


def test_table_without_cdr_column(tmp_path):
    params = _broken(tmp_path)
    rows = [[c for j, c in enumerate(r) if j != 7] for r in table_rows()]
    (tmp_path / TABLE).write_bytes(xlsx_bytes(rows))
    with pytest.raises(DatasetError, match=r"ID and CDR"):
        OASIS1(**params).read(tmp_path)


def test_missing_disc_folder(tmp_path):
    params = _broken(tmp_path)
    (tmp_path / "oasis_cross-sectional_disc2" / "disc2").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"disc2.*not found"):
        OASIS1(**params).read(tmp_path)


def test_missing_image(tmp_path):
    params = _broken(tmp_path)
    for p in (tmp_path / "oasis_cross-sectional_disc1").rglob("OAS1_0003_MR1_*masked_gfc.hdr"):
        p.unlink()
    with pytest.raises(DatasetError, match=r"OAS1_0003_MR1.*T88_111.*masked_gfc"):
        OASIS1(**params).read(tmp_path)


def test_truncated_image(tmp_path):
    params = _broken(tmp_path)
    img = next((tmp_path / "oasis_cross-sectional_disc2").rglob("OAS1_0011_MR1_*masked_gfc.img"))
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"OAS1_0011_MR1_mpr_n4_anon_111_t88_masked_gfc"):
        OASIS1(**params).read(tmp_path)
