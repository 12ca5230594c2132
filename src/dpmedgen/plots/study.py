"""Figures of the study, built from its output files (what the plot rules call)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from dpmedgen.data.schema import read_image_set
from dpmedgen.data.split import read_splits, select_split
from dpmedgen.plots.privacy_utility import plot_privacy_utility
from dpmedgen.plots.samples import plot_sample_grid
from dpmedgen.plots.style import model_label, privacy_label, privacy_sort_key
from dpmedgen.runs import RunSpec

REAL_DATA = "real_data"  # the downstream classifier's reference rows (dpmedgen.evaluate.REAL_DATA; no torch import here)


def run_label(run: RunSpec) -> str:
    model, privacy = model_label(run.model), privacy_label(run.privacy)
    return f"{model} · {privacy}" if run.privacy == "none" else f"{model} · {privacy} ε={run.epsilon:g}"


def privacy_utility_figure(
    metrics_parquet: str | os.PathLike,
    privacy_parquet: str | os.PathLike,
    dataset: str,
    paths: Sequence[str | os.PathLike],
    metric_names: Sequence[str] | None = None,
    model: str | None = None,
) -> None:
    """Privacy-utility figure of `metric_names` (default: every metric in the table); the x-axis names the
    unit of ε from the runs' ledgers. Names absent from the table (e.g. fusion metrics of a study without a
    fusion model) are left out; none present is an error.

    `model` None draws every model of the dataset (the overview); a model name draws that model alone
    (with the downstream classifier's real-data reference, which belongs to every model)."""
    ledgers = pd.read_parquet(privacy_parquet)
    ledgers = ledgers[(ledgers["dataset"] == dataset) & (ledgers["privacy"] != "none")]
    formal = ledgers[ledgers["guarantee"] == "formal"]
    units = sorted(set(formal["unit"]))
    if len(units) == 1:
        xlabel = f"target ε per {units[0]} (log scale)"
    else:
        xlabel = "target ε (log scale; units differ, see privacy.parquet)" if units else "noise calibration ε (log scale)"
    if model is not None:
        ledgers = ledgers[ledgers["model"] == model]
    no_guarantee = set(ledgers.loc[ledgers["guarantee"] == "none", "privacy"])
    noise_of = {}
    if "noise" in ledgers.columns:
        for privacy, noises in ledgers.dropna(subset=["noise"]).groupby("privacy")["noise"]:
            if noises.nunique() == 1:
                noise_of[privacy] = str(noises.iloc[0])
    metrics = pd.read_parquet(metrics_parquet)
    if model is not None:
        if model not in set(metrics.loc[metrics["dataset"] == dataset, "model"]):
            raise ValueError(f"no metric rows for model {model!r} of dataset {dataset!r} in {metrics_parquet}")
        metrics = metrics[metrics["model"].isin([model, REAL_DATA])]
    if metric_names is not None:
        chosen = metrics[metrics["metric"].isin(list(metric_names))]
        if chosen.empty:
            raise ValueError(f"none of the metrics {list(metric_names)} (config key plot.privacy_utility_metrics) "
                             f"is in {metrics_parquet}")
        metrics = chosen
    title = dataset if model is None else f"{dataset} · {model_label(model)}"
    plot_privacy_utility(metrics, dataset, list(paths), xlabel=xlabel, no_guarantee=no_guarantee,
                         noise_of=noise_of, title=title)


def samples_figure(
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    split: str,
    modality: str,
    sample_files: Sequence[str | os.PathLike],
    paths: Sequence[str | os.PathLike],
    n_columns: int = 8,
) -> None:
    """Real images of `split` in the first row, then one row of samples per run (non-private first)."""
    real = select_split(read_image_set(images_h5, modalities=[modality]), read_splits(splits_parquet), split)
    rows = []
    for f in sample_files:
        samples = read_image_set(f)
        run = RunSpec(**samples.provenance["run"])
        (pixels,) = samples.modalities.values()  # the trained modality, or "fused" for a fusion model
        rows.append((run, pixels[:n_columns]))
    rows.sort(key=lambda r: (r[0].model, privacy_sort_key(r[0].privacy), -r[0].epsilon))
    plot_sample_grid(
        real.modalities[modality][:n_columns],
        [(run_label(run), pixels) for run, pixels in rows],
        list(paths),
        n_cols=n_columns,
        title=f"{real.dataset}: real {split} images and samples",
    )


def fusion_figure(
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    split: str,
    modalities: tuple[str, str],
    sample_files: Sequence[str | os.PathLike],
    paths: Sequence[str | os.PathLike],
    n_columns: int = 8,
) -> None:
    """MRI | PET | fused rows for the same `n_columns` evaluation pairs (evenly spaced over the split, so
    several patients appear): first the two source rows, then one fused row per fusion run (non-private
    first, then each technique by decreasing epsilon)."""
    part = select_split(read_image_set(images_h5, modalities=list(modalities)), read_splits(splits_parquet), split)
    pick = np.unique(np.linspace(0, len(part) - 1, min(n_columns, len(part))).round().astype(int))
    rows = []
    for f in sample_files:
        samples = read_image_set(f)
        if not (np.array_equal(samples.patient_id, part.patient_id) and np.array_equal(samples.slice, part.slice)):
            raise ValueError(f"{f}: its fused images are not the {split} pairs of {images_h5} in order; regenerate it")
        run = RunSpec(**samples.provenance["run"])
        (pixels,) = samples.modalities.values()
        rows.append((run, pixels[pick]))
    rows.sort(key=lambda r: (r[0].model, privacy_sort_key(r[0].privacy), -r[0].epsilon))
    second = (modalities[1].upper(), part.modalities[modalities[1]][pick])
    plot_sample_grid(
        part.modalities[modalities[0]][pick],
        [second] + [(f"fused · {run_label(run)}", pixels) for run, pixels in rows],
        list(paths),
        n_cols=len(pick),
        title=f"{part.dataset}: {modalities[0].upper()}-{modalities[1].upper()} fusion of {split} pairs",
        real_label=modalities[0].upper(),
    )
