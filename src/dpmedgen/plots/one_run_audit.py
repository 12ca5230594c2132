"""The one-run audit figure: per audited DP-SGD configuration, the claimed epsilon against the epsilon lower
bounds of its white-box (gradient canaries) and black-box (canary patients, samples only) audits
(`dpmedgen.audit`)."""

from __future__ import annotations

import os
from typing import Sequence

import pandas as pd
from matplotlib.lines import Line2D

from ..results import EPSILON_TARGET
from .style import model_label, model_marker, new_figure, privacy_color, save_figure

VIOLATION_COLOR = "#D55E00"
BLACK_BOX_COLOR = "#009E73"
#: (legend name, annotation offset in points) per threat model, by the prefix of its `threat_model` value.
THREATS = {"white-box": ("white-box (gradient canaries)", (4, 4)), "black-box": ("black-box (canary patients)", (4, -9))}


def _threat(threat_model: str) -> str:
    return "black-box" if str(threat_model).startswith("black-box") else "white-box"


def plot_one_run_audit(audits: pd.DataFrame, dataset: str, paths: Sequence[str | os.PathLike]) -> None:
    """x: the claimed epsilon (the ledger's, per patient); y: the audit's 95 % lower bound; one point per
    audited run and threat model (marker = model, colour = threat model), labelled with the number of canaries
    m and the guesses; the diagonal is the claim: a point above it is a violation (ringed, in the legend).
    ValueError without rows for `dataset`."""
    df = audits[audits["dataset"] == dataset]
    if df.empty:
        raise ValueError(f"no audit rows for dataset {dataset!r}")
    fig = new_figure(4.2, 3.6)
    ax = fig.subplots()
    top = float(max(df["epsilon_claimed"].max(), df["epsilon_lower"].max())) * 1.25
    ax.plot([0, top], [0, top], color="#777777", lw=1.0, dashes=(4, 2), label="claimed ε (a point above: violation)")
    for (model, threat), rows in df.groupby(["model", df["threat_model"].map(_threat)], sort=True):
        name, offset = THREATS[threat]
        color = BLACK_BOX_COLOR if threat == "black-box" else privacy_color("dpsgd")
        x, y = rows["epsilon_claimed"].to_numpy(), rows["epsilon_lower"].to_numpy()
        style = {"facecolors": "none", "edgecolors": color, "s": 95, "lw": 1.5} if threat == "black-box" else {
            "color": color, "s": 42}  # hollow and larger: visible around a white-box point at the same place
        ax.scatter(x, y, marker=model_marker(model), zorder=3, label=f"{model_label(model)} · DP-SGD · {name}", **style)
        bad = y > x
        if bad.any():
            ax.scatter(x[bad], y[bad], s=160, facecolors="none", edgecolors=VIOLATION_COLOR, lw=1.5, zorder=4)
        for r in rows.itertuples():
            ax.annotate(f"m={r.n_canaries}, {r.n_correct}/{r.n_guesses}", (r.epsilon_claimed, r.epsilon_lower),
                        textcoords="offset points", xytext=offset, fontsize=6.5, color=color)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("claimed ε per patient (ledger)")
    ax.set_ylabel("ε lower bound (one-run audit, 95 %)")
    targets = ", ".join(f"{t:g}" for t in sorted(df[EPSILON_TARGET].unique()))
    threats = " and ".join(THREATS[t][0] for t in sorted(set(df["threat_model"].map(_threat)), reverse=True))
    ax.set_title(f"{dataset}: one-run audit at target ε {targets}\n{threats}", fontsize=8)
    handles, _ = ax.get_legend_handles_labels()
    if (df["epsilon_lower"] > df["epsilon_claimed"]).any():
        handles.append(Line2D([], [], marker="o", ls="", ms=10, mfc="none", mec=VIOLATION_COLOR,
                              label="lower bound above the claim"))
    ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    save_figure(fig, list(paths))


def one_run_audit_figure(audit_parquet: str | os.PathLike, dataset: str, paths: Sequence[str | os.PathLike]) -> None:
    plot_one_run_audit(pd.read_parquet(audit_parquet), dataset, paths)


__all__ = ["one_run_audit_figure", "plot_one_run_audit"]
