"""Paper tables computed from the study's output tables (``metrics.parquet``, ``privacy.parquet``).

Two tables per dataset, each rendered as a LaTeX booktabs ``table``, a GitHub Markdown pipe table and a
standalone HTML page (for the Snakemake report):

- the main results table (``main_results_table``): one row per generative model × privacy technique × target
  ε (the ``real_data`` downstream reference last), one column per requested metric, each cell the mean ± sample
  sd (ddof 1) over seeds, in the metric's own unit;
- the privacy table (``privacy_table``): one row per run with its privacy ledger (ε per image / per patient, δ,
  noise scale, sampling rate q, steps). Runs without a formal guarantee show "no guarantee" instead of any ε.

Number formatting (main table): per column, the number of decimals is fixed so that the largest finite
|mean| of the column gets 3 significant digits (``decimals = clip(2 - floor(log10(max|mean|)), 0, 8)``): all
values of a column line up, and the sd uses the same decimals as its mean. One seed shows the mean alone; a
cell with fewer seeds than the table's maximum is marked with its seed count ``(n=k)``. Bold marks the best
displayed (rounded) value of each column among the generative-model rows (ties all bold; the real-data reference
is never bold), using ``METRIC_INFO``'s ``higher_is_better`` (or, for a metric with an ``ideal`` value such as an
attack AUC's 0.5, the smallest distance from it; its header then shows "→ 0.5", not an arrow up or down) (no
bold where it is None or the metric is unknown, when fewer than two rows have a value, or when all of them tie).
Privacy table: ε, noise scales and q with 3 significant digits (integers ≥ 100 in full), δ in scientific notation.

LaTeX output needs ``booktabs`` (and ``graphicx`` for the default ``\\resizebox``).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from dpmedgen.plots.style import model_label, privacy_label, privacy_sort_key, write_atomic
from dpmedgen.results import (
    EPSILON_TARGET,
    METRIC_COLUMNS,
    NON_PRIVATE,
    NOT_A_DP_RELEASE,
    PRIVACY_COLUMNS,
    REAL_DATA,
    deterministic_formal_runs,
)

STATS = ("mean", "sd", "n")
MAX_DECIMALS = 8
#: The main table's metrics when none are named: fidelity, diversity, image quality, downstream utility,
#: membership inference, fusion quality (absent ones are left out).
DEFAULT_TABLE_METRICS = (
    "fid_effnetlite0", "precision_effnetlite0", "coverage_effnetlite0", "ms_ssim_nn", "downstream_auroc",
    "mia_dcr_auc_patient", "mia_discriminator_auc_patient", "fusion_qabf",
)
OUTPUT_KEYS = ("main_tex", "main_md", "main_html", "privacy_tex", "privacy_md", "privacy_html")

__all__ = [
    "main_results_table",
    "privacy_table",
    "to_latex",
    "to_markdown",
    "to_html",
    "write_tables",
    "DEFAULT_TABLE_METRICS",
    "OUTPUT_KEYS",
    "column_decimals",
]


# ---------------------------------------------------------------------------------------------- building


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _select_dataset(df: pd.DataFrame, dataset: str, what: str) -> pd.DataFrame:
    sub = df[df["dataset"] == dataset]
    if sub.empty:
        present = sorted(map(str, df["dataset"].unique()))
        raise ValueError(f"no rows for dataset {dataset!r} in {what}; datasets present: {present}")
    return sub


def _privacy_facts(privacy: pd.DataFrame, dataset: str) -> dict[str, Any]:
    """ε unit, δ per technique, techniques without a guarantee and accountants of `dataset`'s ledgers."""
    _require(privacy, PRIVACY_COLUMNS, "privacy table")
    led = _select_dataset(privacy, dataset, "the privacy table")
    formal = led[led["guarantee"] == "formal"]
    deltas: dict[str, list[float]] = {}
    if "delta" in formal.columns:
        for _, row in formal.iterrows():
            d = row.get("delta_per_patient")
            d = row["delta"] if d is None or pd.isna(d) else d
            if pd.notna(d):
                deltas.setdefault(str(row["privacy"]), [])
                if float(d) not in deltas[str(row["privacy"])]:
                    deltas[str(row["privacy"])].append(float(d))
    accountants = sorted(set(formal["accountant"].dropna().astype(str))) if "accountant" in formal.columns else []
    no_guarantee = sorted(set(led.loc[(led["guarantee"] != "formal") & (led["privacy"] != NON_PRIVATE), "privacy"]),
                          key=privacy_sort_key)
    return {
        "units": sorted(set(formal["unit"].dropna().astype(str))) if "unit" in formal.columns else [],
        "deltas": deltas,
        "no_guarantee": no_guarantee,
        "accountants": accountants,
        "adjacency": sorted(set(formal["adjacency_statement"].dropna().astype(str)))
        if "adjacency_statement" in formal.columns else [],
        "not_dp_release": deterministic_formal_runs(led),
    }


def main_results_table(
    metrics: pd.DataFrame,
    dataset: str,
    metric_names: Sequence[str],
    *,
    privacy: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Mean, sample sd (ddof 1; NaN for one seed) and seed count of each metric over seeds.

    Index: ``(model, privacy, epsilon_target)`` (target ε; ``inf`` for non-private), ordered by model, then
    non-private first and techniques in ``PRIVACY_ORDER``, then ε ascending; the ``real_data`` reference row
    last. Columns: ``(metric, stat)`` with stat in ``mean, sd, n`` for each requested metric present in the
    table (in the requested order; absent names are left out and listed in ``attrs["absent_metrics"]``). Values
    are in each metric's own unit. A (row, metric) pair without values is NaN (n = 0): the metric does not exist
    for that model. `privacy` (the privacy table) adds the ε unit, δ and the techniques without a guarantee to
    ``attrs`` for the captions. ValueError when the dataset has no rows or none of `metric_names` is present.
    """
    _require(metrics, METRIC_COLUMNS, "metrics table")
    if isinstance(metric_names, str):
        metric_names = [metric_names]
    df = _select_dataset(metrics, dataset, "the metrics table")
    present = set(df["metric"])
    chosen = list(dict.fromkeys(m for m in metric_names if m in present))
    if not chosen:
        raise ValueError(f"none of the metrics {list(metric_names)} is in the metrics table of dataset {dataset!r}")
    df = df[df["metric"].isin(chosen)]
    keys = ["model", "privacy", EPSILON_TARGET, "seed", "metric"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        first = df.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"metrics table of dataset {dataset!r} has duplicate rows for {first}: one value per "
                         "(model, privacy, epsilon_target, seed, metric) is expected")
    grouped = df.groupby(["model", "privacy", EPSILON_TARGET, "metric"])["value"]
    stats = pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n": grouped.count()})
    wide = stats.unstack("metric")  # columns (stat, metric)
    wide = wide.swaplevel(0, 1, axis=1)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([chosen, list(STATS)], names=["metric", "stat"]))
    for m in chosen:
        wide[(m, "n")] = wide[(m, "n")].fillna(0).astype(int)
        wide.loc[wide[(m, "n")] < 2, (m, "sd")] = np.nan

    def order(key: tuple) -> tuple:
        model, priv, eps = key
        return (model == REAL_DATA, str(model), privacy_sort_key(str(priv)), float(eps))

    wide = wide.loc[sorted(wide.index, key=order)]
    wide.index.names = ["model", "privacy", EPSILON_TARGET]
    wide.attrs.update(
        table="main",
        dataset=dataset,
        metrics=chosen,
        absent_metrics=[m for m in metric_names if m not in present],
    )
    if privacy is not None:
        wide.attrs.update(_privacy_facts(privacy, dataset))
    return wide


def _output_noise(value: Any) -> dict[str, Any]:
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return value if isinstance(value, dict) else {}


def _num(row: pd.Series, column: str) -> float:
    v = row.get(column)
    try:
        return float(v) if v is not None and pd.notna(v) else math.nan
    except (TypeError, ValueError):
        return math.nan


def privacy_table(privacy: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per run of `dataset` with its privacy ledger.

    Columns: ``model, privacy, epsilon_target, seed, unit, guarantee, epsilon_per_image, delta_per_image,
    epsilon_per_patient, delta, noise, scale, sample_rate, steps``. ``delta`` is the per-patient δ where the
    ledger defines it, else the ledger's ``delta``. ``noise`` names what ``scale`` is: the DP-SGD noise
    multiplier σ (noise std / clipping norm), or the std σ (Gaussian) / scale b (Laplace) of the noise of the
    input, output or functional mechanism, in the units of what it perturbs ([0, 1] pixel intensities for input
    and output perturbation, the loss coefficients for the functional mechanism). ``sample_rate`` is the
    DP-SGD Poisson sampling rate q, ``steps`` the optimizer steps. For runs without a formal guarantee
    (``guarantee != "formal"``) every ε, δ and the unit are NaN: such a run has no ε to report.
    """
    _require(privacy, PRIVACY_COLUMNS, "privacy table")
    led = _select_dataset(privacy, dataset, "the privacy table")
    rows = []
    for _, r in led.iterrows():
        formal = r["guarantee"] == "formal"
        kind, scale = "", math.nan
        if pd.notna(_num(r, "noise_multiplier")):
            kind, scale = "DP-SGD noise multiplier σ", _num(r, "noise_multiplier")
        elif pd.notna(_num(r, "noise_scale")):
            kind, scale = _noise_kind(r.get("noise")), _num(r, "noise_scale")
        else:
            out = _output_noise(r.get("output_noise"))
            if out.get("noise_scale") is not None:
                kind, scale = _noise_kind(out.get("noise")) + " (released images)", float(out["noise_scale"])
        delta = _num(r, "delta_per_patient")
        if math.isnan(delta):
            delta = _num(r, "delta")
        unit = r.get("unit")
        rows.append({
            "model": r["model"],
            "privacy": r["privacy"],
            "epsilon_target": _num(r, "epsilon_target"),
            "seed": int(r["seed"]),
            "unit": unit if formal and isinstance(unit, str) else None,
            "guarantee": r["guarantee"],
            "epsilon_per_image": _num(r, "epsilon_per_image") if formal else math.nan,
            "delta_per_image": _num(r, "delta_per_image") if formal else math.nan,
            "epsilon_per_patient": _num(r, "epsilon_per_patient") if formal else math.nan,
            "delta": delta if formal else math.nan,
            "noise": kind or None,
            "scale": scale,
            "sample_rate": _num(r, "sample_rate"),
            "steps": _num(r, "steps"),
        })
    out = pd.DataFrame(rows)
    out = out.iloc[sorted(range(len(out)), key=lambda i: (
        str(out["model"].iat[i]), privacy_sort_key(str(out["privacy"].iat[i])),
        out["epsilon_target"].iat[i], out["seed"].iat[i]))].reset_index(drop=True)
    out.attrs.update(table="privacy", dataset=dataset, **_privacy_facts(privacy, dataset))
    return out


def _noise_kind(noise: Any) -> str:
    if noise == "gaussian":
        return "Gaussian std σ"
    if noise == "laplace":
        return "Laplace scale b"
    return f"{noise} scale" if isinstance(noise, str) else "noise scale"


# ---------------------------------------------------------------------------------------------- formatting


@dataclass(frozen=True)
class _Fmt:
    """How one output format writes text, math symbols, numbers and emphasis."""

    name: str
    escape: Callable[[str], str]
    eps: str
    delta: str
    pm: str  # inside a math expression
    pm_text: str  # in running text
    inf: str  # in running text
    inf_math: str  # inside a math expression
    dagger: str
    up: str
    down: str
    missing: str
    times10: Callable[[str, int], str]  # mantissa, exponent -> "m × 10^e"
    math: Callable[[str], str]  # wrap a number expression
    bold_math: Callable[[str], str]
    bold_text: Callable[[str], str]
    code: Callable[[str], str]
    seeds_mark: Callable[[int], str]  # appended to a value from fewer seeds than the table's maximum


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "ε": r"$\varepsilon$", "δ": r"$\delta$", "σ": r"$\sigma$", "±": r"$\pm$", "×": r"$\times$", "∞": r"$\infty$",
    "†": r"$^\dagger$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--", "—": "---", "≥": r"$\geq$",
    "≤": r"$\leq$", "→": r"$\to$", "·": r"$\cdot$", "√": r"$\surd$", "⁻": "-",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (``_`` ``&`` ``%`` ...) and write the symbols the tables use (ε, δ, ±,
    ↑, ...) in math mode."""
    return "".join(_LATEX_SPECIAL.get(c) or _LATEX_UNICODE.get(c) or c for c in str(text))


def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


_LATEX = _Fmt(
    name="latex", escape=latex_escape, eps=r"$\varepsilon$", delta=r"$\delta$", pm=r" \pm ", pm_text=r"$\pm$",
    inf=r"$\infty$", inf_math=r"\infty",
    dagger=r"$^\dagger$", up=r"$\uparrow$", down=r"$\downarrow$", missing="--",
    times10=lambda m, e: f"10^{{{e}}}" if m == "1" else f"{m} \\times 10^{{{e}}}",
    math=lambda s: f"${s}$", bold_math=lambda s: f"$\\mathbf{{{s}}}$", bold_text=lambda s: f"\\textbf{{{s}}}",
    code=latex_escape, seeds_mark=lambda n: f"\\,\\textsuperscript{{n={n}}}",
)
_MD = _Fmt(
    name="markdown", escape=_md_escape, eps="ε", delta="δ", pm=" ± ", pm_text="±", inf="∞", inf_math="∞",
    dagger="†", up="↑", down="↓",
    missing="–", times10=lambda m, e: f"{m}e{e}", math=lambda s: s, bold_math=lambda s: f"**{s}**",
    bold_text=lambda s: f"**{s}**", code=lambda s: f"`{s}`", seeds_mark=lambda n: f" (n={n})",
)
_HTML = _Fmt(
    name="html", escape=lambda s: html.escape(str(s), quote=False), eps="ε", delta="δ", pm=" ± ", pm_text="±",
    inf="∞", inf_math="∞", dagger="†", up="↑", down="↓", missing="–",
    times10=lambda m, e: f"10<sup>{e}</sup>" if m == "1" else f"{m}×10<sup>{e}</sup>", math=lambda s: s,
    bold_math=lambda s: f"<b>{s}</b>", bold_text=lambda s: f"<b>{s}</b>",
    code=lambda s: f"<code>{html.escape(s, quote=False)}</code>", seeds_mark=lambda n: f" <small>(n={n})</small>",
)


def column_decimals(values: Sequence[float] | np.ndarray) -> int:
    """Decimals of a column: the largest finite |value| gets 3 significant digits (0 to 8 decimals)."""
    x = np.abs(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    if len(x) == 0 or x.max() == 0:
        return 0
    return int(min(MAX_DECIMALS, max(0, 2 - math.floor(math.log10(x.max())))))


def _fixed(x: float, decimals: int, fmt: _Fmt) -> str:
    """`x` with `decimals` decimals, inside a math expression."""
    if math.isinf(x):
        return fmt.inf_math if x > 0 else "-" + fmt.inf_math
    return f"{round(x, decimals) + 0.0:.{decimals}f}"


def _sig(x: float, digits: int = 3) -> str:
    """3 significant digits without exponent; integers ≥ 10**digits in full ("49152")."""
    if x == 0:
        return "0"
    d = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    r = round(x, d)
    if r != 0:  # rounding may carry into the next power of ten (9.996 -> 10.0, not 10.00)
        d = max(0, digits - 1 - math.floor(math.log10(abs(r))))
    return f"{round(x, d) + 0.0:.{d}f}"


def _sci(x: float, fmt: _Fmt) -> str:
    """δ-like numbers: 0, plain 2 significant digits ≥ 0.001, else m × 10^e."""
    if x == 0:
        return "0"
    if abs(x) >= 1e-3:
        return _sig(x, 2)
    e = math.floor(math.log10(abs(x)))
    m = round(x / 10**e, 1)
    if abs(m) >= 10:
        m, e = m / 10, e + 1
    ms = f"{m:.1f}".rstrip("0").rstrip(".")
    return fmt.math(fmt.times10(ms, e))


def _eps_value(e: float, fmt: _Fmt) -> str:
    if math.isinf(e):
        return fmt.inf
    return f"{e:g}"


def _metric_info(metric_info: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if metric_info is None:
        from .metrics import METRIC_INFO  # lazy: the metrics package imports torch

        return METRIC_INFO
    return metric_info


def _direction(metric: str, metric_info: Mapping[str, Any]) -> bool | None:
    info = metric_info.get(metric)
    return None if info is None else info.higher_is_better


def _seed_counts(table: pd.DataFrame) -> list[int]:
    metrics = table.attrs.get("metrics") or list(dict.fromkeys(table.columns.get_level_values(0)))
    ns = set()
    for m in metrics:
        ns.update(int(n) for n in table[(m, "n")] if n > 0)
    return sorted(ns)


def _main_cells(table: pd.DataFrame, fmt: _Fmt, metric_info: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the main table in `fmt` (bold, arrows and number format applied)."""
    metrics = table.attrs.get("metrics") or list(dict.fromkeys(table.columns.get_level_values(0)))
    no_guarantee = set(table.attrs.get("no_guarantee", ()))
    counts = _seed_counts(table)
    n_max = counts[-1] if counts else 0
    header = ["Model", "Privacy", f"target {fmt.eps}"]
    is_ref = np.array([m == REAL_DATA for m in table.index.get_level_values("model")])
    columns: list[list[str]] = []
    for m in metrics:
        mean = table[(m, "mean")].to_numpy(dtype=float)
        sd = table[(m, "sd")].to_numpy(dtype=float)
        n = table[(m, "n")].to_numpy(dtype=int)
        d = column_decimals(mean)
        hib = _direction(m, metric_info)
        ideal = getattr(metric_info.get(m), "ideal", None)
        arrow = {True: " " + fmt.up, False: " " + fmt.down, None: ""}[hib]
        if ideal is not None and hib is not None:  # two-sided: "→ 0.5", never "↓" (0.31 is not better than 0.5)
            arrow = " " + fmt.escape(f"→ {ideal:g}")
        header.append(fmt.code(m) + arrow)
        shown = np.array([round(v, d) if np.isfinite(v) else v for v in mean])
        eligible = ~is_ref & ~np.isnan(mean) & (n > 0)
        best = np.zeros(len(mean), dtype=bool)
        # a metric with an ideal value (an attack AUC of 0.5) ranks by its distance from it: 0.31 is not
        # "more private" than 0.5, it leaks as much as 0.69
        score = -np.abs(shown - ideal) if ideal is not None else (shown if hib else -shown)
        if hib is not None and eligible.sum() >= 2 and len(set(score[eligible])) > 1:
            best = eligible & (score == np.nanmax(score[eligible]))
        col = []
        for i in range(len(mean)):
            if n[i] == 0 or np.isnan(mean[i]):
                col.append(fmt.missing)
                continue
            text = _fixed(mean[i], d, fmt)
            if n[i] >= 2 and np.isfinite(sd[i]):
                text += fmt.pm + _fixed(sd[i], d, fmt)
            text = fmt.bold_math(text) if best[i] else fmt.math(text)
            if n[i] < n_max:
                text += fmt.seeds_mark(int(n[i]))
            col.append(text)
        columns.append(col)
    body = []
    for i, (model, priv, eps) in enumerate(table.index):
        if model == REAL_DATA:
            mlab, plab, elab = "real data (reference)", fmt.missing, fmt.missing
        else:
            mlab = fmt.escape(model_label(str(model)))
            plab = fmt.escape(privacy_label(str(priv))) + (fmt.dagger if priv in no_guarantee else "")
            elab = fmt.missing if priv == NON_PRIVATE else _eps_value(float(eps), fmt)
        body.append([mlab, plab, elab] + [c[i] for c in columns])
    return header, body


def _equals(lhs: str, rhs: str, fmt: _Fmt) -> str:
    """``lhs = rhs``, as one math expression in LaTeX."""
    if fmt.name != "latex":
        return f"{lhs} = {rhs}"
    return f"${lhs.strip('$')} = {rhs.strip('$')}$"


def _delta_phrase(deltas: Mapping[str, list[float]], fmt: _Fmt) -> str:
    if not deltas:
        return ""
    by_value: dict[float, list[str]] = {}
    for priv, ds in deltas.items():
        for d in ds:
            by_value.setdefault(d, []).append(priv)
    common = max(by_value, key=lambda d: (len(by_value[d]), d))
    text = _equals(fmt.delta, _sci(common, fmt), fmt)
    others = [f"{', '.join(fmt.escape(privacy_label(p)) for p in sorted(ps, key=privacy_sort_key))}: "
              f"{_equals(fmt.delta, _sci(d, fmt), fmt)}" for d, ps in sorted(by_value.items()) if d != common]
    return text + (f" ({'; '.join(others)})" if others else "")


def _unit_phrase(attrs: Mapping[str, Any]) -> str:
    units = attrs.get("units")
    if units is None:
        return ""
    if len(units) == 1:
        return f" per {units[0]}"
    if len(units) > 1:
        return f" (units differ: {', '.join(units)}; see the privacy table)"
    return " (no run has a formal guarantee)"


def _main_caption(table: pd.DataFrame, fmt: _Fmt) -> str:
    a = table.attrs
    esc = fmt.escape
    counts = _seed_counts(table)
    if not counts or counts == [1]:
        seeds = "values from one seed (no sd)"
    elif len(counts) == 1:
        seeds = f"values are the mean {fmt.pm_text} sample sd over {counts[0]} seeds"
    else:
        seeds = (f"values are the mean {fmt.pm_text} sample sd over up to {counts[-1]} seeds; (n=k) marks a value "
                 "from k seeds" + ("" if counts[0] > 1 else " (no sd for k = 1)"))
    eps = f"target {fmt.eps}{esc(_unit_phrase(a))} ({fmt.missing} for non-private)"
    delta = _delta_phrase(a.get("deltas", {}), fmt)
    if delta:
        eps += f" at {delta}"
    parts = [
        f"{esc(str(a.get('dataset', '')))}: rows are generative model {esc('×')} privacy technique {esc('×')} {eps}; "
        f"columns are metrics ({fmt.up} higher is better, {fmt.down} lower is better, {esc('→')} x: closest to x is "
        "best, as an attack AUC's 0.5; no arrow: neither)",
        seeds,
        f"{fmt.bold_text('bold')} = best value per column among the generative models (ties all bold)",
    ]
    if any(m == REAL_DATA for m in table.index.get_level_values("model")):
        parts.append("real data = downstream classifier trained on the real training data (a reference, never bold)")
    parts.append(f"{fmt.missing} = metric not defined for this row")
    ng = [p for p in a.get("no_guarantee", []) if p in set(table.index.get_level_values("privacy"))]
    if ng:
        labels = ", ".join(esc(privacy_label(p)) for p in ng)
        parts.append(f"{fmt.dagger} no privacy guarantee for the training data ({labels}): {fmt.eps} only calibrates "
                     "noise added to the released images")
    return _release_notes(a, fmt, parts)


def _release_notes(a: Mapping[str, Any], fmt: _Fmt, parts: list[str]) -> str:
    """The caption's parts, with the neighbouring relation and, first and in bold, a study that is not a DP
    release (deterministic randomness)."""
    if a.get("adjacency"):
        parts.append("neighbouring datasets: " + fmt.escape(" | ".join(a["adjacency"])))
    if a.get("not_dp_release"):
        parts.insert(0, fmt.bold_text(fmt.escape(NOT_A_DP_RELEASE[0].upper() + NOT_A_DP_RELEASE[1:])))
    return "; ".join(parts) + "."


def _privacy_caption(table: pd.DataFrame, fmt: _Fmt) -> str:
    a = table.attrs
    esc = fmt.escape
    delta = _delta_phrase(a.get("deltas", {}), fmt)
    parts = [
        f"{esc(str(a.get('dataset', '')))}: privacy ledger of every run; {fmt.eps} per image and per patient "
        f"(target {fmt.eps}{esc(_unit_phrase(a))}" + (f", {delta})" if delta else ")"),
        f"{fmt.delta} is per patient where the ledger defines it, else the run's {fmt.delta}",
        f"noise names the scale: the DP-SGD noise multiplier {esc('σ')} (noise std / clipping norm) or the std "
        f"{esc('σ')} / Laplace scale b of the perturbation (in [0, 1] pixel units for input and output "
        "perturbation, in loss-coefficient units for the functional mechanism)",
        "q = Poisson sampling rate and steps = optimizer steps of DP-SGD",
        "no guarantee = the run has no privacy guarantee for its training data (non-private training"
        + ("; output perturbation noises only the released images)" if a.get("no_guarantee") else ")"),
        f"† = the grid's target {fmt.eps} of a run without a guarantee: it only calibrates the noise",
        f"{fmt.missing} = not applicable",
    ]
    if a.get("accountants"):
        parts.append("accountants: " + esc("; ".join(a["accountants"])))
    return _release_notes(a, fmt, parts)


def _privacy_cells(table: pd.DataFrame, fmt: _Fmt) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "Technique", f"target {fmt.eps}", "Seed", "Unit", "Guarantee", f"{fmt.eps}/image",
              f"{fmt.delta}/image", f"{fmt.eps}/patient", fmt.delta, "Noise", "Scale", "q", "Steps"]
    ng = "no guarantee"
    body = []
    for _, r in table.iterrows():
        formal = r["guarantee"] == "formal"
        private = r["privacy"] != NON_PRIVATE

        def eps_cell(x: float) -> str:
            if not formal:
                return ng
            return fmt.missing if pd.isna(x) else _sig(float(x))

        def plain(x: float, f: Callable[[float], str]) -> str:
            return fmt.missing if pd.isna(x) else f(float(x))

        if formal:
            target = plain(r["epsilon_target"], lambda e: _eps_value(e, fmt))
        elif private:  # the grid value tells the runs apart; it only calibrates noise (marked †)
            target = plain(r["epsilon_target"], lambda e: _eps_value(e, fmt) + "†")
        else:
            target = fmt.missing
        guarantee = str(r["guarantee"]) if private or r["guarantee"] != "none" else "none (non-private)"
        body.append([
            fmt.escape(model_label(str(r["model"]))),
            fmt.escape(privacy_label(str(r["privacy"]))),
            target,
            str(int(r["seed"])),
            fmt.escape(r["unit"]) if isinstance(r["unit"], str) else fmt.missing,
            fmt.escape(guarantee),
            eps_cell(r["epsilon_per_image"]),
            plain(r["delta_per_image"], lambda x: _sci(x, fmt)) if formal else fmt.missing,
            eps_cell(r["epsilon_per_patient"]),
            plain(r["delta"], lambda x: _sci(x, fmt)) if formal else fmt.missing,
            fmt.escape(r["noise"]) if isinstance(r["noise"], str) else fmt.missing,
            plain(r["scale"], _sig),
            plain(r["sample_rate"], _sig),
            plain(r["steps"], lambda s: str(int(round(s)))),
        ])
    return header, body


def _is_main(table: pd.DataFrame) -> bool:
    kind = table.attrs.get("table")
    if kind is not None:
        return kind == "main"
    return isinstance(table.columns, pd.MultiIndex)


def _label(kind: str, dataset: str) -> str:
    return f"tab:{kind}-" + re.sub(r"[^A-Za-z0-9:.-]+", "-", dataset)


# ---------------------------------------------------------------------------------------------- renderers


def to_latex(
    table: pd.DataFrame,
    *,
    caption: str | None = None,
    label: str | None = None,
    metric_info: Mapping[str, Any] | None = None,
    resize: bool = True,
) -> str:
    """A complete booktabs ``table`` environment of a ``main_results_table`` or ``privacy_table``.

    `caption` (LaTeX, used verbatim) defaults to one describing rows, columns, seeds, the ε unit and δ;
    `label` defaults to ``tab:main-<dataset>`` / ``tab:privacy-<dataset>``. `resize` wraps the tabular in
    ``\\resizebox{\\linewidth}{!}{...}`` (needs ``graphicx``). `metric_info` defaults to ``METRIC_INFO``.
    """
    main = _is_main(table)
    dataset = str(table.attrs.get("dataset", ""))
    if main:
        header, body = _main_cells(table, _LATEX, _metric_info(metric_info))
        spec = "lll" + "r" * (len(header) - 3)
        caption = caption if caption is not None else _main_caption(table, _LATEX)
    else:
        header, body = _privacy_cells(table, _LATEX)
        spec = "llrrll" + "r" * 4 + "l" + "r" * 3
        caption = caption if caption is not None else _privacy_caption(table, _LATEX)
    label = label if label is not None else _label("main" if main else "privacy", dataset)
    lines = [r"\begin{table}[htbp]", r"\centering", f"\\caption{{{caption}}}", f"\\label{{{label}}}"]
    if resize:
        lines.append(r"\resizebox{\linewidth}{!}{%")
    lines += [f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    previous = None
    for row in body:
        group = row[0]
        if previous is not None and group != previous:
            lines.append(r"\midrule")
        shown = list(row)
        if group == previous:
            shown[0] = ""  # the model name once per block
        lines.append(" & ".join(shown) + r" \\")
        previous = group
    lines += [r"\bottomrule", r"\end{tabular}"]
    if resize:
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_markdown(
    table: pd.DataFrame,
    *,
    caption: str | None = None,
    metric_info: Mapping[str, Any] | None = None,
) -> str:
    """A GitHub pipe table of a ``main_results_table`` or ``privacy_table``, preceded by its caption (a
    "Table: ..." paragraph; `caption` defaults to the same facts as the LaTeX caption)."""
    main = _is_main(table)
    if main:
        header, body = _main_cells(table, _MD, _metric_info(metric_info))
        align = ["left", "left", "right"] + ["right"] * (len(header) - 3)
        caption = caption if caption is not None else _main_caption(table, _MD)
    else:
        header, body = _privacy_cells(table, _MD)
        align = ["left", "left", "right", "right", "left", "left"] + ["right"] * 4 + ["left"] + ["right"] * 3
        caption = caption if caption is not None else _privacy_caption(table, _MD)
    frame = pd.DataFrame(body, columns=header)
    text = frame.to_markdown(index=False, tablefmt="github", disable_numparse=True, colalign=align)
    return f"Table: {caption}\n\n{text}\n"


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:13px}"
    "table{border-collapse:collapse;border-top:2px solid #000;border-bottom:2px solid #000}"
    "caption{caption-side:top;text-align:left;max-width:70em;padding-bottom:.5em}"
    "th{border-bottom:1px solid #000;padding:2px 8px}td{padding:2px 8px;white-space:nowrap}"
    "tr.group td{border-top:1px solid #999}td.num{text-align:right}"
)


def to_html(
    table: pd.DataFrame,
    *,
    caption: str | None = None,
    metric_info: Mapping[str, Any] | None = None,
) -> str:
    """A standalone HTML page with the table of a ``main_results_table`` or ``privacy_table`` (same cells,
    bold and caption as the LaTeX and Markdown versions; `caption` is HTML, used verbatim)."""
    main = _is_main(table)
    left = 2  # model and technique columns left-aligned, the rest right-aligned
    if main:
        header, body = _main_cells(table, _HTML, _metric_info(metric_info))
        caption = caption if caption is not None else _main_caption(table, _HTML)
    else:
        header, body = _privacy_cells(table, _HTML)
        caption = caption if caption is not None else _privacy_caption(table, _HTML)
    title = html.escape(f"{'main results' if main else 'privacy ledger'}: {table.attrs.get('dataset', '')}")
    lines = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{title}</title>",
             f"<style>{_HTML_STYLE}</style></head><body>", "<table>", f"<caption>{caption}</caption>",
             "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    previous = None
    for row in body:
        cls = ' class="group"' if previous is not None and row[0] != previous else ""
        cells = "".join(f"<td>{c}</td>" if j < left else f'<td class="num">{c}</td>' for j, c in enumerate(row))
        lines.append(f"<tr{cls}>{cells}</tr>")
        previous = row[0]
    lines += ["</tbody>", "</table>", "</body></html>"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- files


def write_tables(
    metrics_parquet: str | os.PathLike,
    privacy_parquet: str | os.PathLike,
    dataset: str,
    out_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    metric_names: Sequence[str] | None = None,
    *,
    metric_info: Mapping[str, Any] | None = None,
    html_pages: bool = False,
) -> list[Path]:
    """Write the main and privacy tables of `dataset`, each file atomically; returns the written paths.

    `out_dir` a directory: ``main_<dataset>.tex/.md`` and ``privacy_<dataset>.tex/.md`` (and ``.html`` with
    `html_pages`). `out_dir` a mapping: exactly the files it names, keys among ``OUTPUT_KEYS``
    (``main_tex``, ``main_md``, ``main_html``, ``privacy_tex``, ``privacy_md``, ``privacy_html``), e.g.
    Snakemake's ``dict(snakemake.output.items())``. `metric_names` None: ``DEFAULT_TABLE_METRICS``. Every text
    is rendered before any file is written, so an error in the data leaves no file behind.
    """
    if isinstance(out_dir, Mapping):
        unknown = [k for k in out_dir if k not in OUTPUT_KEYS]
        if unknown:
            raise ValueError(f"unknown table output key(s) {unknown}; known: {list(OUTPUT_KEYS)}")
        targets = {k: Path(v) for k, v in out_dir.items()}
    else:
        suffixes = ("tex", "md", "html") if html_pages else ("tex", "md")
        targets = {f"{t}_{x}": Path(out_dir) / f"{t}_{dataset}.{x}" for t in ("main", "privacy") for x in suffixes}
    metrics = pd.read_parquet(metrics_parquet)
    privacy = pd.read_parquet(privacy_parquet)
    info = _metric_info(metric_info)
    names = list(DEFAULT_TABLE_METRICS if metric_names is None else metric_names)
    tables = {"main": main_results_table(metrics, dataset, names, privacy=privacy),
              "privacy": privacy_table(privacy, dataset)}
    render = {"tex": to_latex, "md": to_markdown, "html": to_html}
    texts = {}
    for key, path in targets.items():
        which, kind = key.split("_")
        kwargs = {"metric_info": info} if which == "main" else {}
        texts[path] = render[kind](tables[which], **kwargs)
    return [write_atomic(path, lambda fh, text=text: fh.write(text.encode("utf-8"))) for path, text in texts.items()]
