"""Deterministic, label-stratified train/val/test split by patient.

Splitting by patient (never by image) keeps every slice of a patient in one split, so no patient
leaks between training and evaluation. A split table has one row per patient with the columns
``patient_id, split, label, n_images`` (and optionally ``canary``: the train patients whose training images
carry a planted marker, see :mod:`dpmedgen.data.canary`) and is stored as parquet.

Allocation: patients are grouped by label; within each label (in increasing label order) the
patients, sorted by id, are shuffled with ``numpy.random.default_rng(seed)`` and cut into
consecutive blocks in ``SPLITS`` order. Block sizes come from largest-remainder rounding of
``fraction * n_label`` (ties go to the split listed first in ``SPLITS``), so they always sum to
``n_label``. If a label has at least as many patients as there are splits with a positive
fraction, every such split gets at least one patient of that label (taken from the largest split).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dpmedgen.data.schema import ImageSet
from dpmedgen.io import write_parquet

SPLITS = ("train", "val", "test")
COLUMNS = ("patient_id", "split", "label", "n_images")
OPTIONAL_COLUMNS = ("canary",)
_FRACTION_TOL = 1e-6


class SplitError(ValueError):
    """A split specification or split table is invalid."""


def _check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    if not isinstance(fractions, dict) or not fractions:
        raise SplitError(f"fractions must be a non-empty mapping split -> fraction, got {fractions!r}")
    clean: dict[str, float] = {}
    for key, value in fractions.items():
        if key not in SPLITS:
            raise SplitError(f"unknown split {key!r} in fractions; allowed: {', '.join(SPLITS)}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise SplitError(f"fraction for split {key!r} is not a number: {value!r}") from None
        if not math.isfinite(f) or f < 0:
            raise SplitError(f"fraction for split {key!r} must be a finite number >= 0, got {value!r}")
        clean[key] = f
    total = sum(clean.values())
    if abs(total - 1.0) > _FRACTION_TOL:
        raise SplitError(f"fractions must sum to 1, got {total!r} from {fractions!r}")
    # Renormalize away the tolerated rounding error so the allocation sums exactly.
    return {s: clean[s] / total for s in SPLITS if s in clean}


def _allocate(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder counts summing to n, with >= 1 per positive split when n allows."""
    names = list(fractions)
    quotas = [fractions[s] * n for s in names]
    counts = [int(math.floor(q + 1e-9)) for q in quotas]
    remainders = [q - c for q, c in zip(quotas, counts)]
    for idx in sorted(range(len(names)), key=lambda i: (-remainders[i], i))[: n - sum(counts)]:
        counts[idx] += 1
    positive = [i for i, s in enumerate(names) if fractions[s] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(len(names)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return dict(zip(names, counts))


def _patient_table(images: ImageSet) -> pd.DataFrame:
    frame = pd.DataFrame({"patient_id": images.patient_id.astype(str), "label": images.label.astype(int)})
    labels = frame.groupby("patient_id")["label"].unique()
    for pid, values in labels.items():
        if len(values) > 1:
            raise SplitError(f"patient {pid!r} has images with more than one label: {sorted(int(v) for v in values)}")
    counts = frame.groupby("patient_id").size()
    table = pd.DataFrame(
        {
            "patient_id": labels.index.astype(str),
            "label": [int(v[0]) for v in labels.values],
            "n_images": counts.reindex(labels.index).to_numpy(dtype=np.int64),
        }
    )
    return table.sort_values("patient_id", kind="stable").reset_index(drop=True)


def split_patients(images: ImageSet, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """One row per patient (``patient_id, split, label, n_images``), sorted by patient_id."""
    fracs = _check_fractions(fractions)
    table = _patient_table(images)
    if table.empty:
        raise SplitError("cannot split an image set without patients")
    if (table["patient_id"] == "").any():
        raise SplitError("images without a patient_id ('') cannot be split by patient")
    rng = np.random.default_rng(int(seed))
    assignment: dict[str, str] = {}
    for label in sorted(table["label"].unique()):
        pids = table.loc[table["label"] == label, "patient_id"].to_numpy()
        pids = pids[rng.permutation(len(pids))]
        start = 0
        for split, count in _allocate(len(pids), fracs).items():
            for pid in pids[start : start + count]:
                assignment[str(pid)] = split
            start += count
    table["split"] = table["patient_id"].map(assignment)
    out = table[list(COLUMNS)].copy()
    out["label"] = out["label"].astype(np.int64)
    out["n_images"] = out["n_images"].astype(np.int64)
    check_split(out, images)
    return out


def check_split(df: pd.DataFrame, images: ImageSet | None = None) -> None:
    """Raise SplitError unless ``df`` is a valid split table (and matches ``images`` when given)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SplitError(f"split table lacks column(s) {missing}; expected {list(COLUMNS)}")
    pids = df["patient_id"].astype(str)
    dup = pids[pids.duplicated(keep=False)]
    if not dup.empty:
        pid = sorted(dup.unique())[0]
        where = sorted(df.loc[pids == pid, "split"].astype(str))
        raise SplitError(f"patient {pid!r} appears {len(where)} times in the split table, in splits {where}")
    bad = df.loc[~df["split"].isin(SPLITS)]
    if not bad.empty:
        row = bad.iloc[0]
        raise SplitError(f"patient {row['patient_id']!r} has invalid split {row['split']!r}; allowed: {', '.join(SPLITS)}")
    if "canary" in df.columns:
        if df["canary"].dtype != bool:
            raise SplitError(f"split table column 'canary' must be boolean, got {df['canary'].dtype}")
        held_out = df.loc[df["canary"] & (df["split"] != "train")]
        if not held_out.empty:
            row = held_out.iloc[0]
            raise SplitError(f"patient {row['patient_id']!r} carries a canary but is in split {row['split']!r}; canaries go to train patients only")
    if images is None:
        return
    expected = _patient_table(images).set_index("patient_id")
    have = set(pids)
    absent = sorted(set(expected.index) - have)
    if absent:
        raise SplitError(f"patient {absent[0]!r} has images but is in no split ({len(absent)} such patient(s))")
    extra = sorted(have - set(expected.index))
    if extra:
        raise SplitError(f"patient {extra[0]!r} is in the split table but has no images ({len(extra)} such patient(s))")
    for pid, n, label in zip(pids, df["n_images"], df["label"]):
        if int(n) != int(expected.at[pid, "n_images"]):
            raise SplitError(f"patient {pid!r}: split table says {int(n)} images, the image set has {int(expected.at[pid, 'n_images'])}")
        if int(label) != int(expected.at[pid, "label"]):
            raise SplitError(f"patient {pid!r}: split table says label {int(label)}, the image set has {int(expected.at[pid, 'label'])}")


def write_splits(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Validate and write a split table to parquet atomically (temporary file, then rename)."""
    check_split(df)
    columns = list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df.columns]
    write_parquet(df[columns].sort_values("patient_id", kind="stable").reset_index(drop=True), path)


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read a split table written by :func:`write_splits` and validate it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist")
    df = pd.read_parquet(path)
    try:
        check_split(df)
    except SplitError as err:
        raise SplitError(f"{path}: {err}") from None
    return df


def select_split(images: ImageSet, splits: pd.DataFrame, split: str) -> ImageSet:
    """The subset of ``images`` whose patients belong to ``split``; SplitError if it is empty."""
    if split not in SPLITS:
        raise SplitError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    check_split(splits)
    pids = splits.loc[splits["split"] == split, "patient_id"].astype(str).to_numpy()
    if len(pids) == 0:
        raise SplitError(f"split {split!r} has no patients")
    mask = pd.Series(images.patient_id).isin(pids).to_numpy()  # hashing: np.isin sorts object arrays (seconds)
    if not mask.any():
        raise SplitError(f"split {split!r} has {len(pids)} patient(s) but none of them has images in this set")
    subset = images.subset(mask)
    subset.provenance["split"] = split
    return subset
