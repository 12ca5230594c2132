"""File-to-file steps of the data stages (what the download / preprocess / split rules call)."""

from __future__ import annotations

import os
from typing import Any

from dpmedgen.data.canary import choose_canary_patients
from dpmedgen.data.preprocess import preprocess
from dpmedgen.data.schema import read_image_set, write_image_set
from dpmedgen.data.sources import build_dataset
from dpmedgen.data.split import split_patients, write_splits


def materialize_dataset(
    source: str,
    params: dict[str, Any],
    out_h5: str | os.PathLike,
    download_dir: str | os.PathLike,
    downloads: dict[str, dict[str, str]] | None = None,
    dataset: str | None = None,
) -> None:
    """Download (if needed) and read dataset adapter `source` into `out_h5`, named `dataset` (default: `source`)."""
    images = build_dataset(source, params, download_dir, downloads)
    images.dataset = dataset or source
    write_image_set(out_h5, images)


def preprocess_file(in_h5: str | os.PathLike, out_h5: str | os.PathLike, size: int) -> None:
    write_image_set(out_h5, preprocess(read_image_set(in_h5), size))


def split_file(
    in_h5: str | os.PathLike, out_parquet: str | os.PathLike, fractions: dict[str, float], seed: int, canary_patients: int = 0
) -> None:
    """Split by patient; with `canary_patients` > 0, flag that many train patients to carry the canary marker."""
    splits = split_patients(read_image_set(in_h5), fractions, seed)
    if canary_patients:
        splits = choose_canary_patients(splits, canary_patients, seed)
    write_splits(splits, out_parquet)
