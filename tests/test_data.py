"""Unit tests for dpmedgen.data: the brain_phantom cohort, preprocessing and patient splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpmedgen.data import (
    DATASETS,
    SPLITS,
    ImageSet,
    SchemaError,
    SplitError,
    check_split,
    make_brain_phantom,
    preprocess,
    read_image_set,
    read_splits,
    select_split,
    split_patients,
    write_image_set,
    write_splits,
)

N_PAT, N_SL, SIZE = 6, 3, 64


@pytest.fixture(scope="module")
def phantom():
    images, region = make_brain_phantom(
        n_patients=N_PAT, slices_per_patient=N_SL, size=SIZE, seed=0, progress=False, return_region=True
    )
    return images, region


def _toy_images(n_per_label: int = 10, seed: int = 0) -> ImageSet:
    """A cheap cohort of 2*n_per_label patients with 1-4 tiny images each, labels 0/1 balanced."""
    rng = np.random.default_rng(seed)
    pids, labels, slices = [], [], []
    for p in range(2 * n_per_label):
        k = int(rng.integers(1, 5))
        pids += [f"P{p:03d}"] * k
        labels += [p % 2] * k
        slices += list(range(k))
    n = len(pids)
    return ImageSet(
        modalities={"mri": rng.random((n, 4, 4), dtype=np.float32)},
        patient_id=np.array(pids),
        slice=np.array(slices),
        label=np.array(labels),
        dataset="toy",
    )


# --------------------------------------------------------------------------------------------
# brain_phantom
# --------------------------------------------------------------------------------------------


def test_registry_has_brain_phantom():
    assert "brain_phantom" in DATASETS
    assert DATASETS.get("brain_phantom").modalities == ("mri", "pet")


def test_phantom_shapes_dtypes_range(phantom):
    images, region = phantom
    assert set(images.modalities) == {"mri", "pet"}
    for name, arr in images.modalities.items():
        assert arr.shape == (N_PAT * N_SL, SIZE, SIZE), name
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
        assert arr.min() >= 0.0 and arr.max() <= 1.0
        assert arr.max() > 0.5, f"{name} looks empty"
    assert region.shape == (N_PAT * N_SL, SIZE, SIZE)
    assert images.dataset == "brain_phantom"
    assert images.slice.dtype == np.int32 and images.label.dtype == np.int8
    expected_ids = np.repeat([f"BP{i:04d}" for i in range(1, N_PAT + 1)], N_SL)
    np.testing.assert_array_equal(images.patient_id, expected_ids)
    # slices: increasing within a patient, inside z_range +- jitter
    sl = images.slice.reshape(N_PAT, N_SL)
    assert (np.diff(sl, axis=1) > 0).all()
    assert sl.min() >= 76 - 3 and sl.max() <= 134 + 3


def test_phantom_labels(phantom):
    images, _ = phantom
    per_patient = images.label.reshape(N_PAT, N_SL)
    assert (per_patient == per_patient[:, :1]).all(), "a patient's slices must share one label"
    assert per_patient[:, 0].sum() == round(0.5 * N_PAT)
    small = make_brain_phantom(n_patients=5, slices_per_patient=1, size=32, impaired_fraction=0.4, progress=False)
    assert small.label.sum() == 2 and set(np.unique(small.label)) == {0, 1}
    none = make_brain_phantom(n_patients=3, slices_per_patient=1, size=32, impaired_fraction=0.0, progress=False)
    assert none.label.sum() == 0


def test_phantom_provenance_and_roundtrip(phantom, tmp_path):
    images, _ = phantom
    prov = images.provenance
    assert prov["seed"] == 0
    assert prov["params"]["n_patients"] == N_PAT and prov["params"]["size"] == SIZE
    assert prov["params"]["deformation_mm"] == 4.0 and prov["params"]["noise_level"] == 0.03
    assert prov["nilearn_version"]
    assert any("MNI152" in v for v in prov["templates"].values())
    assert set(prov["latents"]) == set(np.unique(images.patient_id))
    write_image_set(tmp_path / "bp.h5", images)
    back = read_image_set(tmp_path / "bp.h5")
    np.testing.assert_array_equal(back.modalities["pet"], images.modalities["pet"])
    np.testing.assert_array_equal(back.patient_id, images.patient_id)
    assert back.provenance["params"] == prov["params"]


def test_phantom_deterministic():
    kw = dict(n_patients=2, slices_per_patient=2, size=32, progress=False)
    a = make_brain_phantom(seed=7, **kw)
    b = make_brain_phantom(seed=7, **kw)
    c = make_brain_phantom(seed=8, **kw)
    for m in ("mri", "pet"):
        assert np.array_equal(a.modalities[m], b.modalities[m])
        assert not np.array_equal(a.modalities[m], c.modalities[m])
    np.testing.assert_array_equal(a.slice, b.slice)
    np.testing.assert_array_equal(a.label, b.label)


def test_phantom_patients_differ(phantom):
    images, _ = phantom
    mri = images.modalities["mri"].reshape(N_PAT, N_SL, SIZE, SIZE)
    for i in range(1, N_PAT):
        assert np.abs(mri[0] - mri[i]).mean() > 0.01


def test_mri_and_pet_differ_but_are_paired(phantom):
    images, _ = phantom
    mri, pet = images.modalities["mri"], images.modalities["pet"]
    assert np.abs(mri - pet).mean() > 0.03
    # same anatomy: the two brain masks largely overlap
    for k in range(len(mri)):
        a, b = mri[k] > 0.2, pet[k] > 0.15
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert iou > 0.7, f"row {k}: MRI/PET brain masks overlap only {iou:.2f}"


def test_phantom_looks_like_a_brain(phantom):
    images, _ = phantom
    c = SIZE // 4
    for name, arr in images.modalities.items():
        centre = arr[:, c:-c, c:-c].mean(axis=(1, 2))
        corners = np.concatenate(
            [arr[:, :6, :6], arr[:, :6, -6:], arr[:, -6:, :6], arr[:, -6:, -6:]], axis=1
        ).mean(axis=(1, 2))
        assert (centre > 3 * corners + 0.05).all(), name
    # T1 contrast: the brain's intensity distribution spans dark CSF/GM to bright WM
    mri = images.modalities["mri"]
    for k in range(len(mri)):
        brain = mri[k][mri[k] > 0.15]
        lo, hi = np.percentile(brain, [10, 90])
        assert hi > 1.4 * lo, f"row {k}: too little tissue contrast ({lo:.2f} .. {hi:.2f})"


def test_impaired_pet_hypometabolism(phantom):
    images, region = phantom
    pet = images.modalities["pet"]
    labels = images.label.reshape(N_PAT, N_SL)[:, 0]
    brain = pet > 0.1
    roi = (region > 0.3) & brain
    rest = (region < 0.05) & brain
    roi_mean = np.array([pet[k][roi[k]].mean() if roi[k].any() else np.nan for k in range(len(pet))])
    rest_mean = np.array([pet[k][rest[k]].mean() for k in range(len(pet))])
    roi_pat = np.nanmean(roi_mean.reshape(N_PAT, N_SL), axis=1)
    ratio_pat = np.nanmean((roi_mean / rest_mean).reshape(N_PAT, N_SL), axis=1)
    assert np.isfinite(roi_pat).all()
    # absolute uptake (affected by global gain too) and uptake relative to the rest of the brain
    assert roi_pat[labels == 1].mean() < roi_pat[labels == 0].mean() - 0.01
    assert ratio_pat[labels == 1].mean() < ratio_pat[labels == 0].mean() - 0.03


def test_stronger_hypometabolism_lowers_roi_uptake():
    kw = dict(n_patients=2, slices_per_patient=2, size=32, impaired_fraction=1.0, seed=3, progress=False)
    a, reg = make_brain_phantom(hypometabolism_strength=0.0, return_region=True, **kw)
    b = make_brain_phantom(hypometabolism_strength=2.0, **kw)
    roi = reg > 0.3
    assert roi.any()
    assert b.modalities["pet"][roi].mean() < 0.9 * a.modalities["pet"][roi].mean()
    # MRI does not depend on the PET hypometabolism
    np.testing.assert_array_equal(a.modalities["mri"], b.modalities["mri"])


def test_larger_atrophy_mm_darkens_impaired_mri_more():
    """`atrophy_mm` (the fully atrophic template's ventricular enlargement) scales the MRI class effect: the same
    impaired patients lose more signal (tissue turned into dark CSF) at 10 mm than at 3 mm; PET follows (partial
    volume) and the identical anatomy, pose and noise draws keep everything else equal."""
    kw = dict(n_patients=2, slices_per_patient=2, size=32, impaired_fraction=1.0, seed=3, progress=False)
    none = make_brain_phantom(atrophy_strength=0.0, **kw).modalities["mri"]
    small = make_brain_phantom(atrophy_mm=3.0, **kw).modalities["mri"]
    large = make_brain_phantom(atrophy_mm=10.0, **kw).modalities["mri"]
    loss_small, loss_large = (none - small).sum(), (none - large).sum()
    assert 0 < loss_small and loss_large > 1.5 * loss_small
    with pytest.raises(ValueError, match="atrophy_mm"):
        make_brain_phantom(atrophy_mm=0.5, **kw)


def test_phantom_rejects_bad_arguments():
    with pytest.raises(ValueError):
        make_brain_phantom(n_patients=0, progress=False)
    with pytest.raises(ValueError):
        make_brain_phantom(n_patients=2, impaired_fraction=1.5, progress=False)


# --------------------------------------------------------------------------------------------
# preprocess
# --------------------------------------------------------------------------------------------


def test_preprocess_size_range_provenance(phantom):
    images, _ = phantom
    out = preprocess(images, 32)
    assert set(out.modalities) == {"mri", "pet"}
    for arr in out.modalities.values():
        assert arr.shape == (len(images), 32, 32) and arr.dtype == np.float32
        assert arr.min() >= 0.0 and arr.max() <= 1.0
        # per-image 99.5th-percentile normalization: every (non-empty) image reaches 1
        assert np.allclose(arr.reshape(len(arr), -1).max(axis=1), 1.0)
    np.testing.assert_array_equal(out.patient_id, images.patient_id)
    np.testing.assert_array_equal(out.slice, images.slice)
    np.testing.assert_array_equal(out.label, images.label)
    assert out.dataset == images.dataset
    assert out.provenance["preprocess"]["size"] == 32
    assert out.provenance["preprocess"]["percentile"] == 99.5
    assert out.provenance["params"] == images.provenance["params"], "existing provenance must be kept"
    assert "preprocess" not in images.provenance, "input must not be modified"


def test_preprocess_modality_selection_and_upsampling(phantom):
    images, _ = phantom
    out = preprocess(images, 96, modalities=["pet"])
    assert list(out.modalities) == ["pet"] and out.shape == (96, 96)
    assert out.provenance["preprocess"]["anti_aliasing"] is False
    with pytest.raises(SchemaError, match="ct"):
        preprocess(images, 32, modalities=["ct"])


def test_preprocess_pads_to_square_and_normalizes_robustly():
    img = np.zeros((2, 40, 80), np.float32)
    img[0, :, :] = 0.25
    img[0, 5, 5] = 1.0  # a single hot pixel must not set the scale
    out = preprocess(ImageSet({"mri": img}, ["a", "b"], [0, 0], [0, 0]), 40)
    arr = out.modalities["mri"]
    assert arr.shape == (2, 40, 40)
    # aspect preserved: the 40x80 content fills rows 10..29 of the 40x40 output, padding is zero
    assert arr[0, :8].max() == 0.0 and arr[0, -8:].max() == 0.0
    assert np.median(arr[0, 12:28]) == pytest.approx(1.0, abs=1e-3)
    assert not arr[1].any(), "an all-zero image stays zero"


# --------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------

FRACS = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_split_every_patient_once_and_disjoint():
    images = _toy_images()
    df = split_patients(images, FRACS, seed=0)
    assert list(df.columns) == ["patient_id", "split", "label", "n_images"]
    assert df["patient_id"].is_unique and list(df["patient_id"]) == sorted(set(images.patient_id))
    assert set(df["split"]) == set(SPLITS)
    groups = [set(df.loc[df["split"] == s, "patient_id"]) for s in SPLITS]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    counts = pd.Series(images.patient_id).value_counts()
    assert (df.set_index("patient_id")["n_images"] == counts.reindex(df["patient_id"]).to_numpy()).all()
    check_split(df, images)


def test_split_stratified_and_exact_counts():
    images = _toy_images(n_per_label=10)
    df = split_patients(images, FRACS, seed=1)
    table = df.groupby(["split", "label"]).size().unstack(fill_value=0)
    assert (table > 0).all().all(), "every split needs both labels"
    assert table.loc["train"].tolist() == [6, 6]
    assert table.loc["val"].tolist() == [2, 2] and table.loc["test"].tolist() == [2, 2]
    # uneven: 10 per label at 0.5/0.25/0.25 -> largest remainder gives 5/3/2 (ties to the first)
    df2 = split_patients(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=1)
    sizes = df2.groupby("split").size()
    assert sizes.sum() == 20 and sizes.to_dict() == {"train": 10, "val": 6, "test": 4}


def test_split_at_least_one_per_label_and_zero_fraction():
    images = _toy_images(n_per_label=3)
    df = split_patients(images, {"train": 0.9, "val": 0.05, "test": 0.05}, seed=0)
    table = df.groupby(["split", "label"]).size().unstack(fill_value=0)
    assert (table.reindex(list(SPLITS)) == 1).all().all()
    only_two = split_patients(images, {"train": 0.7, "val": 0.3}, seed=0)
    assert set(only_two["split"]) == {"train", "val"}
    all_train = split_patients(images, {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    assert set(all_train["split"]) == {"train"}


def test_split_deterministic_and_order_independent():
    images = _toy_images()
    a = split_patients(images, FRACS, seed=5)
    b = split_patients(images, FRACS, seed=5)
    pd.testing.assert_frame_equal(a, b)
    perm = np.random.default_rng(0).permutation(len(images))
    shuffled = images.subset(perm)
    pd.testing.assert_frame_equal(a, split_patients(shuffled, FRACS, seed=5))
    others = [split_patients(images, FRACS, seed=s)["split"].tolist() for s in (6, 7, 8)]
    assert any(o != a["split"].tolist() for o in others)


@pytest.mark.parametrize(
    "fractions, needle",
    [
        ({"train": 0.5, "val": 0.2, "test": 0.2}, "sum to 1"),
        ({"train": 1.2, "val": -0.2}, "'val'"),
        ({"train": 0.8, "holdout": 0.2}, "'holdout'"),
        ({"train": float("nan"), "val": 1.0}, "'train'"),
        ({"train": "a lot"}, "'train'"),
    ],
)
def test_split_bad_fractions(fractions, needle):
    with pytest.raises(SplitError, match=needle):
        split_patients(_toy_images(), fractions, seed=0)


def test_split_multilabel_patient():
    images = _toy_images()
    label = images.label.copy()
    rows = np.flatnonzero(images.patient_id == "P004")
    if len(rows) == 1:  # make sure P004 has two images
        pytest.skip("toy cohort gave P004 a single image")
    label[rows[-1]] = 1 - label[rows[-1]]
    bad = ImageSet(images.modalities, images.patient_id, images.slice, label)
    with pytest.raises(SplitError, match="P004"):
        split_patients(bad, FRACS, seed=0)


def test_check_split_catches_problems():
    images = _toy_images()
    df = split_patients(images, FRACS, seed=0)
    row = df.iloc[[3]].copy()
    pid = row["patient_id"].iloc[0]
    row["split"] = "test" if row["split"].iloc[0] != "test" else "train"
    dup = pd.concat([df, row], ignore_index=True)
    with pytest.raises(SplitError, match=pid) as err:
        check_split(dup)
    assert "train" in str(err.value) or "test" in str(err.value)
    bad_split = df.copy()
    bad_split.loc[0, "split"] = "holdout"
    with pytest.raises(SplitError, match="holdout"):
        check_split(bad_split)
    missing = df.drop(index=2)
    with pytest.raises(SplitError, match=df.loc[2, "patient_id"]):
        check_split(missing, images)
    wrong_n = df.copy()
    wrong_n.loc[5, "n_images"] += 1
    with pytest.raises(SplitError, match=df.loc[5, "patient_id"]):
        check_split(wrong_n, images)
    extra = pd.concat(
        [df, pd.DataFrame([{"patient_id": "ZZZ", "split": "train", "label": 0, "n_images": 1}])], ignore_index=True
    )
    with pytest.raises(SplitError, match="ZZZ"):
        check_split(extra, images)
    with pytest.raises(SplitError, match="n_images"):
        check_split(df.drop(columns="n_images"))


def test_write_read_splits_roundtrip(tmp_path):
    images = _toy_images()
    df = split_patients(images, FRACS, seed=0)
    path = tmp_path / "sub" / "splits.parquet"
    write_splits(df, path)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["splits.parquet"], "no temporary file left behind"
    back = read_splits(path)
    pd.testing.assert_frame_equal(back, df)
    check_split(back, images)
    # a corrupted file is rejected on read
    pd.concat([df, df.iloc[[0]]]).to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(SplitError, match=df.loc[0, "patient_id"]):
        read_splits(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError):
        read_splits(tmp_path / "missing.parquet")


def test_select_split():
    images = _toy_images()
    df = split_patients(images, FRACS, seed=0)
    parts = {s: select_split(images, df, s) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == len(images)
    for s, part in parts.items():
        wanted = set(df.loc[df["split"] == s, "patient_id"])
        assert set(part.patient_id) == wanted
        assert part.provenance["split"] == s
    only_train = split_patients(images, {"train": 1.0}, seed=0)
    with pytest.raises(SplitError, match="val"):
        select_split(images, only_train, "val")
    with pytest.raises(SplitError, match="holdout"):
        select_split(images, df, "holdout")


def test_split_on_phantom(phantom):
    images, _ = phantom
    df = split_patients(images, {"train": 0.5, "val": 0.0, "test": 0.5}, seed=0)
    assert len(df) == N_PAT and (df["n_images"] == N_SL).all()
    train = select_split(images, df, "train")
    test = select_split(images, df, "test")
    assert not set(train.patient_id) & set(test.patient_id)
    assert set(train.label) == {0, 1} and set(test.label) == {0, 1}
