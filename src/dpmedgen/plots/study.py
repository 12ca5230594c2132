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
from dpmedgen.results import NOT_A_DP_RELEASE_SHORT, REAL_DATA, deterministic_formal_runs
from dpmedgen.runs import RunSpec


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
    replace_one = "adjacency" in formal.columns and formal["adjacency"].astype(str).str.startswith("replace_one").all()
    if len(units) == 1:
        xlabel = f"target ε per {units[0]}{', replace-one' if replace_one and len(formal) else ''} (log scale)"
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
        own = metrics[(metrics["dataset"] == dataset) & (metrics["model"] == model)]
        reference = metrics[(metrics["model"] == REAL_DATA) & metrics["metric"].isin(set(own["metric"]))]
        metrics = pd.concat([own, reference])  # the real-data reference only beside the model's own values
    if metric_names is not None:
        chosen = metrics[metrics["metric"].isin(list(metric_names))]
        if chosen.empty:
            raise ValueError(f"none of the metrics {list(metric_names)} (config key plot.privacy_utility_metrics) "
                             f"is in {metrics_parquet}")
        metrics = chosen
    title = dataset if model is None else f"{dataset} · {model_label(model)}"
    if deterministic_formal_runs(ledgers):
        title += f"\n{NOT_A_DP_RELEASE_SHORT}"
    plot_privacy_utility(metrics, dataset, list(paths), xlabel=xlabel, no_guarantee=no_guarantee,
                         noise_of=noise_of, title=title)


def _check_indices(indices: Sequence[int], n: int, what: str) -> np.ndarray:
    idx = np.asarray(list(indices), dtype=int)
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise ValueError(f"config key plot.image_indices: {sorted(set(bad.tolist()))} out of range for {what} "
                         f"({n} images; valid 0-{n - 1})")
    return idx


def _spread(n_available: int, k: int) -> np.ndarray:
    """`k` positions evenly spaced over `n_available` (several patients of an ordered split appear)."""
    return np.unique(np.linspace(0, n_available - 1, min(k, n_available)).round().astype(int))


def _class_columns(labels: np.ndarray, classes: Sequence[int], per_class: Sequence[int], spread: bool) -> np.ndarray:
    """Positions of `per_class[i]` images of each class (evenly spread over the class, or its first ones)."""
    picks = []
    for c, k in zip(classes, per_class):
        where = np.flatnonzero(labels == c)
        picks.append(where[_spread(len(where), k)] if spread else where[:k])
    return np.concatenate(picks) if picks else np.zeros(0, int)


def comparison_figure(
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    split: str,
    modality: str,
    sample_files: Sequence[str | os.PathLike],
    paths: Sequence[str | os.PathLike],
    n_columns: int = 8,
    indices: Sequence[int] | None = None,
    title: str | None = None,
) -> None:
    """Comparison grid of one model: real `split` images first, then the non-private run, then each privacy
    technique by decreasing ε (one row per run; pass one seed's sample files).

    Columns: with `indices` (config key plot.image_indices), those positions in the real split and in every
    sample file, the same for every row. Without, when the real images and every run's samples carry class
    labels (class generators), the columns are grouped by class — an equal share of columns per class, the
    real images of a class evenly spread over its patients, a run's first samples of that class — with the
    class over each group; otherwise real images evenly spread over the split and each run's first samples.
    """
    real = select_split(read_image_set(images_h5, modalities=[modality]), read_splits(splits_parquet), split)
    runs = []
    for f in sample_files:
        samples = read_image_set(f)
        run = RunSpec(**samples.provenance["run"])
        (pixels,) = samples.modalities.values()  # the trained modality
        runs.append((run, pixels, samples.label, f))
    runs.sort(key=lambda r: (r[0].model, privacy_sort_key(r[0].privacy), -r[0].epsilon))
    groups = None
    if indices is not None:
        real_idx = _check_indices(indices, len(real), f"the {split} split of {images_h5}")
        picks = [_check_indices(indices, len(px), str(f)) for _, px, _, f in runs]
    else:
        classes = sorted(int(c) for c in np.unique(real.label) if c >= 0)
        labelled = len(classes) > 1 and all(set(np.unique(lab)) <= set(classes) for _, _, lab, _ in runs)
        if labelled:
            per_class = [n_columns // len(classes) + (i < n_columns % len(classes)) for i in range(len(classes))]
            real_idx = _class_columns(real.label, classes, per_class, spread=True)
            picks = [_class_columns(lab, classes, per_class, spread=False) for _, _, lab, _ in runs]
            groups = [(f"class {c}", k) for c, k in zip(classes, per_class)]
            if len(real_idx) != n_columns or any(len(p) != n_columns for p in picks):
                groups = None  # a class with too few images: fall back to the plain layout
        if groups is None:
            real_idx = _spread(len(real), n_columns)
            picks = [np.arange(min(n_columns, len(px))) for _, px, _, _ in runs]
    plot_sample_grid(
        real.modalities[modality][real_idx],
        [(run_label(run), px[pick]) for (run, px, _, _), pick in zip(runs, picks)],
        list(paths),
        n_cols=len(real_idx),
        title=title or f"{real.dataset}: real {split} images and samples",
        real_label=f"real ({split})",
        column_groups=groups,
    )


def fusion_figure(
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    split: str,
    modalities: tuple[str, str],
    sample_files: Sequence[str | os.PathLike],
    paths: Sequence[str | os.PathLike],
    n_columns: int = 8,
    indices: Sequence[int] | None = None,
    title: str | None = None,
) -> None:
    """MRI | PET | fused rows for the same evaluation pairs: first the two source rows, then one fused row per
    fusion run (non-private first, then each technique by decreasing ε). Every run fuses the same pairs of the
    split (`generate.fused_pair_indices`); the columns are `indices` (config key plot.image_indices) into them,
    or `n_columns` of them evenly spaced (so several patients appear)."""
    part = select_split(read_image_set(images_h5, modalities=list(modalities)), read_splits(splits_parquet), split)
    position = {(p, int(k)): i for i, (p, k) in enumerate(zip(part.patient_id, part.slice))}
    fused_pairs = None
    rows = []
    for f in sample_files:
        samples = read_image_set(f)
        pairs = list(zip(samples.patient_id, (int(k) for k in samples.slice)))
        if fused_pairs is None:
            fused_pairs = pairs
        if pairs != fused_pairs or any(pair not in position for pair in pairs):
            raise ValueError(f"{f}: its fused images are not the {split} pairs of {images_h5} that the other runs "
                             "fused; regenerate it")
        run = RunSpec(**samples.provenance["run"])
        (pixels,) = samples.modalities.values()
        rows.append((run, pixels))
    n_fused = len(fused_pairs) if fused_pairs is not None else len(part)
    if indices is not None:
        pick = _check_indices(indices, n_fused, f"the fused {split} pairs")
    else:
        pick = _spread(n_fused, n_columns)
    rows = [(run, pixels[pick]) for run, pixels in rows]
    sources = np.asarray([position[fused_pairs[i]] for i in pick] if fused_pairs is not None else pick)
    rows.sort(key=lambda r: (r[0].model, privacy_sort_key(r[0].privacy), -r[0].epsilon))
    second = (modalities[1].upper(), part.modalities[modalities[1]][sources])
    plot_sample_grid(
        part.modalities[modalities[0]][sources],
        [second] + [(f"fused · {run_label(run)}", pixels) for run, pixels in rows],
        list(paths),
        n_cols=len(pick),
        title=title or f"{part.dataset}: {modalities[0].upper()}-{modalities[1].upper()} fusion of {split} pairs",
        real_label=modalities[0].upper(),
    )


def model_comparison_figure(
    model: str,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    split: str,
    modalities: Sequence[str],
    sample_files: Sequence[str | os.PathLike],
    paths: Sequence[str | os.PathLike],
    n_columns: int = 8,
    indices: Sequence[int] | None = None,
) -> None:
    """The comparison grid of one model: :func:`fusion_figure` for a fusion model (two `modalities`, the
    (structural, functional) pair), :func:`comparison_figure` otherwise (one modality, the trained one)."""
    dataset = read_image_set(sample_files[0]).dataset if sample_files else "?"
    if len(modalities) == 2:
        fusion_figure(images_h5, splits_parquet, split, (modalities[0], modalities[1]), sample_files, paths,
                      n_columns=n_columns, indices=indices,
                      title=f"{dataset} · {model_label(model)}: {modalities[0].upper()}-{modalities[1].upper()} "
                            f"fusion of {split} pairs")
    elif len(modalities) == 1:
        comparison_figure(images_h5, splits_parquet, split, modalities[0], sample_files, paths, n_columns=n_columns,
                          indices=indices, title=f"{dataset} · {model_label(model)}: real {split} images and samples")
    else:
        raise ValueError(f"comparison grid of {model!r}: expected one modality or a fusion pair, got {list(modalities)}")
