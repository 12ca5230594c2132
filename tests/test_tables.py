"""Paper tables (dpmedgen.tables) from synthetic metrics / privacy tables."""

from __future__ import annotations

import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dpmedgen import tables
from dpmedgen.tables import main_results_table, privacy_table, to_html, to_latex, to_markdown, write_tables

INF = math.inf
INFO = {
    "fid_effnetlite0": SimpleNamespace(higher_is_better=False),
    "downstream_auroc": SimpleNamespace(higher_is_better=True),
    "fusion_qabf": SimpleNamespace(higher_is_better=True),
    "canary_train_share": SimpleNamespace(higher_is_better=None),
}
METRICS = ["fid_effnetlite0", "downstream_auroc", "fusion_qabf"]


def _metrics() -> pd.DataFrame:
    """2 seeds per run; (model, privacy, ε) -> {metric: (seed0, seed1)}."""
    runs = {
        ("dcgan", "none", INF): {"fid_effnetlite0": (300, 310), "downstream_auroc": (0.6, 0.7)},
        ("dcgan", "dpsgd", 10.0): {"fid_effnetlite0": (350, 352), "downstream_auroc": (0.55, 0.57)},
        ("dcgan", "dpsgd", 1.0): {"fid_effnetlite0": (400, 420), "downstream_auroc": (0.5, 0.52)},
        ("dcgan", "input_gaussian", 1.0): {"fid_effnetlite0": (380, 380), "downstream_auroc": (0.5, 0.5)},
        ("dcgan", "input_laplace", 1.0): {"fid_effnetlite0": (390, 390), "downstream_auroc": (0.5, 0.5)},
        ("dcgan", "output_laplace", 1.0): {"fid_effnetlite0": (320, 320), "downstream_auroc": (0.5, 0.5)},
        ("ddcgan", "none", INF): {"fid_effnetlite0": (200, 204), "fusion_qabf": (0.4, 0.5)},
        ("real_data", "none", INF): {"downstream_auroc": (0.9, 0.92)},
    }
    rows = []
    for (model, privacy, eps), values in runs.items():
        for metric, per_seed in values.items():
            for seed, v in enumerate(per_seed):
                rows.append(dict(dataset="toy", model=model, privacy=privacy, epsilon_target=eps, seed=seed,
                                 metric=metric, value=float(v), reference="test", n_real=10.0, n_fake=10.0))
    other = dict(rows[0], dataset="other", value=1.0)
    return pd.DataFrame(rows + [other])


def _ledger(model, privacy, eps, guarantee, **kw) -> dict:
    base = dict(dataset="toy", model=model, privacy=privacy, epsilon_target=eps, seed=0, guarantee=guarantee,
                unit="patient" if guarantee == "formal" else "image", epsilon_spent=kw.pop("epsilon_spent", INF),
                delta=kw.pop("delta", 0.0), epsilon_per_image=np.nan, epsilon_per_patient=np.nan,
                delta_per_image=np.nan, delta_per_patient=np.nan, noise_multiplier=np.nan, noise_scale=np.nan,
                noise=None, sample_rate=np.nan, steps=np.nan, accountant=None, output_noise=None)
    base.update(kw)
    return base


def _privacy() -> pd.DataFrame:
    return pd.DataFrame([
        # a no-guarantee ledger that still carries ε numbers: none of them may reach the table
        _ledger("dcgan", "output_laplace", 1.0, "none", output_noise='{"noise": "laplace", "noise_scale": 4096.0}',
                epsilon_per_image=1.0, epsilon_per_patient=12.0, delta_per_patient=1e-5),
        _ledger("dcgan", "none", INF, "none"),
        _ledger("dcgan", "dpsgd", 1.0, "formal", epsilon_spent=0.9937, delta=1e-5, epsilon_per_image=1.9873,
                epsilon_per_patient=0.9937, delta_per_image=5.4e-5, delta_per_patient=1e-5, noise_multiplier=30.0,
                sample_rate=0.5, steps=250.0, accountant="opacus PRV"),
        _ledger("dcgan", "dpsgd", 10.0, "formal", epsilon_spent=9.996, delta=1e-5, epsilon_per_image=19.99,
                epsilon_per_patient=9.996, delta_per_image=0.4388, delta_per_patient=1e-5, noise_multiplier=4.03,
                sample_rate=0.5, steps=250.0, accountant="opacus PRV"),
        _ledger("dcgan", "input_laplace", 1.0, "formal", epsilon_spent=1.0, delta=0.0, epsilon_per_image=0.0833,
                epsilon_per_patient=1.0, noise_scale=49152.0, noise="laplace", accountant="dp_accounting"),
        _ledger("ddcgan", "none", INF, "none"),
        dict(_ledger("dcgan", "none", INF, "none"), dataset="other"),
    ])


def _md_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _row(md: str, model: str, privacy: str, eps: str = "") -> list[str]:
    found = [r for r in _md_rows(md) if r[0] == model and r[1] == privacy and (not eps or r[2] == eps)]
    assert len(found) == 1, (model, privacy, eps, found)
    return found[0]


def test_main_table_stats_and_row_order():
    t = main_results_table(_metrics(), "toy", METRICS)
    assert list(t.index) == [
        ("dcgan", "none", INF), ("dcgan", "dpsgd", 1.0), ("dcgan", "dpsgd", 10.0),
        ("dcgan", "input_laplace", 1.0), ("dcgan", "input_gaussian", 1.0), ("dcgan", "output_laplace", 1.0),
        ("ddcgan", "none", INF), ("real_data", "none", INF),
    ]
    row = t.loc[("dcgan", "dpsgd", 1.0)]
    assert row[("fid_effnetlite0", "mean")] == pytest.approx(410.0)
    assert row[("fid_effnetlite0", "sd")] == pytest.approx(math.sqrt(200.0))  # sample sd (ddof 1)
    assert row[("fid_effnetlite0", "n")] == 2
    assert row[("fusion_qabf", "n")] == 0 and np.isnan(row[("fusion_qabf", "mean")])
    assert list(dict.fromkeys(t.columns.get_level_values(0))) == METRICS


def test_markdown_mean_sd_bold_and_reference():
    md = to_markdown(main_results_table(_metrics(), "toy", METRICS), metric_info=INFO)
    header = _md_rows(md)[0]
    assert header[3] == "`fid_effnetlite0` ↓" and header[4] == "`downstream_auroc` ↑"
    assert _row(md, "DCGAN", "DP-SGD", "1")[3:5] == ["410 ± 14", "0.510 ± 0.014"]
    assert _row(md, "DCGAN", "non-private")[2:5] == ["–", "305 ± 7", "**0.650 ± 0.071**"]  # max AUROC
    assert _row(md, "DDcGAN", "non-private")[3] == "**202 ± 3**"  # min FID
    ref = _row(md, "real data (reference)", "–")
    assert ref[4] == "0.910 ± 0.014"  # the highest AUROC, but a reference: never bold
    assert ref[3] == "–" and ref[5] == "–"
    assert "**" not in " ".join(ref)
    assert md.count("**") == 2 * 2 + 2  # two bold cells, plus **bold** in the caption
    assert "over 2 seeds" in md


def test_latex_structure_escaping_and_bold():
    tex = to_latex(main_results_table(_metrics(), "toy", METRICS), metric_info=INFO)
    assert tex.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:main-toy}",
                  r"\begin{tabular}{lllrrr}", r"\end{tabular}"):
        assert token in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert tex.count("{") == tex.count("}")
    assert r"fid\_effnetlite0 $\downarrow$" in tex and "fid_effnetlite0" not in tex
    assert r"$\mathbf{202 \pm 3}$" in tex and r"$410 \pm 14$" in tex
    assert r"$\mathbf{0.650 \pm 0.071}$" in tex and r"$0.910 \pm 0.014$" in tex
    body = tex[tex.index(r"\midrule"): tex.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 8 and all(r.count("&") == 5 for r in rows)
    assert rows[-1].startswith("real data (reference)") and r"\mathbf" not in rows[-1]
    assert "--" in rows[-1]  # missing cells


def test_ties_all_bold_and_no_direction_no_bold():
    df = _metrics()
    df = df[df["metric"] == "fid_effnetlite0"].copy()
    df.loc[(df["model"] == "ddcgan"), "value"] = 300.0  # ddcgan now 300, ties with...
    df.loc[(df["model"] == "dcgan") & (df["privacy"] == "none"), "value"] = 300.0  # ...dcgan non-private
    share = df.assign(metric="canary_train_share")
    md = to_markdown(main_results_table(pd.concat([df, share]), "toy", ["fid_effnetlite0", "canary_train_share"]),
                     metric_info=INFO)
    assert _row(md, "DCGAN", "non-private")[3] == "**300 ± 0**"
    assert _row(md, "DDcGAN", "non-private")[3] == "**300 ± 0**"
    assert _md_rows(md)[0][4] == "`canary_train_share`"  # no arrow
    assert all("**" not in r[4] for r in _md_rows(md)[2:])
    unknown = to_markdown(main_results_table(df.assign(metric="mystery"), "toy", ["mystery"]), metric_info=INFO)
    assert all("**" not in c for r in _md_rows(unknown)[2:] for c in r)


def test_one_seed_shows_mean_only():
    df = _metrics()
    df = df[df["seed"] == 0]
    t = main_results_table(df, "toy", ["fid_effnetlite0"])
    md, tex = to_markdown(t, metric_info=INFO), to_latex(t, metric_info=INFO)
    assert _row(md, "DCGAN", "DP-SGD", "1")[3] == "400" and "±" not in md.split("\n\n", 1)[1]
    assert "one seed (no sd)" in md and r"\pm" not in tex.split(r"\toprule")[1]


def test_absent_metric_left_out_none_present_raises():
    t = main_results_table(_metrics(), "toy", ["fid_effnetlite0", "ms_ssim_nn"])
    assert list(dict.fromkeys(t.columns.get_level_values(0))) == ["fid_effnetlite0"]
    assert t.attrs["absent_metrics"] == ["ms_ssim_nn"]
    with pytest.raises(ValueError, match=r"ms_ssim_nn.*'toy'"):
        main_results_table(_metrics(), "toy", ["ms_ssim_nn"])
    with pytest.raises(ValueError, match="nope"):
        main_results_table(_metrics(), "nope", METRICS)
    with pytest.raises(ValueError, match="epsilon_target"):
        main_results_table(_metrics().drop(columns="epsilon_target"), "toy", METRICS)


def test_caption_states_unit_delta_and_no_guarantee():
    t = main_results_table(_metrics(), "toy", METRICS, privacy=_privacy())
    md = to_markdown(t, metric_info=INFO)
    caption = md.split("\n\n", 1)[0]
    assert "target ε per patient" in caption and "δ = 1e-5" in caption and "input Laplace: δ = 0" in caption
    assert "† no privacy guarantee" in caption and "output Laplace" in caption
    assert _row(md, "DCGAN", "output Laplace†")[2] == "1"
    assert r"$\delta = 10^{-5}$" in to_latex(t, metric_info=INFO)


@pytest.mark.parametrize("randomness", ["deterministic", "secret"])
def test_captions_say_when_the_study_is_not_a_dp_release(randomness):
    privacy = _privacy().assign(randomness=randomness, adjacency_statement="replace one patient by any other")
    for table in (main_results_table(_metrics(), "toy", METRICS, privacy=privacy), privacy_table(privacy, "toy")):
        caption = to_markdown(table, metric_info=INFO).split("\n\n", 1)[0]
        assert caption.removeprefix("Table: ").startswith("**Not a DP release") == (randomness == "deterministic")
        assert "neighbouring datasets: replace one patient by any other" in caption


def test_privacy_table_no_guarantee_has_no_epsilon():
    p = privacy_table(_privacy(), "toy")
    assert list(p["privacy"]) == ["none", "dpsgd", "dpsgd", "input_laplace", "output_laplace", "none"]
    out = p[p["privacy"] == "output_laplace"].iloc[0]
    assert np.isnan(out["epsilon_per_image"]) and np.isnan(out["epsilon_per_patient"]) and np.isnan(out["delta"])
    md = to_markdown(p)
    header = _md_rows(md)[0]
    row = _row(md, "DCGAN", "output Laplace")
    cells = dict(zip(header, row))
    assert cells["ε/image"] == cells["ε/patient"] == "no guarantee"
    assert cells["target ε"].endswith("†")  # the grid value tells the runs apart, marked as calibration only
    assert cells["Noise"] == "Laplace scale b (released images)" and cells["Scale"] == "4096"
    nonpriv = dict(zip(header, _row(md, "DCGAN", "non-private")))
    assert nonpriv["Guarantee"] == "none (non-private)" and nonpriv["ε/patient"] == "no guarantee"
    dp10 = dict(zip(header, _row(md, "DCGAN", "DP-SGD", "10")))
    assert (dp10["ε/image"], dp10["δ/image"], dp10["ε/patient"], dp10["δ"]) == ("20.0", "0.44", "10.0", "1e-5")
    assert (dp10["Noise"], dp10["Scale"], dp10["q"], dp10["Steps"]) == ("DP-SGD noise multiplier σ", "4.03",
                                                                         "0.500", "250")
    lap = dict(zip(header, _row(md, "DCGAN", "input Laplace")))
    assert (lap["ε/image"], lap["δ"], lap["Scale"], lap["Unit"]) == ("0.0833", "0", "49152", "patient")
    tex = to_latex(p)
    assert r"\label{tab:privacy-toy}" in tex and r"$5.4 \times 10^{-5}$" in tex and "dp\\_accounting" in tex
    assert all("no guarantee" in line for line in tex.splitlines() if "output Laplace" in line)


def test_column_decimals_rule():
    assert tables.column_decimals([312.4, 5.0]) == 0
    assert tables.column_decimals([0.827, 0.01]) == 3
    assert tables.column_decimals([12.5, np.inf, np.nan]) == 1
    assert tables.column_decimals([0.0]) == 0
    assert tables._sig(9.996) == "10.0" and tables._sig(0.08333) == "0.0833"


def test_write_tables_atomic(tmp_path, monkeypatch):
    mp, pp = tmp_path / "metrics.parquet", tmp_path / "privacy.parquet"
    _metrics().to_parquet(mp)
    _privacy().to_parquet(pp)
    out = tmp_path / "tables"
    paths = write_tables(mp, pp, "toy", out, METRICS, metric_info=INFO)
    assert sorted(p.name for p in paths) == ["main_toy.md", "main_toy.tex", "privacy_toy.md", "privacy_toy.tex"]
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)
    assert (out / "main_toy.tex").read_text().startswith(r"\begin{table}")

    with pytest.raises(ValueError, match="nope"):  # a data error writes nothing
        write_tables(mp, pp, "nope", tmp_path / "empty", METRICS, metric_info=INFO)
    assert not (tmp_path / "empty").exists() or not os.listdir(tmp_path / "empty")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tables.os, "replace", broken_replace)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        write_tables(mp, pp, "toy", fresh, METRICS, metric_info=INFO)
    assert os.listdir(fresh) == []  # no temp file, no half-written table


def test_write_tables_to_named_outputs(tmp_path):
    mp, pp = tmp_path / "metrics.parquet", tmp_path / "privacy.parquet"
    _metrics().to_parquet(mp)
    _privacy().to_parquet(pp)
    outputs = {"main_html": tmp_path / "a" / "m.html", "privacy_md": tmp_path / "b" / "p.md"}
    paths = write_tables(mp, pp, "toy", outputs, None, metric_info=INFO)  # None: the default metrics
    assert paths == list(outputs.values())
    page = outputs["main_html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<caption>" in page
    assert "<b>202 ± 3</b>" in page and "<td class=\"num\">0.910 ± 0.014</td>" in page
    assert "no guarantee" in outputs["privacy_md"].read_text()
    with pytest.raises(ValueError, match="main_pdf"):
        write_tables(mp, pp, "toy", {"main_pdf": tmp_path / "x.pdf"}, None, metric_info=INFO)


def test_html_escapes_text():
    df = _metrics().replace({"model": {"dcgan": "a<b"}})
    page = to_html(main_results_table(df, "toy", METRICS), metric_info=INFO)
    assert "A&lt;B" in page and "<td>A<B" not in page


def test_default_metric_info_directions():
    md = to_markdown(main_results_table(_metrics(), "toy", ["fid_effnetlite0", "downstream_auroc"]))
    assert re.search(r"`fid_effnetlite0` ↓ .*`downstream_auroc` ↑", md)


def test_fewer_seeds_marked():
    df = _metrics()
    df = df[~((df["privacy"] == "dpsgd") & (df["epsilon_target"] == 1.0) & (df["seed"] == 1))]
    md = to_markdown(main_results_table(df, "toy", ["fid_effnetlite0"]), metric_info=INFO)
    assert _row(md, "DCGAN", "DP-SGD", "1")[3] == "400 (n=1)"
    assert _row(md, "DCGAN", "DP-SGD", "10")[3] == "351 ± 1"
    assert "up to 2 seeds" in md


def test_attack_auc_is_bolded_by_its_distance_from_one_half():
    """An attack AUC of 0.31 leaks as much as 0.69: the most private run is the one closest to 0.5, never one
    that is 'better' only by being further below it."""
    df = _metrics()
    df = df[df["metric"] == "fid_effnetlite0"].assign(metric="mia_dcr_auc_patient", value=0.8)
    values = {("dcgan", "none"): 0.31, ("dcgan", "dpsgd"): 0.55, ("ddcgan", "none"): 0.70}
    for (model, privacy), v in values.items():
        df.loc[(df["model"] == model) & (df["privacy"] == privacy), "value"] = v
    from dpmedgen.metrics import all_metric_info

    info = {i.name: i for i in all_metric_info()}  # the metric's own declaration: ideal 0.5
    md = to_markdown(main_results_table(df, "toy", ["mia_dcr_auc_patient"]), metric_info=info)
    bold = [r[:3] for r in _md_rows(md)[2:] if "**" in r[3]]
    assert all(r[:2] == ["DCGAN", "DP-SGD"] for r in bold) and bold
    assert "**" not in _row(md, "DCGAN", "non-private")[3]
