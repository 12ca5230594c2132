"""Tests for dpmedgen.plots: files are written (valid PNG/PDF), edge cases work, errors are clear."""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpmedgen.plots import (
    MODEL_MARKERS,
    PRIVACY_COLORS,
    plot_privacy_utility,
    plot_sample_grid,
    privacy_color,
    privacy_dashes,
    privacy_technique,
    save_figure,
)
from dpmedgen.plots.style import new_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ("fid_effnetlite0", "kid_effnetlite0", "kid_effnetlite0_std", "ssim_nn", "psnr_nn")


def metric_table(
    models=("dcgan", "ddpm"), privacies=("dpsgd", "input_laplace"), epsilons=(1.0, 10.0), seeds=(0, 1), dataset="brats"
) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        for seed in seeds:
            for metric in METRICS:
                rows.append(dict(dataset=dataset, model=model, privacy="none", epsilon_target=np.inf, seed=seed,
                                 metric=metric, value=1.0 + 0.1 * rng.random()))
                for p in privacies:
                    for e in epsilons:
                        rows.append(dict(dataset=dataset, model=model, privacy=p, epsilon_target=float(e), seed=seed,
                                         metric=metric, value=1.0 + 1.0 / e + 0.1 * rng.random()))
    return pd.DataFrame(rows)


def png_dpi(path: Path) -> float:
    data = path.read_bytes()
    i = data.index(b"pHYs")
    ppm_x = struct.unpack(">I", data[i + 4 : i + 8])[0]
    return ppm_x * 0.0254


def assert_valid(paths: list[Path]) -> None:
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
        head = p.read_bytes()[:8]
        if p.suffix == ".png":
            assert head == PNG_MAGIC
            assert png_dpi(p) == pytest.approx(150, abs=1)
        elif p.suffix == ".pdf":
            assert head.startswith(b"%PDF")
            assert b"%%EOF" in p.read_bytes()[-64:]
    # atomic writes leave no temporary files behind
    for d in {p.parent for p in paths}:
        assert not [f for f in d.iterdir() if ".tmp." in f.name]


def test_privacy_utility_writes_png_and_pdf(tmp_path):
    paths = [tmp_path / "figs" / "sub" / "pu.png", tmp_path / "figs" / "pu.pdf"]  # parents created
    plot_privacy_utility(metric_table(), "brats", paths)
    assert_valid(paths)


def test_privacy_utility_missing_dataset_raises(tmp_path):
    with pytest.raises(ValueError, match="no metric rows for dataset 'pet'"):
        plot_privacy_utility(metric_table(), "pet", [tmp_path / "x.png"])
    assert not (tmp_path / "x.png").exists()


def test_privacy_utility_missing_columns_raises(tmp_path):
    with pytest.raises(ValueError, match="epsilon_target"):
        plot_privacy_utility(metric_table().drop(columns="epsilon_target"), "brats", [tmp_path / "x.png"])


def test_privacy_utility_only_non_private(tmp_path):
    df = metric_table(privacies=())
    assert set(df["privacy"]) == {"none"}
    paths = [tmp_path / "none.png", tmp_path / "none.pdf"]
    plot_privacy_utility(df, "brats", paths)
    assert_valid(paths)


def test_privacy_utility_single_eps_single_seed_unknown_privacy(tmp_path):
    df = metric_table(models=("sngan",), privacies=("dpsgd", "brand_new_mechanism"), epsilons=(3.0,), seeds=(0,))
    plot_privacy_utility(df, "brats", [tmp_path / "one.png"])
    assert_valid([tmp_path / "one.png"])


def test_privacy_utility_drops_non_finite_values_with_warning(tmp_path):
    df = metric_table()
    df.loc[(df["metric"] == "psnr_nn") & (df["privacy"] == "none"), "value"] = np.inf  # exact copies
    with pytest.warns(UserWarning, match="non-finite"):
        plot_privacy_utility(df, "brats", [tmp_path / "inf.png"])
    assert_valid([tmp_path / "inf.png"])


def test_privacy_utility_other_datasets_ignored(tmp_path):
    df = pd.concat([metric_table(), metric_table(dataset="other", privacies=("functional",))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean table produces no warnings
        plot_privacy_utility(df, "other", [tmp_path / "o.png"])
    assert_valid([tmp_path / "o.png"])


def blobs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random((n, size, size)), sigma=(0, 2, 2))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def test_sample_grid_writes_files(tmp_path):
    paths = [tmp_path / "grid" / "g.png", tmp_path / "grid" / "g.pdf"]
    rows = [
        ("DCGAN · none", blobs(8, seed=1)),
        ("DCGAN · DP-SGD ε=1", blobs(3, seed=2)[:, None]),  # (N, 1, H, W) and fewer than n_cols
    ]
    plot_sample_grid(blobs(12), rows, paths, n_cols=8, title="BraTS")
    assert_valid(paths)


def test_sample_grid_rejects_bad_shape(tmp_path):
    with pytest.raises(ValueError, match="DCGAN"):
        plot_sample_grid(blobs(4), [("DCGAN", np.zeros((4, 3, 8, 8)))], [tmp_path / "bad.png"])


def test_save_figure_atomic_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "fig.png"
    fig = new_figure(2, 2)
    fig.subplots().plot([0, 1], [0, 1])
    save_figure(fig, [target])
    first = target.read_bytes()
    save_figure(fig, target)  # a single path also works, overwriting in place
    assert target.read_bytes()[:8] == PNG_MAGIC and len(first) > 0
    assert sorted(f.name for f in target.parent.iterdir()) == ["fig.png"]
    with pytest.raises(ValueError, match="suffix"):
        save_figure(fig, [tmp_path / "nosuffix"])


def test_style_mappings():
    names = ["none", "dpsgd", "input_laplace", "input_gaussian", "output_laplace", "output_gaussian", "functional"]
    assert all(n in PRIVACY_COLORS for n in names)
    # colour = technique, line style = noise type: every mode distinguishable by the pair
    assert len({(privacy_color(n), str(privacy_dashes(n))) for n in names}) == len(names)
    assert privacy_color("input_laplace") == privacy_color("input_gaussian") != privacy_color("output_gaussian")
    assert privacy_dashes("input_gaussian") == privacy_dashes("dpsgd") == "" != privacy_dashes("output_laplace")
    assert privacy_dashes("functional", {"functional": "laplace"}) == privacy_dashes("input_laplace")
    assert privacy_technique("output_laplace") == "output" and privacy_technique("dpsgd") == "dpsgd"
    assert set(MODEL_MARKERS) >= {"dcgan", "sngan", "ddcgan", "ddpm"}
    assert privacy_color("something_new") == privacy_color("something_new")  # stable fallback


def test_ylabel_states_a_direction_only_for_metrics_that_have_one():
    from dpmedgen.metrics import METRIC_INFO
    from dpmedgen.plots.privacy_utility import _ylabel

    assert _ylabel("fid_effnetlite0", METRIC_INFO).endswith("lower is better")
    assert _ylabel("precision_effnetlite0", METRIC_INFO).endswith("higher is better")
    assert _ylabel("density_effnetlite0", METRIC_INFO) == "density_effnetlite0"  # ~1 is ideal: neither
    assert _ylabel("mia_dcr_bound_tpr_at_fpr1pct_patient", METRIC_INFO) == "mia_dcr_bound_tpr_at_fpr1pct_patient"


def test_privacy_utility_constant_panel_gets_a_readable_scale(tmp_path, monkeypatch):
    """A metric that is 0 in every run (canary_rate, say) gets a window around 0, not a 1e-17 scale."""
    import dpmedgen.plots.privacy_utility as pu

    table = metric_table(models=("dcgan",), privacies=("dpsgd",), seeds=(0,))
    table = table[table.metric == "ssim_nn"].assign(value=0.0)
    figures = []
    monkeypatch.setattr(pu, "save_figure", lambda fig, paths: figures.append(fig))
    plot_privacy_utility(table, "brats", [tmp_path / "pu.png"])
    (ax,) = [a for a in figures[0].axes if a.get_ylabel().startswith("ssim_nn")]
    low, high = ax.get_ylim()
    assert low <= 0 <= high and high - low >= 0.09


def test_mean_ci95_is_the_student_t_interval():
    from scipy import stats

    from dpmedgen.plots.style import mean_ci95

    assert mean_ci95([3.0]) == (3.0, 3.0)  # one seed: no interval
    lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    half = stats.t.ppf(0.975, 4) * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half))
    # coverage: the interval of 5 normal draws holds the true mean in about 95 % of 4,000 repetitions
    rng = np.random.default_rng(0)
    hits = [lo <= 0.0 <= hi for lo, hi in (mean_ci95(rng.normal(0.0, 1.0, 5)) for _ in range(4000))]
    assert 0.935 < np.mean(hits) < 0.965


def _comparison_inputs(tmp_path: Path, sample_labels: dict[str, np.ndarray]):
    """A 6-patient real set (3 per class, 2 slices each; 4 test patients) and one sample file per run."""
    from dpmedgen.data.schema import ImageSet, write_image_set
    from dpmedgen.data.split import split_patients, write_splits
    from dpmedgen.runs import RunSpec

    n = 12
    patients = np.repeat([f"p{i}" for i in range(6)], 2)
    labels = np.repeat([0, 1, 0, 1, 0, 1], 2)
    real = ImageSet({"mri": blobs(n, size=16)}, patients, np.tile([0, 1], 6), labels, dataset="toy")
    write_image_set(tmp_path / "images.h5", real)
    write_splits(split_patients(real, {"train": 0.34, "val": 0.0, "test": 0.66}, seed=0), tmp_path / "splits.parquet")
    files = []
    for k, (privacy, lab) in enumerate(sample_labels.items()):
        epsilon = math.inf if privacy == "none" else 1.0
        run = RunSpec("toy", "dcgan", privacy, epsilon, 0)
        # pixel value = sample position / 100: the test can tell which sample landed in which cell
        pixels = np.broadcast_to((np.arange(len(lab)) / 100.0)[:, None, None], (len(lab), 16, 16))
        samples = ImageSet({"mri": pixels}, np.repeat("sample", len(lab)), np.arange(len(lab)), lab, dataset="toy",
                           provenance={"run": run.as_dict()})
        write_image_set(tmp_path / f"samples{k}.h5", samples)
        files.append(tmp_path / f"samples{k}.h5")
    return files


def test_comparison_grid_groups_columns_by_class_or_uses_fixed_indices(tmp_path, monkeypatch):
    from dpmedgen.plots import study

    calls = []
    monkeypatch.setattr(study, "plot_sample_grid", lambda real, rows, paths, **kw: calls.append((real, rows, kw)))
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1, 0])
    files = _comparison_inputs(tmp_path, {"dpsgd": labels, "none": labels[::-1].copy()})
    study.comparison_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", "mri", files, [tmp_path / "c.png"],
                            n_columns=4)
    real, rows, kw = calls[-1]
    assert kw["column_groups"] == [("class 0", 2), ("class 1", 2)]
    assert [label for label, _ in rows] == ["DCGAN · non-private", "DCGAN · DP-SGD ε=1"]  # non-private first
    # each run's first two samples of class 0, then of class 1 (pixel value = position / 100)
    assert [round(float(px[0, 0] * 100)) for px in rows[1][1]] == [2, 4, 0, 1]  # dpsgd: labels as given
    assert [round(float(px[0, 0] * 100)) for px in rows[0][1]] == [0, 2, 1, 3]  # none: labels reversed
    assert real.shape == (4, 16, 16)

    study.comparison_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", "mri", files, [tmp_path / "c.png"],
                            indices=[5, 0])
    _, rows, kw = calls[-1]
    assert kw["column_groups"] is None and [round(float(px[0, 0] * 100)) for px in rows[0][1]] == [5, 0]
    with pytest.raises(ValueError, match=r"plot.image_indices: \[10\] out of range"):
        study.comparison_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", "mri", files,
                                [tmp_path / "c.png"], indices=[0, 10])


def test_comparison_grid_without_sample_labels_spreads_real_images(tmp_path):
    from dpmedgen.plots.study import comparison_figure

    files = _comparison_inputs(tmp_path, {"none": np.full(6, -1)})  # one unconditional generator: no class
    out = [tmp_path / "cmp.png", tmp_path / "cmp.pdf"]
    comparison_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", "mri", files, out, n_columns=4)
    assert_valid(out)


def test_per_model_privacy_utility_keeps_only_that_models_metrics(tmp_path, monkeypatch):
    from dpmedgen.plots import study

    table = metric_table(models=("dcgan", "ddcgan"))
    table = table[~((table.model == "ddcgan") & (table.metric == "ssim_nn"))]  # ddcgan lacks one metric
    ref = table[(table.model == "dcgan") & (table.privacy == "none") & (table.metric == "ssim_nn")].assign(model="real_data")
    metrics, ledgers = tmp_path / "metrics.parquet", tmp_path / "privacy.parquet"
    pd.concat([table, ref]).to_parquet(metrics)
    runs = table[["dataset", "model", "privacy", "epsilon_target", "seed"]].drop_duplicates()
    runs.assign(guarantee=np.where(runs.privacy == "none", "none", "formal"), unit="patient",
                randomness="deterministic", adjacency="replace_one").to_parquet(ledgers)
    drawn = []
    monkeypatch.setattr(study, "plot_privacy_utility", lambda df, dataset, paths, **kw: drawn.append((df, kw)))
    study.privacy_utility_figure(metrics, ledgers, "brats", [tmp_path / "f.png"], model="ddcgan")
    df, kw = drawn[-1]
    assert set(df.model) == {"ddcgan"} and "ssim_nn" not in set(df.metric)  # no panel holding only the reference
    assert kw["title"] == "brats · DDcGAN\ndeterministic randomness (public seed): not a DP release"
    assert kw["xlabel"] == "target ε per patient, replace-one (log scale)"
    study.privacy_utility_figure(metrics, ledgers, "brats", [tmp_path / "f.png"], model="dcgan")
    assert set(drawn[-1][0].model) == {"dcgan", "real_data"}
    with pytest.raises(ValueError, match="no metric rows for model 'sngan'"):
        study.privacy_utility_figure(metrics, ledgers, "brats", [tmp_path / "f.png"], model="sngan")


def test_fusion_grid_shows_the_pairs_every_run_fused_beside_their_sources(tmp_path, monkeypatch):
    """Each fusion run fuses the same `generate.n_samples` pairs of the split, a subset when there are more
    pairs: the grid's source rows are those pairs' MRI and PET, and a run that fused other pairs is refused."""
    from dpmedgen.data.schema import ImageSet, read_image_set, write_image_set
    from dpmedgen.data.split import read_splits, select_split
    from dpmedgen.generate import fused_pair_indices
    from dpmedgen.plots import study
    from dpmedgen.runs import RunSpec
    from conftest import toy_study

    toy_study(tmp_path)
    test = select_split(read_image_set(tmp_path / "images.h5"), read_splits(tmp_path / "splits.parquet"), "test")
    chosen = fused_pair_indices(len(test), 4)
    assert len(test) > len(chosen)  # a subset of the pairs, as in the default study
    files = []
    for k, privacy in enumerate(("dpsgd", "none")):
        run = RunSpec("toy", "ddcgan", privacy, 1.0 if privacy == "dpsgd" else math.inf, 0)
        fused = test.modalities["mri"][chosen] * 0.5 + test.modalities["pet"][chosen] * 0.5
        write_image_set(tmp_path / f"fused{k}.h5", ImageSet(
            {"fused": fused}, test.patient_id[chosen], test.slice[chosen], test.label[chosen], dataset="toy",
            provenance={"run": run.as_dict()}))
        files.append(tmp_path / f"fused{k}.h5")
    calls = []
    monkeypatch.setattr(study, "plot_sample_grid", lambda real, rows, paths, **kw: calls.append((real, rows, kw)))
    study.fusion_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", ("mri", "pet"), files,
                        [tmp_path / "f.png"], n_columns=3)
    mri, rows, kw = calls[-1]
    shown = [0, 2, 3]  # 3 of the 4 fused pairs, evenly spaced
    np.testing.assert_array_equal(mri, test.modalities["mri"][chosen][shown])
    np.testing.assert_array_equal(rows[0][1], test.modalities["pet"][chosen][shown])
    assert [label for label, _ in rows[1:]] == ["fused · DDcGAN · non-private", "fused · DDcGAN · DP-SGD ε=1"]
    expected = test.modalities["mri"][chosen][shown] * 0.5 + test.modalities["pet"][chosen][shown] * 0.5
    np.testing.assert_allclose(rows[1][1], expected, atol=1e-6)
    other = read_image_set(files[1])
    write_image_set(tmp_path / "other.h5", ImageSet(
        {"fused": other.modalities["fused"]}, other.patient_id[::-1].copy(), other.slice[::-1].copy(), other.label,
        dataset="toy", provenance=other.provenance))
    with pytest.raises(ValueError, match="not the test pairs .* that the other runs fused"):
        study.fusion_figure(tmp_path / "images.h5", tmp_path / "splits.parquet", "test", ("mri", "pet"),
                            [files[0], tmp_path / "other.h5"], [tmp_path / "f.png"])


def test_range_bounds_reads_the_documented_interval_of_every_metric():
    from dpmedgen.metrics import METRIC_INFO
    from dpmedgen.plots.style import range_bounds

    assert range_bounds("[0, 1]; 0.5 = chance") == (0.0, 1.0)
    assert range_bounds("[0, inf)") == (0.0, math.inf)
    assert range_bounds("(-inf, inf); ~0 for matching distributions") == (-math.inf, math.inf)
    assert range_bounds("[0, 0.9748]; 0.9748 = perfect edge transfer") == (0.0, 0.9748)
    assert range_bounds("[0, n_real/k]; 1 for identical sets") == (0.0, math.inf)  # not a number: unbounded
    assert range_bounds("{1, 2, ...}") == range_bounds("1..evaluate.downstream_epochs") == (-math.inf, math.inf)
    for name, info in METRIC_INFO.items():  # every documented range parses to an interval, low < high
        low, high = range_bounds(info.range)
        assert low < high, name


@pytest.mark.parametrize("two_seeds", [(0.40, 0.95), (0.05, 0.60)])
def test_privacy_utility_bands_stay_inside_the_metric_s_range(tmp_path, monkeypatch, two_seeds):
    """Two seeds far apart: the 95 % t-interval (mean ± 12.7 sd/√2) leaves [0, 1]; the drawn bands must not."""
    import dpmedgen.plots.privacy_utility as pu

    rows = []
    for seed, value in enumerate(two_seeds):
        rows.append(dict(dataset="brats", model="dcgan", privacy="none", epsilon_target=np.inf, seed=seed,
                         metric="downstream_auroc", value=value))
        for eps in (1.0, 10.0):
            rows.append(dict(dataset="brats", model="dcgan", privacy="dpsgd", epsilon_target=eps, seed=seed,
                             metric="downstream_auroc", value=value - 0.02))
    figures = []
    monkeypatch.setattr(pu, "save_figure", lambda fig, paths: figures.append(fig))
    plot_privacy_utility(pd.DataFrame(rows), "brats", [tmp_path / "pu.png"])
    (ax,) = [a for a in figures[0].axes if a.get_ylabel().startswith("downstream_auroc")]
    extents = [c.get_datalim(ax.transData) for c in ax.collections] + [p.get_extents().transformed(ax.transData.inverted())
                                                                       for p in ax.patches]
    assert len(extents) >= 2  # the private line's band and the reference's band
    for box in extents:
        assert box.y0 >= -1e-9 and box.y1 <= 1 + 1e-9, (box.y0, box.y1)
