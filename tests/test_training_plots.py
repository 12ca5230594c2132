"""Tests for dpmedgen.plots.training: training-curve and job-cost figures."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dpmedgen.plots import training
from dpmedgen.plots.style import PRIVACY_ORDER, mean_ci95, privacy_color
from dpmedgen.plots.training import (
    cost_figure,
    default_span,
    ema,
    plot_cost,
    plot_training_curves,
    training_curves_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DPSGD_LEDGER = {
    "dataset": "toy", "model": "dcgan", "privacy": "dpsgd", "seed": 0, "mechanism": "dpsgd",
    "guarantee": "formal", "unit": "patient", "epsilon_spent": 0.97, "epsilon_target": 1.0, "delta": 1e-5,
}
NONE_LEDGER = {
    "dataset": "toy", "model": "ddpm", "privacy": "none", "seed": 0, "mechanism": "none",
    "guarantee": "none", "unit": "image", "epsilon_spent": math.inf, "epsilon_target": math.inf, "delta": 0.0,
}


@pytest.fixture
def captured(monkeypatch):
    """Figures handed to save_figure, not rendered (fast; the artists are what is checked)."""
    figs = []
    monkeypatch.setattr(training, "save_figure", lambda fig, paths: figs.append(fig))
    return figs


def explicit_ema(x, span):
    a = 2.0 / (span + 1)
    out = []
    for t in range(len(x)):
        w = (1 - a) ** np.arange(t, -1, -1)
        out.append(float(np.dot(w, x[: t + 1]) / w.sum()))
    return np.array(out)


def class_log(n_per_class=30, n_classes=2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for c in range(n_classes):
        for e in range(1, n_per_class + 1):
            rows.append(dict(epoch=e, step=2 * e, loss_discriminator=1.0 + rng.random(),
                             loss_generator=0.5 + rng.random(), real_batch=10.0,
                             epsilon_spent=np.nan if e % 2 else 0.03 * e, seconds_per_step=0.1, **{"class": c}))
    return pd.DataFrame(rows)


def gid_lines(ax, prefix):
    return {ln.get_gid(): ln for ln in ax.lines if (ln.get_gid() or "").startswith(prefix)}


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def ax_texts(ax):
    return " ".join(t.get_text() for t in ax.texts)


def legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_ema_matches_its_formula():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    for span in (2, 3, 7):
        np.testing.assert_allclose(ema(x, span), explicit_ema(x, span))
    np.testing.assert_array_equal(ema(x, 1), x)  # span 1: no smoothing
    assert ema(x, 5)[0] == x[0]  # bias-corrected: starts at the first value
    assert default_span(7) == 1 and default_span(30) == 3 and default_span(125) == 12 and default_span(10**5) == 50
    with pytest.raises(ValueError):
        ema(x, 0)


def test_class_log_panels_smoothing_and_epsilon(captured):
    log = class_log()
    plot_training_curves(log, DPSGD_LEDGER, ["unused.png"])
    (fig,) = captured
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["discriminator loss", "generator loss", "ε spent"]
    assert all(ax.get_xlabel() == "step (per class generator)" for ax in axes)
    span = default_span(30)
    for ax, col in zip(axes[:2], ["loss_discriminator", "loss_generator"]):
        assert ax.get_ylabel() == "loss (epoch mean)"
        for c in (0, 1):
            rows = log[log["class"] == c]
            raw = gid_lines(ax, "raw:")[f"raw:{col}:class {c}"]
            smooth = gid_lines(ax, "ema:")[f"ema:{col}:class {c}"]
            np.testing.assert_array_equal(raw.get_xdata(), rows["step"])
            np.testing.assert_allclose(raw.get_ydata(), rows[col])
            np.testing.assert_allclose(smooth.get_ydata(), explicit_ema(rows[col].to_numpy(), span))
            assert raw.get_alpha() < 1 and raw.get_linewidth() < smooth.get_linewidth()  # raw: thin and light

    eps_ax = axes[2]
    for c in (0, 1):  # empty cells are skipped, the rest drawn as logged
        line = gid_lines(eps_ax, "eps:")[f"eps:class {c}"]
        rows = log[(log["class"] == c) & log["epsilon_spent"].notna()]
        np.testing.assert_array_equal(line.get_xdata(), rows["step"])
        np.testing.assert_allclose(line.get_ydata(), rows["epsilon_spent"])
    target = gid_lines(eps_ax, "eps_target")["eps_target"]
    assert set(np.asarray(target.get_ydata(), dtype=float)) == {1.0}
    final = gid_lines(eps_ax, "eps_final")["eps_final"]
    assert list(final.get_ydata()) == [0.97] and list(final.get_xdata()) == [60.0]
    assert "per patient" in eps_ax.get_ylabel() and "δ = 1e-05" in eps_ax.get_ylabel()
    labels = legend_texts(fig)
    assert {"class 0", "class 1", f"EMA (span {span} epochs)", "target ε = 1", "ledger final ε = 0.97"} <= set(labels)
    assert fig._suptitle.get_text() == "toy · DCGAN · DP-SGD · target ε = 1 · seed 0"


def test_inf_epsilon_panel_says_no_accounting(captured):
    log = class_log(n_per_class=8).assign(epsilon_spent=np.inf)
    plot_training_curves(log, NONE_LEDGER, ["unused.png"])
    plot_training_curves(log, None, ["unused.png"], title="no ledger")
    for fig in captured:
        eps_ax = visible_axes(fig)[-1]
        assert eps_ax.get_title() == "ε spent"
        assert "no privacy accounting" in ax_texts(eps_ax)
        assert not eps_ax.lines  # nothing drawn at infinity
    assert "guarantee: none" in ax_texts(visible_axes(captured[0])[-1])
    # a guarantee "none" ledger wins over finite numbers in the log (output perturbation keeps the target)
    out_ledger = NONE_LEDGER | {"mechanism": "output_gaussian", "privacy": "output_gaussian", "epsilon_target": 1.0}
    plot_training_curves(class_log(n_per_class=8).assign(epsilon_spent=1.0), out_ledger, ["unused.png"])
    text = ax_texts(visible_axes(captured[-1])[-1])
    assert "guarantee: none" in text and "output Gaussian noise" in text


def test_fusion_columns_without_class(captured):
    n = 40
    rng = np.random.default_rng(1)
    log = pd.DataFrame(dict(epoch=np.arange(1, n + 1), step=3 * np.arange(1, n + 1),
                            loss_discriminator_mri=1 + rng.random(n), loss_discriminator_pet=1 + rng.random(n),
                            loss_generator=40 + rng.random(n), real_batch=40.0,
                            epsilon_spent=np.linspace(0.1, 1.0, n), seconds_per_step=0.5))
    plot_training_curves(log, DPSGD_LEDGER | {"model": "ddcgan"}, ["unused.png"])
    (fig,) = captured
    axes = visible_axes(fig)
    assert len(axes) == 4  # three losses + ε, on a 2 x 2 grid
    assert [ax.get_title() for ax in axes[:3]] == ["discriminator MRI loss", "discriminator PET loss", "generator loss"]
    assert all(ax.get_xlabel() == "step" for ax in axes)
    for ax in axes[:3]:
        assert set(gid_lines(ax, "raw:")) == {f"raw:{ax.lines[0].get_gid().split(':')[1]}:all"}
        assert len(gid_lines(ax, "ema:")) == 1
    np.testing.assert_allclose(gid_lines(axes[3], "eps:")["eps:all"].get_ydata(), log["epsilon_spent"])
    assert not any(t.startswith("class") for t in legend_texts(fig))


def test_single_row_and_wide_range_log(captured):
    one = pd.DataFrame({"epoch": [1], "step": [16], "loss_denoiser": [0.3], "epsilon_spent": [""]})
    plot_training_curves(one, None, ["unused.png"])
    ax = visible_axes(captured[0])[0]
    (line,) = ax.lines
    assert line.get_marker() == "o" and list(line.get_ydata()) == [0.3]  # one point, visible
    assert "no privacy accounting" in ax_texts(visible_axes(captured[0])[1])
    assert "too few epochs to smooth" in " ".join(legend_texts(captured[0]))
    # positive losses over more than two decades: log axis, said in the title
    wide = pd.DataFrame({"step": np.arange(1, 31), "loss_generator": np.geomspace(1.0, 1e-3, 30), "epsilon_spent": 1.0})
    plot_training_curves(wide, None, ["unused.png"])
    ax = visible_axes(captured[1])[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_title()


@pytest.mark.parametrize("name, text, message", [
    ("no_step_log.csv", "epoch,loss_generator,epsilon_spent\n1,0.5,\n", "no 'step' column"),
    ("header_only.csv", "epoch,step,loss_generator,epsilon_spent\n", "empty"),
    ("blank.csv", "", "empty"),
    ("no_loss.csv", "epoch,step,epsilon_spent\n1,2,0.1\n", "loss_"),
])
def test_bad_logs_raise_with_the_file_name(tmp_path, name, text, message):
    log = tmp_path / name
    log.write_text(text)
    with pytest.raises(ValueError, match=re.escape(name) + ".*" + re.escape(message)):
        plot_training_curves(log, None, [tmp_path / "x.png"])
    assert not (tmp_path / "x.png").exists()


def test_training_curves_figure_reads_a_run_dir(tmp_path):
    run = tmp_path / "dcgan" / "dpsgd" / "eps1" / "seed0"
    run.mkdir(parents=True)
    class_log(n_per_class=12).to_csv(run / "train_log.csv", index=False)
    (run / "privacy.json").write_text(json.dumps(DPSGD_LEDGER))
    inf_run = tmp_path / "none_run"
    inf_run.mkdir()
    class_log(n_per_class=5).assign(epsilon_spent=np.inf).to_csv(inf_run / "train_log.csv", index=False)
    (inf_run / "privacy.json").write_text(json.dumps(NONE_LEDGER))  # json writes Infinity, as the ledgers do
    paths = [tmp_path / "figs" / "curves.png"]
    training_curves_figure(run, paths)  # run directory: the ledger beside the log
    # the rule's form: log, ledger, paths
    training_curves_figure(inf_run / "train_log.csv", inf_run / "privacy.json", [tmp_path / "figs" / "none.png"])
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "figs" / "none.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError, match="no training log"):
        training_curves_figure(tmp_path / "missing_dir" / "train_log.csv", paths)


# ---------------------------------------------------------------------------------------------- cost


def cost_table(scale=1.0, metrics=("cost_train_wall_s", "cost_train_max_rss_mb", "cost_generate_wall_s",
                                   "cost_evaluate_wall_s", "cost_train_cpu_s")) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for model in ("dcgan", "ddpm"):
        for privacy, epsilons in (("none", (np.inf,)), ("dpsgd", (1.0, 10.0)), ("input_laplace", (1.0, 10.0))):
            for eps in epsilons:
                for seed in (0, 1):
                    for metric in metrics:
                        rows.append(dict(dataset="toy", model=model, privacy=privacy, epsilon_target=eps, seed=seed,
                                         metric=metric, value=scale * (10 + 90 * rng.random())))
    rows.append(dict(dataset="other", model="dcgan", privacy="none", epsilon_target=np.inf, seed=0,
                     metric="cost_train_wall_s", value=1e6))
    return pd.DataFrame(rows)


def bars(ax):
    return {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("bar:")}


def test_cost_bars_are_means_over_seeds_and_eps(captured):
    table = cost_table()
    plot_cost(table, "toy", ["unused.png"])
    (fig,) = captured
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["training: wall time", "training: peak memory (max RSS)",
                                               "generation: wall time", "evaluation: wall time"]
    assert [ax.get_ylabel() for ax in axes] == ["time (s)", "memory (MB)", "time (s)", "time (s)"]
    toy = table[table["dataset"] == "toy"]
    for ax, metric in zip(axes, ["cost_train_wall_s", "cost_train_max_rss_mb", "cost_generate_wall_s",
                                 "cost_evaluate_wall_s"]):
        found = bars(ax)
        assert len(found) == 6  # 2 models x 3 privacy modes
        for (model, privacy), vals in toy[toy["metric"] == metric].groupby(["model", "privacy"])["value"]:
            bar = found[f"bar:{metric}:{model}:{privacy}"]
            assert bar.get_height() == pytest.approx(vals.mean())
            assert bar.get_facecolor()[:3] == pytest.approx(tuple(int(privacy_color(privacy)[i:i + 2], 16) / 255
                                                                   for i in (1, 3, 5)))
            assert (bar.get_hatch() is not None) == (privacy == "input_laplace")  # Laplace: hatched
            if privacy != "none":  # 4 values (2 seeds x 2 eps): whisker = mean_ci95
                lo, hi = mean_ci95(vals.to_numpy())
                (seg,) = [c for c in ax.collections if c.get_gid() == f"ci:{metric}:{model}:{privacy}"][0].get_segments()
                assert seg[:, 1] == pytest.approx([max(lo, 0), hi])
    # bars of one model are ordered as PRIVACY_ORDER
    xs = {p: bars(axes[0])[f"bar:cost_train_wall_s:dcgan:{p}"].get_x() for p in ("none", "dpsgd", "input_laplace")}
    assert sorted(xs, key=xs.get) == sorted(xs, key=PRIVACY_ORDER.index)


def test_cost_units_switch_to_minutes_and_gb(captured):
    table = cost_table(scale=100.0, metrics=("cost_train_wall_s", "cost_train_max_rss_mb"))
    plot_cost(table, "toy", ["unused.png"])
    axes = visible_axes(captured[0])
    assert [ax.get_ylabel() for ax in axes] == ["time (min)", "memory (GB)"]
    vals = table[(table["dataset"] == "toy") & (table["metric"] == "cost_train_wall_s") & (table["model"] == "ddpm")
                 & (table["privacy"] == "dpsgd")]["value"]
    assert bars(axes[0])["bar:cost_train_wall_s:ddpm:dpsgd"].get_height() == pytest.approx(vals.mean() / 60)


def test_cost_missing_metrics(captured):
    only_train = cost_table(metrics=("cost_train_wall_s",))
    plot_cost(only_train, "toy", ["unused.png"])
    assert [ax.get_title() for ax in visible_axes(captured[0])] == ["training: wall time"]
    no_cost = cost_table(metrics=("fid", "cost_train_cpu_s"))
    with pytest.raises(ValueError, match="no cost metrics"):
        plot_cost(no_cost, "toy", ["unused.png"])
    with pytest.raises(ValueError, match="no metric rows for dataset 'pet'"):
        plot_cost(only_train, "pet", ["unused.png"])
    with pytest.raises(ValueError, match="lacks columns"):
        plot_cost(only_train.drop(columns="model"), "toy", ["unused.png"])


def test_cost_figure_writes_files(tmp_path):
    parquet = tmp_path / "metrics.parquet"
    cost_table().to_parquet(parquet)
    paths = [tmp_path / "cost.png", tmp_path / "cost.pdf"]
    cost_figure(parquet, "toy", paths)
    assert paths[0].read_bytes()[:8] == PNG_MAGIC and paths[1].read_bytes()[:5] == b"%PDF-"
    cost_table(metrics=("fid",)).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"metrics\.parquet.*no cost metrics"):
        cost_figure(parquet, "toy", [tmp_path / "none.png"])


def test_module_does_not_import_torch():
    code = "import sys, dpmedgen.plots.training; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
