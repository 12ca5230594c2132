"""Tests for dpmedgen.plots.audit: the AUC bound, where runs are placed, violations, files, errors."""

from __future__ import annotations

import importlib
import importlib.abc
import math
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import dpmedgen.plots.audit as audit
from dpmedgen.metrics.membership import dp_tpr_bound
from dpmedgen.plots.audit import dp_auc_bound, plot_privacy_audit, privacy_audit_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONVERSION = 12.0  # toy per-patient ε = 12 x target ε (as for an image-level mechanism, 12 images a patient)


def closed_form_auc(eps: float, delta: float) -> float:
    """Area under min(1, e^ε x + δ, 1 - e^-ε (1 - δ - x)), derived by hand: the two lines cross at
    x1 = (1 - δ) / (1 + e^ε), the second reaches 1 at x = 1 - δ, so the area is
    ∫0^x1 (e^ε x + δ) + ∫x1^(1-δ) (1 - e^-ε (1 - δ - x)) + δ = (1 - δ)(δ + e^ε) / (1 + e^ε) + δ;
    for δ = 0 that is e^ε / (1 + e^ε)."""
    return (1 - delta) * (delta + math.exp(eps)) / (1 + math.exp(eps)) + delta


# --- the AUC bound -----------------------------------------------------------------------------------


def test_auc_bound_is_one_half_without_privacy_loss_and_grows_with_epsilon():
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-9)
    assert dp_auc_bound(1e-9, 0.0) == pytest.approx(0.5, abs=1e-6)
    eps = np.geomspace(1e-3, 30, 24)
    for delta in (0.0, 1e-5, 0.05):
        values = np.array([dp_auc_bound(e, delta) for e in eps])
        assert np.all(np.diff(values) > -1e-12) and values[-1] > values[0]  # monotone in ε
        assert np.all(values <= 1.0) and np.all(values >= 0.5)
    assert dp_auc_bound(math.inf, 0.0) == 1.0
    assert dp_auc_bound(40.0, 0.0) == pytest.approx(1.0, abs=1e-6)
    assert dp_auc_bound(1.0, 1e-3) > dp_auc_bound(1.0, 0.0)  # and in δ
    with pytest.raises(ValueError):
        dp_auc_bound(-1.0, 0.0)


@pytest.mark.parametrize("eps", [0.05, 0.5, 1.0, 2.0, 4.4, 7.0, 12.0])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 0.1])
def test_auc_bound_matches_the_closed_form(eps, delta):
    assert dp_auc_bound(eps, delta) == pytest.approx(closed_form_auc(eps, delta), abs=1e-5)
    if delta == 0.0:
        assert dp_auc_bound(eps, 0.0) == pytest.approx(1 / (1 + math.exp(-eps)), abs=1e-5)  # a sigmoid


# --- toy study ---------------------------------------------------------------------------------------


def toy_tables(eps_lower=0.0, dataset="toy", formal=True, discriminator_bound=True):
    """A study of one model, two seeds: non-private, input Laplace (formal, per-patient ε = 12 x target,
    δ = 0) and output Gaussian (no guarantee), both private ones at target ε 1 and 10. The DCR attack has
    bound rows for the formal runs; the discriminator attack has them only if `discriminator_bound`."""
    metric_rows, ledger_rows = [], []
    runs = [("none", math.inf)] + [(p, e) for p in ("input_laplace", "output_gaussian") for e in (1.0, 10.0)]
    for privacy, target in runs:
        for seed in (0, 1):
            is_formal = formal and privacy == "input_laplace"
            claim = CONVERSION * target if is_formal else math.nan
            ledger_rows.append(dict(
                dataset=dataset, model="dcgan", privacy=privacy, epsilon_target=target, seed=seed,
                guarantee="formal" if is_formal else "none", unit="image",
                epsilon_spent=target if is_formal else math.inf, delta=0.0,
                epsilon_per_patient=claim, delta_per_patient=math.nan,
                noise="laplace" if privacy == "input_laplace" else ("gaussian" if privacy != "none" else None),
            ))

            def add(metric, value):
                metric_rows.append(dict(dataset=dataset, model="dcgan", privacy=privacy, epsilon_target=target,
                                        seed=seed, metric=metric, value=float(value)))

            base = {"none": 0.70, "input_laplace": 0.52 + 0.01 * seed, "output_gaussian": 0.55}[privacy]
            add("mia_n_nonmembers_patient", 20)
            for prefix in ("mia_dcr", "mia_discriminator"):
                add(f"{prefix}_auc_patient", base)
                add(f"{prefix}_tpr_at_fpr1pct_patient", base / 10)
                if is_formal and (prefix == "mia_dcr" or discriminator_bound):
                    add(f"{prefix}_bound_tpr_at_fpr1pct_patient", dp_tpr_bound(0.01, claim, 0.0))
                    lower = eps_lower(target, seed) if callable(eps_lower) else eps_lower
                    add(f"{prefix}_eps_lower_at_fpr1pct_patient", lower)
    return pd.DataFrame(metric_rows), pd.DataFrame(ledger_rows)


def draw(monkeypatch, metrics, privacy, **kwargs):
    """Build the figure without rendering it; returns it for inspection."""
    figures = []
    monkeypatch.setattr(audit, "save_figure", lambda fig, paths: figures.append(fig))
    plot_privacy_audit(metrics, privacy, "toy", ["unused.png"], **kwargs)
    (fig,) = figures
    return fig


def artists(fig, prefix: str) -> dict:
    return {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines if ln.get_gid() and ln.get_gid().startswith(prefix)}


def note_text(fig) -> str:
    text = next(t.get_text() for sf in fig.subfigs for t in sf.texts if t.get_gid() == "note")
    return " ".join(text.split())  # undo the line wrapping


# --- placement ---------------------------------------------------------------------------------------


def test_points_sit_at_the_claimed_per_patient_epsilon_not_the_target(monkeypatch):
    metrics, privacy = toy_tables()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent bound rows, nothing above the claim: no warning at all
        fig = draw(monkeypatch, metrics, privacy)
    points = artists(fig, "points|")
    for quantity in ("auc", "tpr", "eps_lower"):
        line = points[f"points|mia_dcr|{quantity}|dcgan|input_laplace"]
        np.testing.assert_allclose(line.get_xdata(), [12.0, 120.0])  # per-patient ε, not the targets 1, 10
    np.testing.assert_allclose(points["points|mia_dcr|auc|dcgan|input_laplace"].get_ydata(), [0.525, 0.525])
    # the x axis spans the claimed ε, and the bound is drawn at the study's δ (0)
    ax = next(a for a in fig.axes if any(ln.get_gid() == "points|mia_dcr|auc|dcgan|input_laplace" for ln in a.lines))
    lo, hi = ax.get_xlim()
    assert lo < 12 < 120 < hi and lo > 1.0
    bound = artists(fig, "bound|mia_dcr|auc|")["bound|mia_dcr|auc|0"]
    x, y = bound.get_xdata(), bound.get_ydata()
    np.testing.assert_allclose(y, [closed_form_auc(e, 0.0) for e in x], atol=1e-5)


def test_no_guarantee_runs_are_not_on_the_epsilon_axis(monkeypatch):
    metrics, privacy = toy_tables()
    fig = draw(monkeypatch, metrics, privacy)
    placed = {gid.split("|")[4] for gid in artists(fig, "points|")}
    assert placed == {"input_laplace"}  # output perturbation (guarantee "none") is left out
    assert not any("output_gaussian" in gid or "|none" in gid for gid in artists(fig, ""))
    # the non-private run is a horizontal reference at its mean, in every AUC / TPR panel
    ref = artists(fig, "reference|")
    assert np.allclose(ref["reference|mia_dcr|auc|dcgan"].get_ydata(), 0.70)
    assert "reference|mia_discriminator|tpr|dcgan" in ref
    assert "output Gaussian" in note_text(fig) and "no formal guarantee" in note_text(fig)


def test_lower_bound_above_the_claim_warns_and_is_marked(monkeypatch):
    metrics, privacy = toy_tables(eps_lower=lambda target, seed: 200.0 if (target, seed) == (10.0, 1) else 0.0)
    with pytest.warns(UserWarning, match=r"ε lower bound 200 > claimed per-patient ε 120.*contradicts"):
        fig = draw(monkeypatch, metrics, privacy)
    ring = artists(fig, "violation|")["violation|mia_dcr|dcgan|input_laplace|10"]
    assert list(ring.get_xdata()) == [120.0] and list(ring.get_ydata()) == [200.0]  # at the seed's own value


def test_lower_bound_is_compared_with_the_per_patient_claim(monkeypatch):
    # 5 is above the target ε (1) but below the claimed per-patient ε (12): no contradiction
    metrics, privacy = toy_tables(eps_lower=lambda target, seed: 5.0 if target == 1.0 else 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = draw(monkeypatch, metrics, privacy)
    assert not artists(fig, "violation|")


def test_bound_rows_that_disagree_with_the_claim_warn(monkeypatch):
    metrics, privacy = toy_tables()
    rows = metrics["metric"] == "mia_dcr_bound_tpr_at_fpr1pct_patient"
    metrics.loc[rows, "value"] = [dp_tpr_bound(0.01, e, 0.0) for e in metrics.loc[rows, "epsilon_target"]]  # at the target
    with pytest.warns(UserWarning, match="bound rows disagree"):
        draw(monkeypatch, metrics, privacy)


def test_attack_without_bound_rows_is_plotted_hollow_and_skipped_in_c(monkeypatch):
    metrics, privacy = toy_tables(discriminator_bound=False)
    points = artists(draw(monkeypatch, metrics, privacy), "points|")
    assert "points|mia_discriminator|auc|dcgan|input_laplace|uncovered" in points
    assert "points|mia_discriminator|auc|dcgan|input_laplace" not in points  # not drawn as covered
    assert not any(g.startswith("points|mia_discriminator|eps_lower") for g in points)
    assert "points|mia_dcr|eps_lower|dcgan|input_laplace" in points


def test_dataset_without_formal_runs_still_gets_a_figure(monkeypatch):
    metrics, privacy = toy_tables(formal=False)
    fig = draw(monkeypatch, metrics, privacy)
    assert not artists(fig, "points|") and not artists(fig, "bound|")
    assert "reference|mia_dcr|auc|dcgan" in artists(fig, "reference|")
    assert "No run of toy has a formal guarantee" in note_text(fig)


# --- files and errors --------------------------------------------------------------------------------


def test_figure_files_are_written(tmp_path):
    metrics, privacy = toy_tables()
    metrics.to_parquet(tmp_path / "metrics.parquet")
    privacy.to_parquet(tmp_path / "privacy.parquet")
    paths = [tmp_path / "figs" / "audit.png", tmp_path / "figs" / "audit.pdf"]
    privacy_audit_figure(tmp_path / "metrics.parquet", tmp_path / "privacy.parquet", "toy", paths,
                         attacks=("mia_dcr",))  # one row of panels: quicker to render
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert all(p.stat().st_size > 5000 for p in paths)


def test_errors_are_clear(tmp_path):
    metrics, privacy = toy_tables()
    with pytest.raises(ValueError, match="no metric rows for dataset 'brats'"):
        plot_privacy_audit(metrics, privacy, "brats", [tmp_path / "x.png"])
    with pytest.raises(ValueError, match=r"privacy table lacks columns \['guarantee'\]"):
        plot_privacy_audit(metrics, privacy.drop(columns="guarantee"), "toy", [tmp_path / "x.png"])
    with pytest.raises(ValueError, match=r"metrics table lacks columns \['seed'\]"):
        plot_privacy_audit(metrics.drop(columns="seed"), privacy, "toy", [tmp_path / "x.png"])
    with pytest.raises(ValueError, match="no privacy \\(ledger\\) rows for dataset 'toy'"):
        plot_privacy_audit(metrics, privacy.assign(dataset="other"), "toy", [tmp_path / "x.png"])
    with pytest.raises(ValueError, match="no membership-inference rows"):
        plot_privacy_audit(metrics, privacy, "toy", [tmp_path / "x.png"], level="image")
    with pytest.raises(ValueError, match="level must be"):
        plot_privacy_audit(metrics, privacy, "toy", [tmp_path / "x.png"], level="slice")
    assert not (tmp_path / "x.png").exists()


def test_importing_the_module_does_not_import_torch():
    """Import dpmedgen.plots.audit afresh with torch made unimportable (in-process: the test session has
    torch loaded already); every module touched is put back afterwards."""

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} imported by dpmedgen.plots.audit at module import")
            return None

    def ours(name: str) -> bool:
        return name in ("torch", "dpmedgen") or name.startswith(("torch.", "dpmedgen."))

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    blocker = NoTorch()
    try:
        for k in saved:
            del sys.modules[k]
        sys.meta_path.insert(0, blocker)
        fresh = importlib.import_module("dpmedgen.plots.audit")
        assert fresh is not audit and "torch" not in sys.modules
    finally:
        sys.meta_path.remove(blocker)
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
