"""The oai_knee adapter on a tiny OAI user folder (tests/raw_fixtures/oai_knee.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from raw_fixtures.oai_knee import LEFT_ONLY, NO_GRADE, PLANTED, REVERSED, SIZE, write_raw

from dpmedgen.data.sources.base import DatasetError
from dpmedgen.data.sources.oai_knee import OAIKnee


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oai")
    start = time.perf_counter()
    out = write_raw(folder)
    assert time.perf_counter() - start < 2.0
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 2_000_000
    return folder, out


@pytest.fixture(scope="module")
def images(raw):
    folder, out = raw
    return OAIKnee(**out["params"]).read(folder)


def _copy(raw, tmp_path) -> tuple[Path, dict]:
    folder, out = raw
    shutil.copytree(folder, tmp_path / "raw")
    params = dict(out["params"], root=str(tmp_path / "raw" / "OAI"))
    return tmp_path / "raw", params


def test_manual_and_no_remote_files(raw):
    source = OAIKnee(**raw[1]["params"])
    assert OAIKnee.manual and source.remote_files() == [] and raw[1]["files"] == []
    assert OAIKnee.modalities == ("mri",)


def test_patients_slices_labels_as_planted(images):
    # graded right knees only: the no-grade and left-only participants are excluded
    assert sorted(set(images.patient_id)) == sorted(PLANTED)
    assert NO_GRADE not in images.patient_id and LEFT_ONLY not in images.patient_id
    assert list(images.patient_id) == sorted(images.patient_id)
    for pid, (_, kl, n) in PLANTED.items():
        rows = images.patient_id == pid
        assert list(images.slice[rows]) == ([0] if n == 1 else [1, 2, 3])  # 3 central of 5
        assert set(images.label[rows]) == {int(kl >= 2)}
    # 9000103: READPRJ 15 says KL 2, READPRJ 37 says 0; project 15 wins
    assert set(images.label[images.patient_id == "9000103"]) == {1}
    per_patient = {pid: int(images.label[images.patient_id == pid][0]) for pid in PLANTED}
    assert sorted(per_patient.values()) == [0] * 6 + [1] * 6
    assert images.provenance["excluded"] == {"no_kl_grade": 2, "package_absent": 0}
    assert images.provenance["knees"] == 12 and images.dataset == "oai_knee"


def test_slices_sorted_by_instance_number(images):
    # pixel [0, 1] is InstanceNumber / 8 after per-slice max scaling; slice index i is InstanceNumber i + 1
    mri = images.modalities["mri"]
    np.testing.assert_allclose(mri[:, 0, 1], (images.slice + 1) / 8, atol=1e-6)
    rows = images.patient_id == REVERSED  # its files 001..005 carry InstanceNumber 5..1
    np.testing.assert_allclose(mri[rows][:, 0, 1], [2 / 8, 3 / 8, 4 / 8], atol=1e-6)


def test_values_shape_and_classes_differ(images):
    mri = images.modalities["mri"]
    assert mri.dtype == np.float32 and mri.shape == (len(images), SIZE, SIZE) == (34, 32, 32)
    assert mri.min() >= 0 and np.allclose(mri.max(axis=(1, 2)), 1.0)
    centre = mri[:, 10:22, 10:22].mean(axis=(1, 2))
    assert centre[images.label == 1].mean() > centre[images.label == 0].mean() + 0.1


def test_deterministic(raw, images):
    again = OAIKnee(**raw[1]["params"]).read(raw[0])
    assert np.array_equal(again.modalities["mri"], images.modalities["mri"])
    assert list(again.patient_id) == list(images.patient_id) and list(again.slice) == list(images.slice)


def test_params_threshold_slices_and_size(raw):
    folder, out = raw
    imgs = OAIKnee(**dict(out["params"], kl_threshold=3, slices_per_knee=1, max_size=16)).read(folder)
    assert imgs.shape == (16, 16) and len(imgs) == 12 and list(imgs.slice) == [2, 2, 2, 2, 0] + [2] * 7
    assert {pid: int(lab) for pid, lab in zip(imgs.patient_id, imgs.label)} == {
        pid: int(kl >= 3) for pid, (_, kl, _) in PLANTED.items()}
    assert imgs.modalities["mri"].min() >= 0 and imgs.modalities["mri"].max() <= 1


def test_left_series_and_numeric_side_codes(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    kl = Path(params["root"]) / "kxr_sq_bu00.txt"  # older ASCII releases code SIDE as 1/2
    kl.write_text(kl.read_text().replace("1: Right", "1").replace("2: Left", "2"))
    imgs = OAIKnee(**dict(params, series="SAG_IW_TSE_LEFT")).read(folder)
    assert list(imgs.patient_id) == ["9000101", "9000101"] and list(imgs.slice) == [0, 1]
    assert list(imgs.label) == [0, 0]  # the left knee is graded KL 0


def test_labels_file_absolute_and_upper_case(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    kl = Path(params["root"]) / "kxr_sq_bu00.txt"
    moved = tmp_path / "clinical" / "KXR_SQ_BU00.txt"
    moved.parent.mkdir()
    kl.rename(moved)
    imgs = OAIKnee(**dict(params, labels_file=str(tmp_path / "clinical" / "kxr_sq_bu00.txt"))).read(folder)
    assert len(set(imgs.patient_id)) == 12


def test_absent_package_is_skipped(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    shutil.rmtree(Path(params["root"]) / "00m" / "0.E.1")
    imgs = OAIKnee(**params).read(folder)
    assert sorted(set(imgs.patient_id)) == sorted(p for p, (pkg, _, _) in PLANTED.items() if pkg == "0.C.2")
    assert imgs.provenance["excluded"] == {"no_kl_grade": 2, "package_absent": 6}


@pytest.mark.parametrize("value", [None, ""])
def test_root_required(value):
    with pytest.raises(DatasetError, match=r"root is required.*nda\.nih\.gov/oai.*00m.*kxr_sq_bu00\.txt"):
        OAIKnee(root=value)


@pytest.mark.parametrize("param,value", [
    ("series", "SAG_T2_MAP_RIGHT"), ("series", "SAG_IW_TSE"), ("kl_threshold", 0), ("kl_threshold", 5),
    ("kl_threshold", True), ("slices_per_knee", 0), ("slices_per_knee", 2.5), ("max_size", 4), ("labels_file", ""),
])
def test_bad_params_name_the_param(param, value):
    with pytest.raises(DatasetError, match=param):
        OAIKnee(**{"root": "/nowhere", param: value})


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DatasetError, match=r"missing or empty.*nda\.nih\.gov/oai"):
        OAIKnee(root=str(tmp_path / "absent")).read(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"missing or empty"):
        OAIKnee(root=str(tmp_path / "empty")).read(tmp_path)


def test_missing_contents_csv(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    (Path(params["root"]) / "00m" / "contents.csv").unlink()
    with pytest.raises(DatasetError, match=r"contents\.csv not found.*0\.C\.2"):
        OAIKnee(**params).read(folder)


def test_malformed_contents_csv(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    (Path(params["root"]) / "00m" / "contents.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"contents\.csv: no column \['Folder'"):
        OAIKnee(**params).read(folder)


def test_missing_kl_file(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    (Path(params["root"]) / "kxr_sq_bu00.txt").unlink()
    with pytest.raises(DatasetError, match=r"kxr_sq_bu00\.txt not found.*labels_file"):
        OAIKnee(**params).read(folder)


def test_kl_file_without_kl_column(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    kl = Path(params["root"]) / "kxr_sq_bu00.txt"
    kl.write_text(kl.read_text().replace("V00XRKL", "V00XRKLX"))
    with pytest.raises(DatasetError, match=r"kxr_sq_bu00\.txt: no column \['V00XRKL'\]"):
        OAIKnee(**params).read(folder)


def test_missing_series_folder_in_present_package(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    series = sorted((Path(params["root"]) / "00m" / "0.C.2" / "9000102").glob("*/*"))[0]  # SAG_IW_TSE_RIGHT
    shutil.rmtree(series)
    with pytest.raises(DatasetError, match=rf"{series.name} is missing or empty"):
        OAIKnee(**params).read(folder)


def test_corrupt_dicom_names_the_file(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    bad = next((Path(params["root"]) / "00m" / "0.E.1" / "9000208").glob("*/*/003"))
    bad.write_bytes(b"not a dicom file")
    with pytest.raises(DatasetError, match=rf"9000208.*{bad.name}: not a readable DICOM"):
        OAIKnee(**params).read(folder)


def test_truncated_pixels_name_the_file(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    bad = next((Path(params["root"]) / "00m" / "0.C.2" / "9000101").glob("*/1*/003"))
    bad.write_bytes(bad.read_bytes()[:-1000])
    with pytest.raises(DatasetError, match=rf"9000101.*{bad.name}: cannot decode"):
        OAIKnee(**params).read(folder)


def test_no_graded_knee_at_all(raw, tmp_path):
    folder, params = _copy(raw, tmp_path)
    kl = Path(params["root"]) / "kxr_sq_bu00.txt"
    kl.write_text(kl.read_text().splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match=r"no SAG_IW_TSE_RIGHT series with a KL grade"):
        OAIKnee(**params).read(folder)
