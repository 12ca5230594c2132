"""Training diagnostics: the curves of one training run, and the job cost of the whole study.

``plot_training_curves`` draws one run's ``train_log.csv`` (one row per epoch, written by
``dpmedgen.train.engine``): a panel per ``loss_*`` column against the training step (the per-epoch mean thin
and light, an exponential moving average on top; one line per class generator when the log has a ``class``
column) and a panel of the privacy budget spent so far (the ``epsilon_spent`` column) with the ledger's target and
final ε. ``plot_cost`` draws the job-cost metrics of the study table (``cost_*``) as grouped bars per model
and privacy mode. ``training_curves_figure`` and ``cost_figure`` read the files the pipeline writes.

No torch import: plotting stays cheap and headless.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..io import read_json
from ..results import EPSILON_SPENT
from .style import (
    MODEL_MARKERS,
    mean_ci95,
    model_label,
    new_figure,
    privacy_color,
    privacy_label,
    privacy_noise,
    privacy_sort_key,
    save_figure,
)

LOSS_PREFIX = "loss_"
# one colour per class generator (Okabe-Ito tones not used for the privacy techniques first)
CLASS_COLORS = ["#E69F00", "#56B4E9", "#CC79A7", "#009E73", "#0072B2", "#D55E00", "#000000"]
SINGLE_COLOR = "#333333"  # the line of a log without a class column
RAW_ALPHA, RAW_LW = 0.35, 0.7  # the per-epoch values: thin and light
SMOOTH_LW = 1.4
TARGET_COLOR = "#777777"
TARGET_DASHES = (4.0, 2.0)
MAX_SPAN = 50
MARKERS_UP_TO = 20  # lines with at most this many points get markers (sparse logs stay readable)
LAPLACE_HATCH = "////"  # bars of Laplace modes, mirroring their dashed lines elsewhere


# ----------------------------------------------------------------------------------------------------------
# smoothing


def ema(values: Sequence[float] | np.ndarray, span: int) -> np.ndarray:
    """Bias-corrected exponential moving average with α = 2 / (span + 1):

    ``s_t = Σ_{i≤t} (1-α)^(t-i) x_i / Σ_{i≤t} (1-α)^(t-i)``

    (pandas ``ewm(span=span, adjust=True)``; the same as TensorBoard's debiased smoothing). It starts at
    ``x_0`` rather than being dragged towards 0, and ``span = 1`` returns the values unchanged.
    """
    x = np.asarray(values, dtype=float)
    if span < 1:
        raise ValueError(f"EMA span must be >= 1, got {span}")
    if len(x) == 0:
        return x.copy()
    return pd.Series(x).ewm(span=span, adjust=True).mean().to_numpy()


def default_span(n_rows: int) -> int:
    """EMA span (in log rows = epochs) for lines of ``n_rows`` points: a tenth of the line, at least 1 (no
    smoothing) and at most ``MAX_SPAN``."""
    return int(min(MAX_SPAN, max(1, round(n_rows / 10))))


# ----------------------------------------------------------------------------------------------------------
# reading


def _read_log(train_log: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(train_log, pd.DataFrame):
        source = str(train_log.attrs.get("source", "training log (DataFrame)"))
        df = train_log.copy()
    else:
        source = str(train_log)
        try:
            df = pd.read_csv(train_log)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{source}: training log is empty (no header, no rows)") from None
    if "step" not in df.columns:
        raise ValueError(f"{source}: training log has no 'step' column; columns: {list(map(str, df.columns))}")
    if df.empty:
        raise ValueError(f"{source}: training log is empty (header only, no rows)")
    df["step"] = pd.to_numeric(df["step"], errors="coerce")
    if df["step"].isna().all():
        raise ValueError(f"{source}: training log has no numeric 'step' values")
    df = df[df["step"].notna()]
    return df, source


def read_ledger(ledger: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any] | None:
    """A privacy ledger as a dict: given as a mapping, or read from ``privacy.json`` (``Infinity`` allowed)."""
    if ledger is None:
        return None
    if isinstance(ledger, Mapping):
        return dict(ledger)
    return read_json(ledger)


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------------------------------------
# training curves


GENERATED_SUFFIX = "_generated"  # a protected network's loss on generated data (dpmedgen.train.engine)


def _loss_title(column: str) -> str:
    name = column[len(LOSS_PREFIX):]
    generated = name.endswith(GENERATED_SUFFIX)
    words = name.removesuffix(GENERATED_SUFFIX).split("_")
    words = [w.upper() if w.lower() in {"mri", "pet", "ct", "gan"} else w for w in words]
    return " ".join(words) + (" loss on generated images" if generated else " loss")


def _protected_log(ledger: Mapping[str, Any] | None) -> bool:
    """A run whose networks read real data under DP-SGD: its log releases no loss on real data."""
    return bool(ledger) and ledger.get("mechanism") == "dpsgd"


def _class_colors(privacy: str | None, n: int) -> list[str]:
    """Shades of the run's technique colour, dark to light, one per class (colour keeps meaning technique,
    as in every other figure); the fixed CLASS_COLORS when the technique is unknown."""
    if privacy is None:
        return [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(n)]
    if n == 1:
        return [privacy_color(privacy)]
    shades = sns.dark_palette(privacy_color(privacy), n_colors=n + 2, reverse=True).as_hex()
    return shades[:n] if privacy != "none" else sns.light_palette("#111111", n_colors=n + 2, reverse=True).as_hex()[:n]


def _class_groups(df: pd.DataFrame, privacy: str | None = None) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, colour, rows sorted by step) per class generator; one group without a class column."""
    if "class" not in df.columns:
        color = SINGLE_COLOR if privacy is None else privacy_color(privacy)
        return [("all", color, df.sort_values("step", kind="stable"))]
    groups = []
    classes = df["class"].dropna().unique()
    try:
        classes = sorted(classes, key=float)
    except (TypeError, ValueError):
        classes = sorted(classes, key=str)
    colors = _class_colors(privacy, len(classes))
    for i, c in enumerate(classes):
        label = f"class {int(c)}" if _is_integral(c) else f"class {c}"
        rows = df[df["class"] == c].sort_values("step", kind="stable")
        groups.append((label, colors[i], rows))
    return groups


def _is_integral(c: Any) -> bool:
    try:
        return float(c) == int(float(c))
    except (TypeError, ValueError):
        return False


def _default_title(ledger: Mapping[str, Any] | None, source: str) -> str:
    if not ledger or "model" not in ledger or "privacy" not in ledger:
        return f"training curves: {source}"
    privacy = str(ledger["privacy"])
    parts = [str(ledger["dataset"])] if "dataset" in ledger else []
    parts += [model_label(str(ledger["model"])), privacy_label(privacy)]
    target = _float(ledger.get("epsilon_target"))
    if privacy != "none" and math.isfinite(target):
        parts.append(f"target ε = {target:g}")
    if "seed" in ledger:
        parts.append(f"seed {ledger['seed']}")
    return " · ".join(parts)


def _no_accounting_text(ledger: Mapping[str, Any] | None) -> str:
    if ledger is None:
        return "no privacy accounting\n(no finite ε in the log; no ledger given)"
    lines = [f"no privacy accounting\n(guarantee: {ledger.get('guarantee', 'none')})"]
    mechanism = str(ledger.get("mechanism", ""))
    target = _float(ledger.get("epsilon_target"))
    if mechanism.startswith("output") and math.isfinite(target):
        lines.append(f"{privacy_label(mechanism)} noise: ε = {target:g} per\nreleased image, added at generation")
    trained_by = ledger.get("trained_by")
    if isinstance(trained_by, Mapping) and "privacy" in trained_by:
        lines.append(f"log of the {privacy_label(str(trained_by['privacy']))} run it reuses")
    return "\n\n".join(lines)


def _numeric_columns(df: pd.DataFrame, ledger: Mapping[str, Any] | None, source: str) -> list[str]:
    """The log's ``loss_*`` columns, made numeric in ``df``, with ε spent as float column ``_eps``."""
    loss_cols = [c for c in df.columns if str(c).startswith(LOSS_PREFIX)]
    if not loss_cols and not _protected_log(ledger):
        raise ValueError(f"{source}: training log has no '{LOSS_PREFIX}*' column; columns: {list(map(str, df.columns))}")
    for c in loss_cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    eps_col = (pd.to_numeric(df[EPSILON_SPENT], errors="coerce") if EPSILON_SPENT in df.columns
               else pd.Series(np.nan, index=df.index))
    df["_eps"] = eps_col.astype(float)
    return loss_cols


def _resolve_span(span: int | None, groups: list[tuple[str, str, pd.DataFrame]]) -> int:
    """The EMA span: ``span``, or ``default_span`` of the longest line; raises ValueError below 1."""
    if span is None:
        span = default_span(max(len(rows) for _, _, rows in groups))
    if span < 1:
        raise ValueError(f"EMA span must be >= 1, got {span}")
    return span


def _draw_loss_panel(ax, col: str, groups: list[tuple[str, str, pd.DataFrame]], span: int, xlabel: str) -> int:
    """One loss panel (epoch rows and their EMA per class); returns how many non-finite values it left out."""
    smoothed = span > 1
    dropped = 0
    positive, finite_all = True, []
    for label, color, rows in groups:
        y = rows[col].to_numpy(dtype=float)
        x = rows["step"].to_numpy(dtype=float)
        ok = np.isfinite(y)
        dropped += int((~ok).sum())
        x, y = x[ok], y[ok]
        if len(y) == 0:
            continue
        finite_all.append(y)
        positive &= bool((y > 0).all())
        marker = "o" if len(y) <= MARKERS_UP_TO else None
        if smoothed:
            ax.plot(x, y, color=color, lw=RAW_LW, alpha=RAW_ALPHA, marker=marker, ms=2.2, gid=f"raw:{col}:{label}")
            ax.plot(x, ema(y, span), color=color, lw=SMOOTH_LW, gid=f"ema:{col}:{label}")
        else:  # too few rows to smooth: the rows themselves are the line
            ax.plot(x, y, color=color, lw=SMOOTH_LW, marker=marker or "o", ms=3, gid=f"raw:{col}:{label}")
    panel_title = _loss_title(col)
    if finite_all:
        allv = np.concatenate(finite_all)
        if positive and allv.min() > 0 and allv.max() / allv.min() > 100:
            ax.set_yscale("log")
            panel_title += " (log scale)"
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_title(panel_title)
    ax.set_ylabel("loss (epoch mean)")
    ax.set_xlabel(xlabel)
    return dropped


def _curve_legend_handles(groups: list[tuple[str, str, pd.DataFrame]], has_class: bool, span: int) -> list[Any]:
    """Legend handles of the loss lines: one per class (if any), then the raw / EMA line styles."""
    handles: list[Any] = []
    if has_class:
        handles += [Line2D([], [], color=color, lw=SMOOTH_LW, label=label) for label, color, _ in groups]
    if span > 1:
        handles += [
            Line2D([], [], color="#555555", lw=RAW_LW, alpha=RAW_ALPHA + 0.15, label="per-epoch mean"),
            Line2D([], [], color="#555555", lw=SMOOTH_LW, label=f"EMA (span {span} epochs)"),
        ]
    else:
        handles += [Line2D([], [], color="#555555", lw=SMOOTH_LW, marker="o", ms=3,
                           label="per-epoch mean (too few epochs to smooth)")]
    return handles


def plot_training_curves(
    train_log: str | os.PathLike | pd.DataFrame,
    ledger: Mapping[str, Any] | str | os.PathLike | None,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    title: str | None = None,
    *,
    span: int | None = None,
) -> None:
    """One figure of one training run, saved to every path in ``paths``.

    Panels: one per ``loss_*`` column against the step (x = the log's ``step``: optimizer steps per network,
    counted per class generator when there is a ``class`` column), each row being an epoch's mean loss,
    drawn thin and light, with a bias-corrected EMA of those rows on top (``ema``; span ``span``, default
    ``default_span`` of the longest line; span 1 draws the rows alone). With a ``class`` column there is a
    line per class ("class 0", "class 1", ...). A log spanning more than two decades of positive loss is
    drawn on a log axis (said in the axis label).

    The last panel is "ε spent": the finite values of the ``epsilon_spent`` column (empty cells, which the engine
    leaves between accountant calls, are skipped), the ledger's ``epsilon_target`` as a dashed line and its
    final ``epsilon_spent`` as a star at the last step; the axis names the ledger's unit and δ. A run without a
    finite ε in the log, or whose ledger states ``guarantee: none``, gets a panel saying "no privacy
    accounting" instead of an empty or infinite plot.

    ``ledger``: the run's ``privacy.json`` (a path or the parsed mapping) or None. ``title`` defaults to the
    run's identity from the ledger. A DP-SGD run's log holds only losses on generated data
    (``loss_<network>_generated``), and none for a network without a generated half (a denoiser): its panel
    then says so. Raises ValueError naming the file when the log is empty, has no ``step`` column or, for a
    run that DP-SGD does not protect, no ``loss_*`` column.
    """
    df, source = _read_log(train_log)
    ledger = read_ledger(ledger)
    loss_cols = _numeric_columns(df, ledger, source)
    groups = _class_groups(df, str(ledger["privacy"]) if ledger and "privacy" in ledger else None)
    has_class = "class" in df.columns
    span = _resolve_span(span, groups)

    n_loss_panels = max(len(loss_cols), 1)
    n = n_loss_panels + 1
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = new_figure(2.45 * ncols, 1.95 * nrows + 0.45)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xlabel = "step (per class generator)" if has_class else "step"

    dropped = sum(_draw_loss_panel(ax, col, groups, span, xlabel) for ax, col in zip(axes, loss_cols))
    if dropped:
        warnings.warn(f"{source}: {dropped} non-finite loss values not drawn")
    if not loss_cols:  # e.g. a DP-SGD denoiser: its only loss is on real data, which the log does not release
        axes[0].text(0.5, 0.5, "no loss released:\nthe protected networks' losses\nare statistics of real training data",
                     ha="center", va="center", transform=axes[0].transAxes, color="#555555")
        axes[0].set_axis_off()

    eps_ax = axes[n_loss_panels]
    eps_handles = _plot_epsilon(eps_ax, groups, ledger, xlabel)
    for ax in axes[n:]:
        ax.set_axis_off()

    # one legend under the panels (never on top of data)
    handles = _curve_legend_handles(groups, has_class, span) + eps_handles
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False,
               handlelength=2.2, columnspacing=1.5)
    fig.suptitle(_default_title(ledger, source) if title is None else title, fontweight="bold")
    save_figure(fig, paths)


def _plot_epsilon(ax, groups, ledger: Mapping[str, Any] | None, xlabel: str) -> list[Any]:
    """The ε-spent panel; returns its legend handles."""
    ax.set_title("ε spent")
    guarantee = ledger.get("guarantee") if ledger else None
    finite_any = any(np.isfinite(rows["_eps"].to_numpy()).any() for _, _, rows in groups)
    if guarantee == "none" or not finite_any:
        ax.text(0.5, 0.5, _no_accounting_text(ledger), ha="center", va="center", transform=ax.transAxes,
                fontsize=7.5, color="#333333", linespacing=1.3, gid="no_accounting")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        return []

    handles: list[Any] = []
    top, last_step = 0.0, None
    # classes often spend the same ε (same sampling, same steps): earlier classes are drawn wider underneath,
    # so coinciding lines show as one two-tone line instead of hiding each other
    for k, (label, color, rows) in enumerate(groups):
        y = rows["_eps"].to_numpy(dtype=float)
        x = rows["step"].to_numpy(dtype=float)
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(y) == 0:
            continue
        marker = "o" if len(y) <= MARKERS_UP_TO else None
        extra = (len(groups) - 1 - k) * (min(1.2, 2.4 / (len(groups) - 1)) if len(groups) > 1 else 0.0)
        ax.plot(x, y, color=color, lw=SMOOTH_LW + extra, marker=marker, ms=3 + extra, gid=f"eps:{label}")
        top = max(top, float(y.max()))
        last_step = float(x.max()) if last_step is None else max(last_step, float(x.max()))
    spent = np.concatenate([rows["_eps"].to_numpy(dtype=float) for _, _, rows in groups])
    spent = spent[np.isfinite(spent)]
    if len(spent) > 1 and np.ptp(spent) <= 1e-9 * max(1.0, abs(float(spent[0]))):
        # input perturbation, functional mechanism: the whole budget goes before the first step
        ax.text(0.5, 0.35, "constant: spent before training", ha="center", va="center", transform=ax.transAxes,
                fontsize=7.5, color="#444444", gid="eps_constant")
    ylabel = "ε spent"
    if ledger:
        target, final = _float(ledger.get("epsilon_target")), _float(ledger.get("epsilon_spent"))
        if math.isfinite(target):
            ax.axhline(target, color=TARGET_COLOR, lw=1.1, dashes=TARGET_DASHES, zorder=1.5, gid="eps_target")
            handles.append(Line2D([], [], color=TARGET_COLOR, lw=1.1, dashes=TARGET_DASHES, label=f"target ε = {target:g}"))
            top = max(top, target)
        if math.isfinite(final) and last_step is not None:
            ax.plot([last_step], [final], marker="*", ms=8, color="black", mec="white", mew=0.5, lw=0,
                    zorder=3, clip_on=False, gid="eps_final")
            handles.append(Line2D([], [], color="black", marker="*", ms=8, mec="white", mew=0.5, lw=0,
                                  label=f"ledger final ε = {final:.3g}"))
            top = max(top, final)
        unit, delta = ledger.get("unit"), _float(ledger.get("delta"))
        detail = ", ".join(([f"per {unit}"] if unit else []) + ([f"δ = {delta:g}"] if math.isfinite(delta) else []))
        if detail:
            ylabel += f"\n({detail})"
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    return handles


def training_curves_figure(
    run: str | os.PathLike,
    ledger_or_paths: Any,
    paths: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    title: str | None = None,
) -> None:
    """Training-curve figure of a run, from the files training writes. Two call forms:

    ``training_curves_figure(train_log_csv, privacy_json, paths)``: the log and the ledger (a path, a parsed
    mapping, or None for none), as the ``plot_training_curves`` rule has them;
    ``training_curves_figure(run_dir_or_train_log, paths)``: the run directory (holding ``train_log.csv``)
    or the log itself, with the ledger read from the ``privacy.json`` beside the log when there is one.
    """
    if paths is None:
        paths, ledger = ledger_or_paths, None
        auto_ledger = True
    else:
        ledger, auto_ledger = ledger_or_paths, False
    run = Path(run)
    log = run / "train_log.csv" if run.is_dir() else run
    if not log.exists():
        raise FileNotFoundError(f"no training log at {log}")
    if auto_ledger:
        beside = log.parent / "privacy.json"
        ledger = beside if beside.exists() else None
    plot_training_curves(log, ledger, paths, title=title)


# ----------------------------------------------------------------------------------------------------------
# cost

COST_REQUIRED = ("dataset", "model", "privacy", "metric", "value")
# (metric, panel title, kind) in panel order
COST_PANELS: list[tuple[str, str, str]] = [
    ("cost_train_wall_s", "training: wall time", "time"),
    ("cost_train_max_rss_mb", "training: peak memory (max RSS)", "memory"),
    ("cost_generate_wall_s", "generation: wall time", "time"),
    ("cost_evaluate_wall_s", "evaluation: wall time", "time"),
]


def _model_sort_key(model: str) -> tuple[int, str]:
    order = list(MODEL_MARKERS)
    return (order.index(model) if model in order else len(order), model)


def _unit(kind: str, largest: float) -> tuple[str, float]:
    """(axis unit, divisor) for values in seconds or MB."""
    if kind == "time":
        return ("min", 60.0) if largest >= 300 else ("s", 1.0)
    return ("GB", 1024.0) if largest >= 2048 else ("MB", 1.0)


def _cost_rows(metrics: pd.DataFrame, dataset: str) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """The dataset's finite cost values and the panels they fill; raises ValueError when there are none."""
    missing = [c for c in COST_REQUIRED if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}; expected {list(COST_REQUIRED)}")
    df = metrics[metrics["dataset"] == dataset]
    if df.empty:
        present = sorted(map(str, metrics["dataset"].unique()))
        raise ValueError(f"no metric rows for dataset {dataset!r}; datasets present: {present}")
    df = df[df["metric"].isin([m for m, _, _ in COST_PANELS])].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df = df[np.isfinite(df["value"].to_numpy())]
    panels = [p for p in COST_PANELS if p[0] in set(df["metric"])]
    if not panels:
        raise ValueError(f"dataset {dataset!r} has no cost metrics ({', '.join(m for m, _, _ in COST_PANELS)})")
    return df, panels


@dataclass(frozen=True)
class _Bar:
    """One bar of a cost panel: where it stands and the values behind it (mean, 95 % interval, each run)."""

    metric: str
    model: str
    privacy: str
    x: float
    width: float
    mean: float
    ci: tuple[float, float]
    values: np.ndarray


def _draw_cost_bar(ax, bar: _Bar, div: float, top: float, noise_of: Mapping[str, str] | None) -> bool:
    """A bar with its whisker (▲ where clipped at ``top``) and run markers; returns whether it was clipped."""
    (lo, hi), mean, x, key = bar.ci, bar.mean, bar.x, f"{bar.metric}:{bar.model}:{bar.privacy}"
    clipped = False
    laplace = privacy_noise(bar.privacy, noise_of) == "laplace"
    ax.bar(x, mean / div, bar.width, color=privacy_color(bar.privacy), edgecolor="white", lw=0.4,
           hatch=LAPLACE_HATCH if laplace else None, gid=f"bar:{key}", zorder=2)
    if hi > lo:
        ax.errorbar(x, mean / div, yerr=[[(mean - max(lo, 0.0)) / div], [(hi - mean) / div]], fmt="none",
                    ecolor="#222222", elinewidth=0.7, capsize=1.4, capthick=0.7, zorder=3, gid=f"ci:{key}")
        if hi / div > top:
            clipped = True
            ax.plot([x], [1.0], transform=ax.get_xaxis_transform(), marker="^", ms=3.2, color="#222222",
                    lw=0, clip_on=False, zorder=4)
    if len(bar.values) > 1:  # the runs behind the bar
        ax.plot(np.full(len(bar.values), x), bar.values / div, lw=0, marker="o", ms=2.0, mfc="white",
                mec="#222222", mew=0.5, zorder=3.5, gid=f"runs:{key}")
    return clipped


def _draw_cost_panel(ax, sub: pd.DataFrame, panel: tuple[str, str, str], models: list[str], privacies: list[str],
                     noise_of: Mapping[str, str] | None) -> bool:
    """One grouped bar chart (x = model, a bar per privacy mode); returns whether any whisker was clipped."""
    metric, panel_title, kind = panel
    width = 0.84 / len(privacies)
    stats = {}
    for (model, privacy), vals in sub.groupby(["model", "privacy"])["value"]:
        v = vals.to_numpy()
        stats[(model, privacy)] = (float(v.mean()), mean_ci95(v), v)
    unit, div = _unit(kind, max(m for m, _, _ in stats.values()))
    # the axis shows the data (every run's value); an interval running past it is clipped and marked ▲
    # (with two values, e.g. two ε of one seed, the t-interval is ±12.7 half-ranges wide)
    top = 1.12 * float(sub["value"].max()) / div
    clipped_any = False
    for i, model in enumerate(models):
        for j, privacy in enumerate(privacies):
            if (model, privacy) not in stats:
                continue
            mean, ci, values = stats[(model, privacy)]
            bar = _Bar(metric, model, privacy, i + (j - (len(privacies) - 1) / 2) * width, width, mean, ci, values)
            clipped_any |= _draw_cost_bar(ax, bar, div, top, noise_of)
    ax.set_xticks(range(len(models)), [model_label(m) for m in models])
    ax.set_xlim(-0.5, len(models) - 0.5)
    ax.set_ylim(0, top if top > 0 else 1.0)
    ax.grid(axis="x", visible=False)
    ax.set_title(panel_title)
    ax.set_ylabel(("time" if kind == "time" else "memory") + f" ({unit})")
    return clipped_any


def _cost_legend(fig, privacies: list[str], panels: list[tuple[str, str, str]], clipped_any: bool,
                 noise_of: Mapping[str, str] | None) -> None:
    """The legend under the panels, in two rows, with the notes (what bars and whiskers show) as its title."""
    # two rows, so the modes of one technique (Laplace above Gaussian) share a column
    handles: list[Any] = [
        Patch(facecolor=privacy_color(p), edgecolor="white", lw=0.4,
              hatch=LAPLACE_HATCH if privacy_noise(p, noise_of) == "laplace" else None, label=privacy_label(p))
        for p in privacies
    ]
    if len(handles) % 2:
        handles.append(Line2D([], [], lw=0, label=" "))
    handles.append(Line2D([], [], lw=0, marker="o", ms=2.5, mfc="white", mec="#222222", mew=0.6, label="one run"))
    handles.append(Line2D([], [], color="#222222", lw=0.7, marker="_", ms=4, label="95 % interval"))
    notes = ["bar: mean over seeds and ε; whisker: 95 % Student-t interval of that mean"
             + ("; ▲: whisker runs past the axis" if clipped_any else "")]
    if "cost_train_wall_s" in {p[0] for p in panels} and any(str(p).startswith("output_") for p in privacies):
        notes.append("output perturbation reuses the non-private generator: its train job only copies it")
    # the notes are the legend's title: constrained layout keeps legend and notes clear of the panels
    fig.legend(handles=handles, loc="outside lower center", ncol=max(1, len(handles) // 2), frameon=False,
               handlelength=1.6, handleheight=1.0, columnspacing=1.4, title="\n".join(notes),
               title_fontproperties={"size": 7}, alignment="center")


def plot_cost(
    metrics: pd.DataFrame,
    dataset: str,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    noise_of: Mapping[str, str] | None = None,
    title: str | None = None,
) -> None:
    """Job cost of one dataset's runs, saved to every path in ``paths``.

    Panels (each left out when its metric is absent): training wall time, training peak memory
    (``cost_train_max_rss_mb``), generation and evaluation wall time. Each is a grouped bar chart: x = model,
    one bar per privacy mode (``PRIVACY_ORDER``; colour = technique, hatched = Laplace noise, as Laplace is
    dashed elsewhere); bar = mean over seeds and ε of the job's value, error bar = its 95 % Student-t
    interval (``mean_ci95``; none for a single value). Units (s or min, MB or GB) are in the axis labels.

    ``metrics`` is the long study table (``dataset, model, privacy, epsilon_target, seed, metric, value``).
    Raises ValueError for missing columns, no rows for ``dataset`` or no cost metric at all.
    """
    df, panels = _cost_rows(metrics, dataset)
    models = sorted(df["model"].unique(), key=_model_sort_key)
    privacies = sorted(df["privacy"].unique(), key=privacy_sort_key)

    n = len(panels)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = new_figure(3.5 * ncols, 2.1 * nrows + 0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    clipped_any = False
    for ax, panel in zip(axes, panels):
        clipped_any |= _draw_cost_panel(ax, df[df["metric"] == panel[0]], panel, models, privacies, noise_of)
    for ax in axes[n:]:
        ax.set_axis_off()

    _cost_legend(fig, privacies, panels, clipped_any, noise_of)
    fig.suptitle(f"{dataset}: job cost" if title is None else title, fontweight="bold")
    save_figure(fig, paths)


def cost_figure(
    metrics_parquet: str | os.PathLike,
    dataset: str,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    privacy_parquet: str | os.PathLike | None = None,
) -> None:
    """Cost figure of ``dataset`` from the study table ``metrics.parquet``; ``privacy_parquet`` (the ledger
    table), when given, supplies the noise type of modes whose name does not say it (``functional``)."""
    metrics = pd.read_parquet(metrics_parquet)
    noise_of: dict[str, str] = {}
    if privacy_parquet is not None:
        ledgers = pd.read_parquet(privacy_parquet)
        ledgers = ledgers[ledgers["dataset"] == dataset]
        if "noise" in ledgers.columns:
            for privacy, noises in ledgers.dropna(subset=["noise"]).groupby("privacy")["noise"]:
                if noises.nunique() == 1:
                    noise_of[str(privacy)] = str(noises.iloc[0])
    try:
        plot_cost(metrics, dataset, paths, noise_of=noise_of)
    except ValueError as err:
        raise ValueError(f"{metrics_parquet}: {err}") from None


__all__ = [
    "CLASS_COLORS",
    "COST_PANELS",
    "cost_figure",
    "default_span",
    "ema",
    "plot_cost",
    "plot_training_curves",
    "read_ledger",
    "training_curves_figure",
]
