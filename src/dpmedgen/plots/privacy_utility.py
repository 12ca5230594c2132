"""Privacy-utility trade-off: one panel per metric, utility against the privacy budget ε."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Collection, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from ..results import EPSILON_TARGET, METRIC_COLUMNS, NON_PRIVATE, REAL_DATA
from .style import (
    model_label,
    mean_ci95,
    model_marker,
    new_figure,
    privacy_color,
    privacy_dashes,
    privacy_label,
    privacy_sort_key,
    range_bounds,
    reference_dashes,
    save_figure,
)

REQUIRED_COLUMNS = METRIC_COLUMNS


def _metric_order(names: Sequence[str], metric_info: Mapping[str, Any]) -> list[str]:
    known = [m for m in metric_info if m in names]
    return known + sorted(m for m in names if m not in metric_info)


def _ylabel(metric: str, metric_info: Mapping[str, Any]) -> str:
    info = metric_info.get(metric)
    if info is None or info.higher_is_better is None:  # a count, a bound or a two-sided quantity: no direction
        return metric
    ideal = getattr(info, "ideal", None)
    if ideal is not None:  # an attack AUC: 0.31 leaks as much as 0.69, so neither "lower" nor "higher" is better
        return f"{metric}\n→ {ideal:g} is best (distance from it)"
    better = "↑ higher is better" if info.higher_is_better else "↓ lower is better"
    return f"{metric}\n{better}"


def _fmt_eps(e: float) -> str:
    return f"{e:g}"


def _reference_label(model: str) -> str:
    """Legend text of a model's dashed reference line (the downstream reference is real data, not a model)."""
    if model == REAL_DATA:
        return "classifier on real training data"
    return f"non-private ({model_label(model)})"


@dataclass(frozen=True)
class _Rows:
    """The rows to draw and the categories they hold (what the panels and the legend iterate over)."""

    ref: pd.DataFrame  # non-private rows: the reference lines
    priv: pd.DataFrame  # private rows with a finite ε > 0
    metric_names: list[str]
    models: list[str]
    privacies: list[str]
    ref_models: list[str]
    eps_values: list[float]


def _dataset_rows(metrics: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The dataset's rows without ``*_std`` helper metrics, ε and value numeric; raises ValueError if none."""
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")
    df = metrics.loc[metrics["dataset"] == dataset, list(REQUIRED_COLUMNS)].copy()
    if df.empty:
        present = sorted(map(str, metrics["dataset"].unique()))
        raise ValueError(f"no metric rows for dataset {dataset!r}; datasets present: {present}")
    df = df[~df["metric"].astype(str).str.endswith("_std")]
    if df.empty:
        raise ValueError(f"dataset {dataset!r} has only '*_std' helper metrics; nothing to plot")
    df[EPSILON_TARGET] = pd.to_numeric(df[EPSILON_TARGET], errors="coerce").astype(float)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    return df


def _drop_non_finite(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The rows with a finite value; warns about the others (they cannot be drawn)."""
    bad = ~np.isfinite(df["value"].to_numpy())
    if bad.any():
        desc = df.loc[bad, ["model", "privacy", EPSILON_TARGET, "seed", "metric", "value"]].to_dict("records")
        warnings.warn(f"{dataset}: dropping {int(bad.sum())} non-finite metric values (cannot be plotted): {desc}")
    return df[~bad]


def _split_rows(df: pd.DataFrame, dataset: str, metric_info: Mapping[str, Any]) -> _Rows:
    """Reference and private rows (warning about private rows without a finite ε > 0) and their categories."""
    is_ref = df["privacy"] == NON_PRIVATE
    ref = df[is_ref]
    priv = df[~is_ref]
    bad_eps = ~(np.isfinite(priv[EPSILON_TARGET].to_numpy()) & (priv[EPSILON_TARGET].to_numpy() > 0))
    if bad_eps.any():
        warnings.warn(f"{dataset}: dropping {int(bad_eps.sum())} private rows without a finite ε > 0")
    priv = priv[~bad_eps]

    metric_names = _metric_order(list(df["metric"].unique()), metric_info)
    if not metric_names:
        raise ValueError(f"dataset {dataset!r} has no finite metric values to plot")
    models = sorted(df["model"].unique(), key=str)
    return _Rows(
        ref=ref,
        priv=priv,
        metric_names=metric_names,
        models=models,
        privacies=sorted(priv["privacy"].unique(), key=privacy_sort_key),
        ref_models=sorted((m for m in models if m in set(ref["model"])), key=lambda m: (m == REAL_DATA, m)),  # ref last
        eps_values=sorted(priv[EPSILON_TARGET].unique()),
    )


def _draw_private_lines(ax, sub: pd.DataFrame, noise_of: Mapping[str, str] | None,
                        bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """One line per (model, technique): the mean over seeds at each ε, band = its 95 % t-interval over seeds,
    clipped to the metric's `bounds`."""
    for (model, privacy), line in sub.groupby(["model", "privacy"], sort=False):
        per_eps = line.groupby(EPSILON_TARGET)["value"]
        eps = np.array(sorted(per_eps.groups))
        mean = np.array([per_eps.get_group(e).mean() for e in eps])
        ci = np.clip(np.array([mean_ci95(per_eps.get_group(e).to_numpy()) for e in eps]), *bounds)
        color = privacy_color(privacy)
        ax.plot(eps, mean, color=color, dashes=privacy_dashes(privacy, noise_of), marker=model_marker(model),
                mec="white", mew=0.5, zorder=2.5)
        if np.any(ci[:, 1] > ci[:, 0]):
            ax.fill_between(eps, ci[:, 0], ci[:, 1], color=color, alpha=0.15, lw=0, zorder=1)


def _draw_references(ax, ref: pd.DataFrame, metric: str, ref_models: Sequence[str],
                      bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """Each model's non-private mean over seeds as a dashed line, its 95 % t-interval (clipped to the metric's
    `bounds`) as a band, its marker at the edge."""
    none_color = privacy_color(NON_PRIVATE)
    to_axes_x = transforms.blended_transform_factory(ax.transAxes, ax.transData)
    for i, model in enumerate(ref_models):
        vals = ref.loc[(ref["metric"] == metric) & (ref["model"] == model), "value"].to_numpy()
        if len(vals) == 0:
            continue
        mean, (lo, hi) = float(vals.mean()), np.clip(mean_ci95(vals), *bounds)
        ax.axhline(mean, color=none_color, lw=1.1, dashes=reference_dashes(i), zorder=1.6)
        if hi > lo:
            ax.axhspan(lo, hi, color=none_color, alpha=0.10, lw=0, zorder=0.5)
        # the model's marker at the right edge says which dashed line belongs to which model
        ax.plot([1.0], [mean], transform=to_axes_x, marker=model_marker(model), color=none_color,
                mfc="white", mew=1.0, ms=5, clip_on=False, zorder=3)


def _style_eps_axis(ax, eps_values: Sequence[float], xlabel: str, bottom_row: bool) -> None:
    """The ε axis: ticks at the plotted ε values, or a note that only non-private references exist."""
    if eps_values:
        lo, hi = min(eps_values), max(eps_values)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        ax.xaxis.set_major_locator(FixedLocator(eps_values))
        ax.set_xticklabels([_fmt_eps(e) for e in eps_values])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel if bottom_row else "")
    else:
        ax.set_xlim(1, 10)
        ax.xaxis.set_major_locator(NullLocator())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("no private runs: non-private reference only" if bottom_row else "")


def _style_y_axis(ax, metric: str, metric_info: Mapping[str, Any]) -> None:
    """The y label with the metric's direction, margins, and a readable window when every value is equal."""
    ax.set_ylabel(_ylabel(metric, metric_info))
    ax.margins(y=0.12)
    low, high = ax.get_ylim()
    if high - low < 1e-9:  # every value equal (e.g. all 0): a readable window, not a "1e-17" scale
        centre = round((low + high) / 2, 9)
        half = max(abs(centre) * 0.1, 0.05)
        ax.set_ylim(centre - half, centre + half)


def _legend_groups(rows: _Rows, no_guarantee: Collection[str], noise_of: Mapping[str, str] | None) -> list[list[Line2D]]:
    """Legend handles, one non-empty group each: colour = technique, marker = model, dashed = a model's reference."""
    none_color = privacy_color(NON_PRIVATE)
    groups: list[list[Line2D]] = [
        [
            Line2D([], [], color=privacy_color(p), lw=1.6, dashes=privacy_dashes(p, noise_of),
                   label=privacy_label(p) + (" (no guarantee)" if p in no_guarantee else ""))
            for p in rows.privacies
        ],
        [
            Line2D([], [], color="#777777", lw=0, marker=model_marker(m), ms=5, mec="white", mew=0.5,
                   label=model_label(m))
            for m in rows.models
            if m in set(rows.priv["model"])
        ],
        [
            Line2D([], [], color=none_color, lw=1.1, dashes=reference_dashes(i),
                   marker=model_marker(m), mfc="white", ms=5, label=_reference_label(m))
            for i, m in enumerate(rows.ref_models)
        ],
    ]
    return [g for g in groups if g]


def _place_legend(fig, groups: list[list[Line2D]], spare: list) -> None:
    """The shared legend: in the first empty panel slot if any, else under the panels, one column per group."""
    if not groups:
        return
    depth = max(len(g) for g in groups)
    blank = Line2D([], [], lw=0, label=" ")
    if spare:  # an empty panel slot: the legend goes there, one group under the other
        handles = [h for g in groups for h in g]
        spare[0].legend(handles=handles, loc="center", frameon=False, handlelength=2.6)
    else:  # otherwise under the panels; legends fill column-major, so pad groups to equal length
        handles = [h for g in groups for h in g + [blank] * (depth - len(g))]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(groups), frameon=False,
                   handlelength=2.6, columnspacing=2.0)


def plot_privacy_utility(
    metrics: pd.DataFrame,
    dataset: str,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    metric_info: Mapping[str, Any] | None = None,
    xlabel: str = "privacy budget ε (log scale)",
    no_guarantee: Collection[str] = (),
    noise_of: Mapping[str, str] | None = None,
    title: str | None = None,
) -> None:
    """Plot utility metrics against ε for one dataset and save to every path in ``paths``.

    ``xlabel`` should name the unit of ε (the study layer derives it from the privacy ledgers);
    techniques in ``no_guarantee`` are marked "(no guarantee)" in the legend, since their ε describes
    noise that protects no training record. ``noise_of`` maps a privacy mode to its noise type where the
    name does not say it (``functional``); ``title`` defaults to the dataset name.

    Style: colour = privacy technique, line style = noise type (solid Gaussian, dashed Laplace), marker =
    model; the same mapping as every other figure (``plots.style``).

    ``metrics`` is the long table ``dataset, model, privacy, epsilon_target, seed, metric, value`` (``epsilon_target`` is
    ``inf`` for ``privacy == "none"``). One panel per metric (``*_std`` helper metrics are skipped); x = ε on a
    log axis (finite ε only); one line per (model, privacy technique) with the mean over seeds and a band of
    its 95 % Student-t interval over seeds (none for one seed); each model's non-private mean is a
    horizontal reference line (a dash pattern per model, grey) with a light 95 % band. Bands are clipped to the
    values the metric can take (its documented range, ``style.range_bounds``).
    Non-finite metric values (e.g. ``psnr_nn = inf`` for exact copies) cannot be drawn: they are dropped with
    a warning. Raises ValueError when the table lacks columns or has no rows for ``dataset``.
    """
    if metric_info is None:
        from ..metrics import METRIC_INFO as metric_info  # lazy: avoids importing torch for plotting

    rows = _split_rows(_drop_non_finite(_dataset_rows(metrics, dataset), dataset), dataset, metric_info)
    n = len(rows.metric_names)
    ncols = 1 if n == 1 else (2 if n <= 4 else 3)
    nrows = math.ceil(n / ncols)
    fig = new_figure(3.35 * ncols, 2.35 * nrows + 0.25)
    axes = fig.subplots(nrows, ncols, squeeze=False)

    for k, metric in enumerate(rows.metric_names):
        ax = axes[k // ncols][k % ncols]
        ax.set_xscale("log")
        info = metric_info.get(metric)
        bounds = range_bounds(getattr(info, "range", ""))
        _draw_private_lines(ax, rows.priv[rows.priv["metric"] == metric], noise_of, bounds)
        _draw_references(ax, rows.ref, metric, rows.ref_models, bounds)
        _style_eps_axis(ax, rows.eps_values, xlabel, bottom_row=k + ncols >= n)
        _style_y_axis(ax, metric, metric_info)
    spare = [axes[k // ncols][k % ncols] for k in range(n, nrows * ncols)]
    for ax in spare:
        ax.set_axis_off()

    # one shared legend (never on top of data), one column per group
    _place_legend(fig, _legend_groups(rows, no_guarantee, noise_of), spare)
    fig.suptitle(str(dataset) if title is None else title, fontweight="bold")
    save_figure(fig, paths)
