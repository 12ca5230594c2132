"""Evaluate one run's samples against real held-out images, and gather every run into the study tables.

`results/metrics.parquet` is long: one row per (dataset, model, privacy, epsilon, seed, metric) with a
`value`. `results/privacy.parquet` has one row per run with its ledger's fields. Epsilon is a float;
`inf` marks the non-private reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dpmedgen.data.schema import read_image_set
from dpmedgen.data.split import read_splits, select_split
from dpmedgen.metrics import evaluate as compute_metrics
from dpmedgen.metrics.encoder import extract_features
from dpmedgen.privacy import read_ledger
from dpmedgen.runs import RunSpec

KEYS = ["dataset", "model", "privacy", "epsilon", "seed"]


def _write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _real_images(images_h5, splits_parquet, split: str, modality: str):
    return select_split(read_image_set(images_h5, modalities=[modality]), read_splits(splits_parquet), split)


def real_features(
    *,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    split: str,
    out_path: str | os.PathLike,
    batch_size: int = 64,
    threads: int = 1,
) -> None:
    """Encoder features of the real images of `split`, computed once and shared by every run's evaluation."""
    import torch

    torch.set_num_threads(threads)
    real = _real_images(images_h5, splits_parquet, split, modality)
    features = extract_features(real.modalities[modality], batch_size=batch_size)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"features": features, "patient_id": real.patient_id.tolist(), "slice": real.slice.tolist()}, tmp)
    os.replace(tmp, path)


def evaluate_run(
    run: RunSpec,
    *,
    samples_h5: str | os.PathLike,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    metrics: list[str],
    split: str = "test",
    batch_size: int = 64,
    threads: int = 1,
    real_features_file: str | os.PathLike | None = None,
    out_parquet: str | os.PathLike,
) -> pd.DataFrame:
    """Compare a run's samples with the real `modality` images of `split`; write and return the long
    metric rows. (A fusion run's fused images are compared with the real images of `modality` here; the
    fusion-specific metrics against each source are separate.)"""
    import torch

    torch.set_num_threads(threads)
    real = _real_images(images_h5, splits_parquet, split, modality)
    fake = read_image_set(samples_h5)
    if len(fake.modalities) != 1:
        raise ValueError(f"{samples_h5}: expected one generated modality, found {sorted(fake.modalities)}")
    (fake_pixels,) = fake.modalities.values()  # the trained modality, or "fused" for a fusion model
    features = None
    if real_features_file is not None:
        cached = torch.load(real_features_file, weights_only=True)
        if cached["patient_id"] != real.patient_id.tolist() or cached["slice"] != real.slice.tolist():
            raise ValueError(f"{real_features_file} was computed for other real images; delete it and rerun")
        features = cached["features"]
    values = compute_metrics(
        real.modalities[modality], fake_pixels, metrics, batch_size=batch_size, seed=run.seed, real_features=features
    )
    rows = pd.DataFrame(
        [run.as_dict() | {"metric": name, "value": float(v), "reference": f"{split} split", "n_real": len(real), "n_fake": len(fake)}
         for name, v in values.items()]
    )
    _write_parquet(rows, out_parquet)
    return rows


def aggregate(
    metric_files: Iterable[str | os.PathLike],
    ledger_files: Iterable[str | os.PathLike],
    out_metrics: str | os.PathLike,
    out_privacy: str | os.PathLike,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate per-run metric tables and privacy ledgers into the two study tables."""
    metric_files, ledger_files = list(metric_files), list(ledger_files)
    if not metric_files or not ledger_files:
        raise ValueError("nothing to aggregate: no per-run metric tables or ledgers were given")
    metrics = pd.concat([pd.read_parquet(f) for f in metric_files], ignore_index=True)
    metrics = metrics.sort_values(KEYS + ["metric"], kind="stable").reset_index(drop=True)

    records: list[dict[str, Any]] = []
    for f in ledger_files:
        ledger = read_ledger(f)
        # Nested / list fields are stored as JSON text so the table stays flat.
        records.append({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in ledger.items()} | {"ledger_path": os.fspath(f)})
    privacy = pd.DataFrame(records)
    privacy["epsilon_target"] = privacy["epsilon_target"].astype(float)
    privacy = privacy.sort_values(["dataset", "model", "privacy", "epsilon_target", "seed"], kind="stable").reset_index(drop=True)
    _write_parquet(metrics, out_metrics)
    _write_parquet(privacy, out_privacy)
    return metrics, privacy
