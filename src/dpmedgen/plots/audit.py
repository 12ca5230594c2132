"""Privacy audit: membership-inference attacks against the bound that the runs' DP claims put on them.

One row of panels per attack (``mia_dcr``, ``mia_discriminator``), three columns:

(a) attack AUC against the claimed ε, with the largest AUC any test can reach under (ε, δ)-DP
    (:func:`dp_auc_bound`);
(b) TPR at FPR = 1 % against the claimed ε, with the DP bound ``dp_tpr_bound(0.01, ε, δ)``;
(c) the attack's empirical ε lower bound (Clopper-Pearson, ``{attack}_eps_lower_at_fpr1pct_{level}``) against
    the claimed ε, with the diagonal: a lower bound above it contradicts the claim (marked, and warned about).

The claimed ε is the per-patient ε of the run's ledger (``epsilon_per_patient`` in privacy.parquet, read by
:func:`dpmedgen.metrics.membership.patient_privacy`, which the metric rows were computed with): members and
non-members are different patients, so the per-patient (ε, δ) is the sound bound at both attack levels (see
the module docstring of :mod:`dpmedgen.metrics.membership`). The target ε of the run name is not used.

Runs without a formal guarantee (output perturbation, non-private) claim no ε: the non-private runs are
horizontal reference lines per model, the other no-guarantee techniques are left out and named in a note.

``dpmedgen.metrics`` imports torch, so its functions are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from ..results import (
    EPSILON_TARGET,
    METRIC_COLUMNS,
    NON_PRIVATE,
    NOT_A_DP_RELEASE_SHORT,
    PRIVACY_COLUMNS,
    RUN_KEYS,
    deterministic_formal_runs,
)
from .style import (
    mean_ci95,
    model_label,
    model_marker,
    new_figure,
    privacy_color,
    privacy_dashes,
    privacy_label,
    privacy_sort_key,
    reference_dashes,
    save_figure,
)

__all__ = ["dp_auc_bound", "plot_privacy_audit", "privacy_audit_figure"]

LEVELS = ("patient", "image")
FPR = 0.01  # the operating point of panels (b) and (c): metric suffix "fpr1pct"
_KEY = list(RUN_KEYS)

ATTACK_LABELS: dict[str, str] = {
    "mia_dcr": "distance-to-closest-record attack (GAN-Leaks, black box)",
    "mia_discriminator": "discriminator attack (LOGAN, white box)",
}
# panel key -> (metric name template, y label)
QUANTITIES: dict[str, tuple[str, str]] = {
    "auc": ("{prefix}_auc_{level}", "attack AUC"),
    "tpr": ("{prefix}_tpr_at_fpr1pct_{level}", "TPR at FPR = 1 %"),
    "eps_lower": ("{prefix}_eps_lower_at_fpr1pct_{level}", "empirical ε lower bound"),
}
BOUND_METRIC = "{prefix}_bound_tpr_at_fpr1pct_{level}"
N_NONMEMBERS_METRIC = "mia_n_nonmembers_{level}"
MAX_CERTIFIABLE_METRIC = "{prefix}_eps_lower_max_{level}"  # the largest epsilon the audit can certify

BOUND_COLOR = "#111111"
CHANCE_COLOR = "#8c8c8c"
VIOLATION_COLOR = "#E41A1C"
EXCLUDED_SHADE = "#bdbdbd"
_BOUND_DASHES: list[tuple[float, ...] | str] = ["", (1.2, 1.2), (5, 1.5, 1.2, 1.5), (3, 3)]
_DEFAULT_XLIM = (0.5, 20.0)  # the ε axis of a dataset without any formal run

# the FPR grid of dp_auc_bound: uniform plus geometric towards both ends, where the trade-off curve's kinks
# lie for large ε (at (1 - δ) / (1 + e^ε)) and small δ (at 1 - δ); trapezoid error <~ 2e-6 for any (ε, δ)
_TAIL = np.geomspace(1e-12, 0.5, 600)
_AUC_GRID = np.unique(np.clip(np.concatenate([np.linspace(0.0, 1.0, 2001), _TAIL, 1.0 - _TAIL]), 0.0, 1.0))


@functools.lru_cache(maxsize=4096)
def dp_auc_bound(epsilon: float, delta: float = 0.0) -> float:
    """Largest ROC AUC any membership test can reach against an (ε, δ)-DP mechanism.

    The area under the largest-TPR trade-off curve ``dp_tpr_bound(fpr, ε, δ)`` of
    :mod:`dpmedgen.metrics.membership` (Kairouz et al. 2015), integrated numerically over FPR ∈ [0, 1] (trapezoid
    rule on a grid that is dense near 0 and 1; the curve is piecewise linear, so the error is < ~2e-6).
    0.5 at ε = δ = 0 (no test beats chance), increasing in ε and δ, 1 at ε = ∞. (For pure ε-DP the area is
    e^ε / (1 + e^ε); the tests check the integral against that.)
    """
    from dpmedgen.metrics.membership import dp_tpr_bound  # lazy: imports torch

    epsilon, delta = float(epsilon), float(delta)
    dp_tpr_bound(0.5, epsilon, delta)  # validates the arguments (ValueError for ε < 0, δ < 0, NaN...)
    if not delta <= 1:
        raise ValueError(f"need 0 <= delta <= 1; got {delta}")
    if math.isinf(epsilon):
        return 1.0
    tpr = np.fromiter((dp_tpr_bound(float(f), epsilon, delta) for f in _AUC_GRID), float, len(_AUC_GRID))
    return float(min(1.0, np.trapezoid(tpr, _AUC_GRID)))


def _clean_ledger(row: Mapping[str, Any]) -> dict[str, Any]:
    """A privacy.parquet row as a ledger mapping: the columns that are missing (NaN) for this run dropped."""
    out = {}
    for k, v in row.items():
        if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
            continue
        out[k] = v
    return out


def _claims(ledgers: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its key, guarantee and claimed per-patient (ε, δ) (NaN when it claims none)."""
    from dpmedgen.metrics.membership import patient_privacy  # lazy: imports torch

    rows = []
    for rec in ledgers.to_dict("records"):
        claim = patient_privacy(_clean_ledger(rec))
        rows.append(
            dict(
                dataset=rec["dataset"], model=rec["model"], privacy=rec["privacy"],
                epsilon_target=float(rec[EPSILON_TARGET]), seed=rec["seed"], guarantee=rec["guarantee"],
                eps_claim=math.nan if claim is None else claim[0],
                delta_claim=math.nan if claim is None else claim[1],
            )
        )
    out = pd.DataFrame(rows, columns=_KEY + ["guarantee", "eps_claim", "delta_claim"])
    dup = out.duplicated(_KEY, keep=False)
    if dup.any():
        raise ValueError(f"privacy table has several rows for the same run: {out.loc[dup, _KEY].to_dict('records')}")
    return out


def _noise_of(ledgers: pd.DataFrame) -> dict[str, str]:
    noise_of: dict[str, str] = {}
    if "noise" in ledgers.columns:
        for privacy, noises in ledgers.dropna(subset=["noise"]).groupby("privacy")["noise"]:
            if noises.nunique() == 1:
                noise_of[privacy] = str(noises.iloc[0])
    return noise_of


def _nice_ticks(lo: float, hi: float, values: Sequence[float]) -> list[float]:
    nice = [m * 10.0**k for k in range(-4, 6) for m in (1, 2, 5)]
    ticks = [t for t in nice if lo <= t <= hi]
    if len(ticks) > 7:
        ticks = [t for t in ticks if round(math.log10(t), 6).is_integer()]
    if len(ticks) < 2:
        ticks = sorted({float(f"{v:.1g}") for v in values} | set(ticks))
    kept: list[float] = []
    for t in ticks:  # labels closer than a fifth of a decade would print on top of each other
        if not kept or math.log10(t) - math.log10(kept[-1]) >= 0.2:
            kept.append(t)
    return kept


def _fmt_tick(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def _dodge_transform(ax, fig, offset_pt: float):
    """Data coordinates shifted by a few points sideways: overlapping runs stay apart, but every artist keeps
    its true ε as x data."""
    return ax.transData + transforms.ScaledTranslation(offset_pt / 72.0, 0.0, fig.dpi_scale_trans)


@dataclass(frozen=True)
class _AuditData:
    """What the panels are drawn from: the runs by role, the ε axis and the per-run styling."""

    dataset: str
    level: str
    ref: pd.DataFrame  # attack rows of the non-private runs (horizontal references)
    placed: pd.DataFrame  # attack rows of the formal runs with a per-patient ε (placed on the ε axis)
    covered: set[tuple[Any, ...]]  # (attack, model, privacy, target ε, seed) of the runs that have bound rows
    max_certifiable: dict[str, float]  # per attack: the largest ε its audit can certify
    noise_of: dict[str, str]
    deltas: list[float]  # the formal runs' δ, largest first
    eps_claimed: list[float]
    xlo: float
    xhi: float
    xs: np.ndarray  # the ε grid of the bound curves
    dodge: dict[tuple[str, str], float]  # sideways offset (pt) per (model, technique)
    ref_models: list[str]
    ref_dashes: dict[str, Any]
    none_color: str


def _checked_ledgers(metrics: pd.DataFrame, privacy: pd.DataFrame, dataset: str, level: str) -> pd.DataFrame:
    """The ledger rows of `dataset`, after checking the level, the tables' columns and the dataset's presence."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    for name, table, required in (("metrics", metrics, METRIC_COLUMNS), ("privacy", privacy, PRIVACY_COLUMNS)):
        missing = [c for c in required if c not in table.columns]
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}; expected at least {list(required)}")
    present = sorted(map(str, metrics["dataset"].unique()))
    if dataset not in present:
        raise ValueError(f"no metric rows for dataset {dataset!r}; datasets present: {present}")
    ledgers = privacy[privacy["dataset"] == dataset]
    if ledgers.empty:
        present = sorted(map(str, privacy["dataset"].unique()))
        raise ValueError(f"no privacy (ledger) rows for dataset {dataset!r}; datasets present: {present}")
    return ledgers


def _attack_rows(metrics: pd.DataFrame, dataset: str, attacks: Sequence[str], level: str):
    """The dataset's finite attack rows, the attacks present, the non-member counts and each attack's max ε."""
    df = metrics.loc[metrics["dataset"] == dataset, list(METRIC_COLUMNS)].copy()
    df[EPSILON_TARGET] = pd.to_numeric(df[EPSILON_TARGET], errors="coerce").astype(float)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    attacks = [a for a in attacks if (df["metric"] == QUANTITIES["auc"][0].format(prefix=a, level=level)).any()]
    if not attacks:
        raise ValueError(
            f"dataset {dataset!r} has no membership-inference rows at level {level!r} "
            f"(e.g. 'mia_dcr_auc_{level}'): evaluate the mia_dcr / mia_discriminator metric families first"
        )
    wanted = {QUANTITIES[q][0].format(prefix=a, level=level) for a in attacks for q in QUANTITIES}
    wanted |= {BOUND_METRIC.format(prefix=a, level=level) for a in attacks}
    n_nonmembers = df.loc[df["metric"] == N_NONMEMBERS_METRIC.format(level=level), "value"]
    max_certifiable = {a: df.loc[df["metric"] == MAX_CERTIFIABLE_METRIC.format(prefix=a, level=level), "value"].max()
                       for a in attacks}
    df = df[df["metric"].isin(wanted)]
    bad = ~np.isfinite(df["value"].to_numpy())
    if bad.any():
        desc = df.loc[bad, ["model", "privacy", EPSILON_TARGET, "seed", "metric", "value"]].to_dict("records")
        warnings.warn(f"{dataset}: dropping {int(bad.sum())} non-finite attack values (cannot be plotted): {desc}")
        df = df[~bad]
    return df, attacks, n_nonmembers, max_certifiable


def _left_out_notes(left_out: pd.DataFrame, dataset: str) -> list[str]:
    """The note's lines on the private runs that are not on the ε axis, and why (warning where it is a defect)."""
    notes: list[str] = []
    no_ledger = left_out[left_out["guarantee"].isna()]
    if not no_ledger.empty:
        runs = no_ledger[["model", "privacy", EPSILON_TARGET, "seed"]].drop_duplicates().to_dict("records")
        warnings.warn(f"{dataset}: {len(runs)} private runs have attack rows but no ledger row; left out: {runs}")
        names = ", ".join(privacy_label(p) for p in sorted(set(no_ledger["privacy"]), key=privacy_sort_key))
        notes.append(f"Left out, no ledger row: {names}.")
    no_claim = left_out[left_out["guarantee"].notna() & (left_out["guarantee"] != "formal")]
    if not no_claim.empty:
        names = ", ".join(privacy_label(p) for p in sorted(set(no_claim["privacy"]), key=privacy_sort_key))
        notes.append(f"Not on the ε axis (no formal guarantee, their ε only calibrates noise): {names}.")
    no_patient = left_out[left_out["guarantee"] == "formal"]
    if not no_patient.empty:
        names = ", ".join(privacy_label(p) for p in sorted(set(no_patient["privacy"]), key=privacy_sort_key))
        warnings.warn(f"{dataset}: formal runs without a per-patient ε are left out of the audit: {names}")
        notes.append(f"Left out, formal guarantee without a per-patient ε: {names}.")
    return notes


def _covered_runs(placed: pd.DataFrame, attacks: Sequence[str], level: str, dataset: str) -> set[tuple[Any, ...]]:
    """The (attack, model, privacy, target ε, seed) with bound rows, warning where a bound row is not the claim's."""
    # the bound rows of the metric table must be the bound at the claim the figure uses (a join check)
    bound_names = {BOUND_METRIC.format(prefix=a, level=level): a for a in attacks}
    bound_rows = placed[placed["metric"].isin(list(bound_names))]
    if not bound_rows.empty:
        from dpmedgen.metrics.membership import dp_tpr_bound  # lazy: imports torch

        expect = [dp_tpr_bound(FPR, e, d) for e, d in zip(bound_rows["eps_claim"], bound_rows["delta_claim"])]
        off = np.abs(bound_rows["value"].to_numpy() - np.asarray(expect)) > 1e-6
        if off.any():
            warnings.warn(
                f"{dataset}: {int(off.sum())} bound rows disagree with dp_tpr_bound at the ledger's per-patient "
                f"(ε, δ): {bound_rows.loc[off, ['model', 'privacy', EPSILON_TARGET, 'seed', 'metric']].to_dict('records')}"
            )
    return {(bound_names[m], mo, p, e, s) for m, mo, p, e, s in
            bound_rows[["metric", "model", "privacy", EPSILON_TARGET, "seed"]].itertuples(index=False)}


def _audit_data(dataset, level, ref, placed, claims, ledgers, covered, max_certifiable) -> _AuditData:
    """The ε axis (range, bound grid, δ of the formal runs), the sideways dodges and the reference styling."""
    formal = claims[(claims["guarantee"] == "formal") & np.isfinite(claims["eps_claim"].to_numpy(float))]
    eps_claimed = sorted(set(placed["eps_claim"]))
    if eps_claimed:
        xlo, xhi = min(eps_claimed) / 1.6, max(eps_claimed) * 1.6
    else:
        xlo, xhi = _DEFAULT_XLIM
    # stable sideways offsets per (model, technique), the same in every panel
    combos = sorted({(m, p) for m, p in placed[["model", "privacy"]].itertuples(index=False)},
                    key=lambda mp: (mp[0], privacy_sort_key(mp[1])))
    step = min(3.0, 18.0 / max(len(combos) - 1, 1))  # at most ±9 pt: a point still reads as its own ε
    ref_models = sorted(set(ref["model"]))
    return _AuditData(
        dataset=dataset, level=level, ref=ref, placed=placed, covered=covered, max_certifiable=max_certifiable,
        noise_of=_noise_of(ledgers), deltas=sorted(set(formal["delta_claim"]), reverse=True),
        eps_claimed=eps_claimed, xlo=xlo, xhi=xhi, xs=np.geomspace(xlo, xhi, 64),
        dodge={c: (i - (len(combos) - 1) / 2) * step for i, c in enumerate(combos)},
        ref_models=ref_models, ref_dashes={m: reference_dashes(i) for i, m in enumerate(ref_models)},
        none_color=privacy_color(NON_PRIVATE),
    )


def _note_text(data: _AuditData, notes: list[str], n_nonmembers: pd.Series) -> str:
    """The wrapped note under the legend: what the points are, what is left out, and how to read (a) and (b)."""
    placed, level = data.placed, data.level
    if not data.eps_claimed:
        notes = [f"No run of {data.dataset} has a formal guarantee: nothing is placed on the ε axis; "
                 "only the non-private references are shown."] + notes
    n_seeds = int(placed.groupby(["model", "privacy", EPSILON_TARGET])["seed"].nunique().max()) if len(placed) else 0
    n_text = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    first = f"{level.capitalize()}-level attacks. "
    if n_seeds:
        first = (f"Points: runs with a formal guarantee, at the per-patient ε their ledger claims; mean over seeds "
                 f"± 95 % t-interval ({n_text}); {level}-level attacks. ")
    lines = [first + "Grey lines: non-private runs (they claim no ε)."]
    lines += notes
    finite_n = n_nonmembers[np.isfinite(n_nonmembers.to_numpy(float))]
    if len(finite_n) and finite_n.min() < 1.0 / FPR:
        lines.append(f"(b) is read at the largest observed FPR ≤ 1 %; with {int(finite_n.min())} non-member "
                     f"{level}s that is FPR = 0, so a TPR above the bound there does not by itself contradict the "
                     "claim; (c) is the sound test.")
    if len(finite_n):  # (a): an AUC estimated from a few patients scatters widely around its true value
        lines.append(f"(a) is an estimate from {int(finite_n.min())} non-member {level}s: a point in the excluded "
                     "region is sampling noise unless (c) confirms it.")
    return "\n".join(textwrap.fill(s, 150) for s in lines)


def _figure_with_note(note: str, nrows: int):
    """The figure: a grid of panels (rows = attacks) above a strip holding the note; returns (fig, upper, axes)."""
    note_height = 0.125 * (note.count("\n") + 1) + 0.05  # inches at 6.5 pt, line spacing 1.3
    panels_height = 2.15 * nrows + 1.0
    fig = new_figure(7.0, panels_height + note_height)
    upper, lower = fig.subfigures(2, 1, height_ratios=[panels_height, note_height])
    lower.text(0.01, 1.0, note, ha="left", va="top", fontsize=6.5, color="#333333", linespacing=1.3, gid="note")
    axes = upper.subplots(nrows, len(QUANTITIES), squeeze=False)
    return fig, upper, axes


def _draw_theory(ax, data: _AuditData, prefix: str, quantity: str) -> list[float]:
    """Draws the bound per δ, the region the claim excludes and the no-information level; returns the y drawn."""
    xs, drawn = data.xs, []
    if quantity == "eps_lower":
        ax.plot(xs, xs, color=BOUND_COLOR, lw=1.1, zorder=1.5, gid=f"diagonal|{prefix}")
        ax.axhline(0.0, color=CHANCE_COLOR, lw=0.8, dashes=(1, 1.5), zorder=1.2)
        drawn += [0.0, data.xhi]
        cap = data.max_certifiable.get(prefix)
        if cap is not None and np.isfinite(cap):  # no claim above it can be contradicted by this audit
            ax.axhline(cap, color=VIOLATION_COLOR, lw=0.9, dashes=(3, 2), zorder=1.4, gid=f"max_certifiable|{prefix}")
            ax.text(0.02, cap, f"most it can certify: {cap:.2f}", transform=ax.get_yaxis_transform(),
                    va="bottom", ha="left", fontsize=6.5, color=VIOLATION_COLOR)
            drawn.append(float(cap))
        return drawn
    chance = 0.5 if quantity == "auc" else FPR
    for k, delta in enumerate(data.deltas):
        if quantity == "auc":
            ys = np.array([dp_auc_bound(x, delta) for x in xs])
        else:
            from dpmedgen.metrics.membership import dp_tpr_bound  # lazy: imports torch

            ys = np.array([dp_tpr_bound(FPR, x, delta) for x in xs])
        if k == 0:  # the largest δ: its curve is the outermost, above it no claimed run can reach
            ax.fill_between(xs, ys, 1.0, color=EXCLUDED_SHADE, alpha=0.28, lw=0, zorder=0.4)
        ax.plot(xs, ys, color=BOUND_COLOR, lw=1.1, dashes=_BOUND_DASHES[k % len(_BOUND_DASHES)],
                zorder=1.5, gid=f"bound|{prefix}|{quantity}|{delta:g}")
        drawn += [float(ys.min()), float(ys.max())]
    ax.axhline(chance, color=CHANCE_COLOR, lw=0.8, dashes=(1, 1.5), zorder=1.2)
    drawn.append(chance)
    return drawn


def _draw_references(ax, data: _AuditData, prefix: str, quantity: str, name: str) -> list[float]:
    """Draws each model's non-private mean (grey line, 95 % band, marker at the right edge); returns the y drawn."""
    drawn: list[float] = []
    to_axes_x = transforms.blended_transform_factory(ax.transAxes, ax.transData)
    ref, color = data.ref, data.none_color
    for model in data.ref_models:
        vals = ref.loc[(ref["metric"] == name) & (ref["model"] == model), "value"].to_numpy()
        if len(vals) == 0:
            continue
        mean, (lo, hi) = float(vals.mean()), mean_ci95(vals)
        ax.axhline(mean, color=color, lw=1.0, dashes=data.ref_dashes[model], zorder=1.6,
                   gid=f"reference|{prefix}|{quantity}|{model}")
        if hi > lo:
            ax.axhspan(lo, hi, color=color, alpha=0.08, lw=0, zorder=0.5)
        ax.plot([1.0], [mean], transform=to_axes_x, marker=model_marker(model), color=color,
                mfc="white", mew=1.0, ms=4.5, clip_on=False, zorder=3)
        drawn += [mean] + ([max(lo, 0.0), min(hi, 1.0)] if quantity == "auc" else [])
    return drawn


def _seed_means(ax, trans, data: _AuditData, prefix: str, quantity: str, model: str, priv: str,
                runs: pd.DataFrame, violations: list[str], drawn: list[float]) -> list[tuple]:
    """Per target ε of one (model, technique): (claimed ε, mean, CI low, CI high, covered); rings violations."""
    pts = []
    for target, seeds in runs.groupby(EPSILON_TARGET):
        vals = seeds["value"].to_numpy()
        lo, hi = mean_ci95(vals)
        is_cov = all((prefix, model, priv, target, s) in data.covered for s in seeds["seed"])
        if quantity == "eps_lower":
            over = seeds[seeds["value"] > seeds["eps_claim"] * (1 + 1e-9)]
        else:
            over = seeds.iloc[:0]
        for rec in over.itertuples(index=False):
            violations.append(
                f"{prefix} ({data.level}) ε lower bound {rec.value:.3g} > claimed per-patient ε "
                f"{rec.eps_claim:.3g}: {model} / {priv} (target ε={target:g}, seed {rec.seed})"
            )
        pts.append((float(seeds["eps_claim"].mean()), float(vals.mean()), lo, hi, is_cov))
        # the y limits follow the means (and AUC intervals, within [0, 1]); a 2-seed t-interval of
        # ε lower bounds may run far off, its bar is then cut at the panel's edge
        drawn += [float(vals.mean())] + ([max(lo, 0.0), min(hi, 1.0)] if quantity == "auc" else [])
        if len(over):  # each seed above the claim: a red ring at its own value
            ax.plot(over["eps_claim"].to_numpy(), over["value"].to_numpy(), marker=model_marker(model), ms=9,
                    mfc="none", mec=VIOLATION_COLOR, mew=1.6, lw=0, transform=trans, zorder=2.6,
                    gid=f"violation|{prefix}|{model}|{priv}|{target:g}")
            drawn += list(over["value"])
    return pts


def _draw_runs(ax, fig, data: _AuditData, prefix: str, quantity: str, name: str, violations: list[str]):
    """Draws the formal runs at their claimed ε (line, 95 % bars, markers); returns (y drawn, any uncovered)."""
    drawn: list[float] = []
    any_uncovered = False
    sub = data.placed[data.placed["metric"] == name]
    for (model, priv), runs in sub.groupby(["model", "privacy"], sort=False):
        color, marker = privacy_color(priv), model_marker(model)
        trans = _dodge_transform(ax, fig, data.dodge[(model, priv)])
        pts = _seed_means(ax, trans, data, prefix, quantity, model, priv, runs, violations, drawn)
        pts.sort()
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        ax.plot(x, y, color=color, lw=0.8, alpha=0.6, dashes=privacy_dashes(priv, data.noise_of),
                transform=trans, zorder=2.2)
        for xi, yi, lo, hi, is_cov in pts:
            if hi > lo:
                ax.errorbar([xi], [yi], yerr=[[yi - lo], [hi - yi]], fmt="none", ecolor=color,
                            elinewidth=0.8, capsize=1.5, transform=trans, zorder=2.3)
            any_uncovered |= not is_cov
        # one marker artist per (model, technique): x data = the claimed ε (the dodge is display-only)
        covered_pt = np.array([p[4] for p in pts])
        for mask, filled in ((covered_pt, True), (~covered_pt, False)):
            if mask.any():
                ax.plot(x[mask], y[mask], lw=0, marker=marker, ms=5,
                        mfc=color if filled else "white", mec="white" if filled else color,
                        mew=0.5 if filled else 1.1, transform=trans, zorder=2.5,
                        gid=f"points|{prefix}|{quantity}|{model}|{priv}" + ("" if filled else "|uncovered"))
    return drawn, any_uncovered


def _format_panel(ax, data: _AuditData, quantity: str, drawn: list[float], bottom_row: bool) -> None:
    """Sets the panel's y scale and limits (and (c)'s contradiction region), the ε ticks and the axis labels."""
    finite = [v for v in drawn if np.isfinite(v)]
    if quantity == "tpr":  # symlog: linear below FPR = 1 %, so TPR 0 and the chance level both show
        ax.set_yscale("symlog", linthresh=FPR, linscale=0.6)
        ax.set_ylim(-0.0015, 1.1)
        ax.yaxis.set_major_locator(FixedLocator([0.0, 0.01, 0.03, 0.1, 0.3, 1.0]))
        ax.yaxis.set_major_formatter(FuncFormatter(_fmt_tick))
        ax.yaxis.set_minor_locator(NullLocator())
    elif quantity == "auc":
        low, high = min(finite), max(finite)
        ax.set_ylim(low - 0.04 * (high - low) - 0.01, min(high, 1.0) + 0.02)
    else:
        top = max(finite) * 1.06
        ax.set_ylim(-0.04 * top, top)
        ax.fill_between(data.xs, data.xs, top, color=VIOLATION_COLOR, alpha=0.07, lw=0, zorder=0.4)
    ax.xaxis.set_major_locator(FixedLocator(_nice_ticks(data.xlo, data.xhi, data.eps_claimed)))
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_tick))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(QUANTITIES[quantity][1])
    if bottom_row:
        ax.set_xlabel("claimed ε per patient, log scale")


def _draw_panel(ax, fig, data: _AuditData, prefix: str, quantity: str, letter: str, bottom_row: bool,
                violations: list[str]) -> bool:
    """Draws one panel (one attack, one quantity) and returns whether it shows a run its guarantee does not cover."""
    name = QUANTITIES[quantity][0].format(prefix=prefix, level=data.level)
    ax.set_xscale("log")
    ax.set_xlim(data.xlo, data.xhi)
    ax.set_title(f"({letter})", loc="left", fontweight="bold", fontsize=8.5)
    drawn = _draw_theory(ax, data, prefix, quantity)  # every y value drawn on data, for the y limits
    drawn += _draw_references(ax, data, prefix, quantity, name)
    runs_drawn, any_uncovered = _draw_runs(ax, fig, data, prefix, quantity, name, violations)
    _format_panel(ax, data, quantity, drawn + runs_drawn, bottom_row)
    return any_uncovered


def _legend_handles(data: _AuditData, any_uncovered: bool, any_violation: bool) -> tuple[list[Any], int]:
    """The shared legend's handles (one column per group, shorter groups padded with blanks) and its column count."""
    privacies = sorted(set(data.placed["privacy"]), key=privacy_sort_key)
    groups: list[list[Any]] = [
        [Line2D([], [], color=privacy_color(p), lw=1.4, dashes=privacy_dashes(p, data.noise_of),
                label=privacy_label(p)) for p in privacies],
        [Line2D([], [], color="#777777", lw=0, marker=model_marker(m), ms=5, mec="white", mew=0.5,
                label=model_label(m)) for m in sorted(set(data.placed["model"]))]
        + ([Line2D([], [], color="#777777", lw=0, marker="o", ms=5, mfc="white", mew=1.1,
                   label="not covered by\nthe guarantee")] if any_uncovered else [])
        + ([Line2D([], [], lw=0, marker="o", ms=8, mfc="none", mec=VIOLATION_COLOR, mew=1.6,
                   label="above the claim")] if any_violation else []),
        [Line2D([], [], color=data.none_color, lw=1.0, dashes=data.ref_dashes[m], marker=model_marker(m),
                mfc="white", ms=4.5, label=f"non-private {model_label(m)}") for m in data.ref_models],
        [Line2D([], [], color=BOUND_COLOR, lw=1.1, dashes=_BOUND_DASHES[k % len(_BOUND_DASHES)],
                label=f"(a, b) DP bound, δ = {d:g}") for k, d in enumerate(data.deltas)]
        + ([Patch(color=EXCLUDED_SHADE, alpha=0.5, lw=0, label="(a, b) excluded by the bound")]
           if data.deltas else []),
        [Line2D([], [], color=BOUND_COLOR, lw=1.1, label="(c) y = claimed ε"),
         Patch(color=VIOLATION_COLOR, alpha=0.15, lw=0, label="(c) contradicts the claim"),
         Line2D([], [], color=CHANCE_COLOR, lw=0.8, dashes=(1, 1.5), label="no information")],
    ]
    groups = [g for g in groups if g]
    depth = max(len(g) for g in groups)
    blank = Line2D([], [], lw=0, label=" ")
    return [h for g in groups for h in g + [blank] * (depth - len(g))], len(groups)


def plot_privacy_audit(
    metrics: pd.DataFrame,
    privacy: pd.DataFrame,
    dataset: str,
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    attacks: Sequence[str] = ("mia_dcr", "mia_discriminator"),
    level: str = "patient",
    title: str | None = None,
) -> None:
    """Draw the membership-inference audit of `dataset` and save it to every path in `paths`.

    `metrics` is the long metric table (``dataset, model, privacy, epsilon_target, seed, metric, value``; ``epsilon_target``
    is the target ε, ``inf`` for ``privacy == "none"``), `privacy` the ledger table (one row per run:
    ``dataset, model, privacy, epsilon_target, seed, guarantee`` and the per-patient ``epsilon_per_patient`` /
    ``delta_per_patient``). Runs are joined on (dataset, model, privacy, target ε, seed).

    Rows = attacks present in the table (of `attacks`), columns = (a) AUC, (b) TPR at FPR 1 %, (c) empirical
    ε lower bound, each against the claimed per-patient ε (log axis); `level` is "patient" or "image" (both
    are bounded by the per-patient claim). Points: formal runs, mean over seeds with 95 % t-interval, colour =
    technique, marker = model, line style = noise type; hollow markers: runs whose guarantee does not cover the
    attacked release (no bound rows). Curves: the DP bound per δ of the formal runs (a: :func:`dp_auc_bound`,
    b: ``dp_tpr_bound(0.01, ε, δ)``, c: the diagonal), the no-information levels and each model's
    non-private value (grey). An ε lower bound above the claimed ε is ringed in red and warned about.

    Raises ValueError when a table lacks columns, `dataset` has no metric or ledger rows, or no attack of
    `attacks` has rows at `level`. A dataset without formal runs still gets a figure (references and a note).
    """
    ledgers = _checked_ledgers(metrics, privacy, dataset, level)
    df, attacks, n_nonmembers, max_certifiable = _attack_rows(metrics, dataset, attacks, level)
    claims = _claims(ledgers)
    df = df.merge(claims, on=_KEY, how="left", validate="many_to_one")
    is_ref = df["privacy"] == NON_PRIVATE
    placed_mask = ~is_ref & (df["guarantee"] == "formal") & np.isfinite(df["eps_claim"].to_numpy(float))
    ref, placed = df[is_ref], df[placed_mask]
    notes = _left_out_notes(df[~is_ref & ~placed_mask], dataset)  # what is not on the ε axis, and why
    covered = _covered_runs(placed, attacks, level, dataset)
    data = _audit_data(dataset, level, ref, placed, claims, ledgers, covered, max_certifiable)

    nrows, ncols = len(attacks), len(QUANTITIES)
    fig, upper, axes = _figure_with_note(_note_text(data, notes, n_nonmembers), nrows)
    violations: list[str] = []
    any_uncovered = False
    for r, prefix in enumerate(attacks):
        for c, quantity in enumerate(QUANTITIES):
            letter = chr(ord("a") + r * ncols + c)
            any_uncovered |= _draw_panel(axes[r][c], fig, data, prefix, quantity, letter, r == nrows - 1, violations)
        # the attack's name over its row, one line above the panel letters (the empty second line)
        axes[r][1].set_title(ATTACK_LABELS.get(prefix, prefix) + "\n", loc="center", fontsize=9)

    for v in violations:
        warnings.warn(f"{dataset}: {v} — the attack contradicts the DP claim (or its accounting)")

    # one shared legend under the panels (never on data), one column per group
    handles, ncol = _legend_handles(data, any_uncovered, bool(violations))
    upper.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, handlelength=2.2,
                 columnspacing=1.1, fontsize=7)
    upper.suptitle(f"{dataset}: membership-inference audit against the DP claim ({level} level)"
                   if title is None else title, fontweight="bold")
    save_figure(fig, paths)


def privacy_audit_figure(
    metrics_parquet: str | os.PathLike,
    privacy_parquet: str | os.PathLike,
    dataset: str,
    paths: Sequence[str | os.PathLike],
    *,
    attacks: Sequence[str] = ("mia_dcr", "mia_discriminator"),
    level: str = "patient",
) -> None:
    """The privacy audit figure of `dataset` from the study's metrics.parquet and privacy.parquet."""
    privacy = pd.read_parquet(privacy_parquet)
    title = f"{dataset}: membership-inference audit against the DP claim ({level} level)"
    if deterministic_formal_runs(privacy[privacy["dataset"] == dataset]):
        title += f"\n{NOT_A_DP_RELEASE_SHORT}"
    plot_privacy_audit(pd.read_parquet(metrics_parquet), privacy, dataset, list(paths),
                       attacks=attacks, level=level, title=title)
