"""One run's evaluation (`evaluate_run`: which families run, with which inputs) and the study tables
(`aggregate`, job-cost rows from Snakemake benchmark files)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import toy_study

from dpmedgen.evaluate import aggregate, cost_rows, downstream_reference, evaluate_run
from dpmedgen.generate import generate_samples
from dpmedgen.metrics import METRICS, all_metric_info
from dpmedgen.runs import RunSpec
from dpmedgen.settings import EvaluateSettings
from dpmedgen.train import train_run

ALL_FAMILIES = METRICS.names()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return toy_study(tmp_path_factory.mktemp("study"), canary_patients=1)  # 3 of 18 training images


def _run(study, out, run: RunSpec, model_params: dict, class_generators: bool = True) -> dict:
    """Train `run` for a few steps (one generator per class unless told otherwise) and generate its samples;
    return the paths evaluate_run needs."""
    paths = {"checkpoint": out / "checkpoint.pt", "ledger": out / "privacy.json", "samples_h5": out / "samples.h5"}
    train_run(
        run, images_h5=study / "images.h5", splits_parquet=study / "splits.parquet", modality="mri",
        model_params=model_params, privacy_params={}, delta=1e-3,
        train={"steps": 2, "batch_size": 4, "device": "cpu", "class_generators": class_generators},
        checkpoint=paths["checkpoint"], ledger=paths["ledger"], log_csv=out / "train_log.csv", progress=False,
    )
    generate_samples(
        paths["checkpoint"], paths["samples_h5"], n_samples=10, seed=0, ledger=paths["ledger"],
        images_h5=study / "images.h5", splits_parquet=study / "splits.parquet",
    )
    return paths


def _evaluate(study, tmp_path, run, paths, metrics=ALL_FAMILIES, **kwargs):
    """evaluate_run with `metrics` and the schema's defaults for the other evaluate settings."""
    return evaluate_run(
        run, images_h5=study / "images.h5", splits_parquet=study / "splits.parquet", modality="mri",
        settings=EvaluateSettings.from_config({"metrics": metrics}), out_parquet=tmp_path / "metrics.parquet",
        **(paths | kwargs),
    )


def test_private_gan_gets_every_applicable_family_with_bounds(study, tmp_path, caplog):
    run = RunSpec("toy", "dcgan", "dpsgd", 2.0, 0)
    paths = _run(study, tmp_path, run, {"width": 8, "latent_dim": 8})
    with caplog.at_level("INFO", logger="dpmedgen.evaluate"):
        rows = _evaluate(study, tmp_path, run, paths)
    assert rows.equals(pd.read_parquet(tmp_path / "metrics.parquet"))
    metric = dict(zip(rows.metric, rows.value))
    families = {i.name: i.family for i in all_metric_info()}
    assert {families[m] for m in metric} == set(ALL_FAMILIES) - {"fid_inception", "iqa_sources", "fusion"}
    assert "fid_inception skipped: needs inception_weights" in caplog.text  # and the reason is logged
    assert "fusion skipped: needs sources" in caplog.text
    # the classifier trained on the labelled samples, selected on val, tested on the test patients
    assert 0 <= metric["downstream_auroc"] <= 1 and 1 <= metric["downstream_epoch"] <= 30
    assert dict(zip(rows.metric, rows.reference))["downstream_auroc"].endswith("tested on the test split")
    assert metric["canary_train_share"] == pytest.approx(3 / 18) and metric["canary_rate_real"] == 0
    # members = the 5 training patients without the canary marker (the canary patient is audited by the canary
    # family: its marked images would separate it from every non-member by the marker alone), non-members =
    # the val + test patients (6), split by patient
    assert metric["mia_n_members_patient"] == 5 and metric["mia_n_nonmembers_patient"] == 6
    assert metric["mia_n_members_image"] == 15 and metric["mia_n_nonmembers_image"] == 18
    # DP-SGD protects the discriminator, so both attacks get the bound of the per-patient guarantee
    for attack in ("mia_dcr", "mia_discriminator"):
        assert 0 <= metric[f"{attack}_auc_patient"] <= 1
        bound = metric[f"{attack}_bound_tpr_at_fpr1pct_patient"]
        assert math.exp(2.0) * 0.01 < bound <= math.exp(2.0) * 0.01 + 1e-3 + 1e-12
    assert all(np.isfinite(v) for v in metric.values())
    reference = dict(zip(rows.metric, rows.reference))
    assert reference["fid_effnetlite0"] == "test split"
    assert reference["mia_dcr_auc_image"].startswith("train patients (members)")
    assert set(rows.n_fake) == {10}


def test_the_shared_real_data_file_carries_the_memorization_threshold_used_only_for_its_own_images(study, tmp_path, caplog):
    """real_features computes the threshold once per dataset; an evaluation uses it when its members and
    non-members are exactly those it was computed on (same memorization rate), else computes it again."""
    import torch

    from dpmedgen.evaluate import real_features

    run = RunSpec("toy", "dcgan", "none", math.inf, 0)
    paths = _run(study, tmp_path, run, {"width": 8, "latent_dim": 8})
    cache = tmp_path / "real_features.pt"
    real_features(images_h5=study / "images.h5", splits_parquet=study / "splits.parquet", modality="mri",
                  split="test", batch_size=8, out_path=cache, nonmember_splits=["val", "test"])
    state = torch.load(cache, weights_only=False)
    assert state["memorization"]["threshold"] > 0
    plain = _evaluate(study, tmp_path, run, paths, metrics=["mia_dcr"])
    cached = _evaluate(study, tmp_path, run, paths, metrics=["mia_dcr"], real_features_file=cache)
    assert cached.equals(plain)
    # a threshold that would change the rate, recorded for exactly these images: it is the one used
    state["memorization"]["threshold"] = 1e9
    torch.save(state, cache)
    rate = dict(zip(*_evaluate(study, tmp_path, run, paths, metrics=["mia_dcr"], real_features_file=cache)[["metric", "value"]].T.values))
    assert rate["memorization_rate"] == 1.0
    # recorded for other images: not used, said in the log
    state["memorization"]["digest"] = "0" * 64
    torch.save(state, cache)
    with caplog.at_level("WARNING", logger="dpmedgen.evaluate"):
        again = _evaluate(study, tmp_path, run, paths, metrics=["mia_dcr"], real_features_file=cache)
    assert again.equals(plain) and "computed for other members or non-members" in caplog.text


def test_fusion_run_is_scored_against_its_own_source_pairs(study, tmp_path, caplog):
    run = RunSpec("toy", "ddcgan", "none", math.inf, 0)
    paths = _run(study, tmp_path, run, {"width": 4, "modalities": ["mri", "pet"]})
    with caplog.at_level("INFO", logger="dpmedgen.evaluate"):
        rows = _evaluate(study, tmp_path, run, paths)
    metric = dict(zip(rows.metric, rows.value))
    for name in ("fusion_en", "fusion_qabf", "fusion_ssim_mri", "fusion_cc_pet", "ms_ssim_vs_mri", "haarpsi_vs_pet"):
        assert name in metric, name
    # VIF is undefined under 41x41: no row (and a warning) rather than NaN in the table
    assert not any(m.startswith("fusion_vif") for m in metric) and "fusion_vif" in caplog.text
    # the fused release is of held-out pairs: no distance attack (logged); the MRI discriminator is attacked
    assert not any(m.startswith("mia_dcr") for m in metric) and "mia_dcr skipped: the samples are fusions" in caplog.text
    assert 0 <= metric["mia_discriminator_auc_patient"] <= 1
    assert not any("bound" in m for m in metric)  # non-private: no guarantee, no bound
    assert "canary" not in metric and "canary skipped: fused samples" in caplog.text
    assert "downstream" not in metric and "downstream skipped: fused images are fusions" in caplog.text
    assert dict(zip(rows.metric, rows.reference))["fusion_en"] == "source pair of each fused image"
    with pytest.raises(ValueError, match="fused samples; give the run's checkpoint"):
        _evaluate(study, tmp_path, run, paths | {"checkpoint": None})


def test_a_fusion_run_fuses_n_samples_evenly_spaced_pairs_the_same_for_every_run(study, tmp_path):
    from dpmedgen.data.schema import read_image_set
    from dpmedgen.generate import fused_pair_indices

    run = RunSpec("toy", "ddcgan", "none", math.inf, 0)
    paths = _run(study, tmp_path, run, {"width": 4, "modalities": ["mri", "pet"]})  # fuses all 6 test pairs
    every = read_image_set(paths["samples_h5"])
    assert len(every.patient_id) == 6
    kwargs = {"images_h5": study / "images.h5", "splits_parquet": study / "splits.parquet"}
    four = generate_samples(paths["checkpoint"], tmp_path / "four.h5", n_samples=4, seed=0, **kwargs)
    other_seed = generate_samples(paths["checkpoint"], tmp_path / "other.h5", n_samples=4, seed=5, **kwargs)
    chosen = [0, 2, 3, 5]  # evenly spaced, first and last included
    assert fused_pair_indices(6, 4).tolist() == chosen and fused_pair_indices(10, 4).tolist() == [0, 3, 6, 9]
    for samples in (four, other_seed):
        assert list(zip(samples.patient_id, samples.slice)) == [(every.patient_id[i], every.slice[i]) for i in chosen]
        np.testing.assert_array_equal(samples.label, every.label[chosen])
    np.testing.assert_allclose(four.modalities["fused"], every.modalities["fused"][chosen], atol=1e-6)
    assert fused_pair_indices(3, 256).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one pair"):
        fused_pair_indices(0, 4)


def test_unlabelled_samples_skip_downstream_with_the_reason(study, tmp_path, caplog):
    run = RunSpec("toy", "dcgan", "none", math.inf, 0)
    paths = _run(study, tmp_path, run, {"width": 8, "latent_dim": 8}, class_generators=False)
    with caplog.at_level("INFO", logger="dpmedgen.evaluate"):
        rows = _evaluate(study, tmp_path, run, paths, metrics=["downstream", "ssim_nn"])
    assert set(rows.metric) == {"ssim_nn"}
    assert "downstream skipped: needs fake_labels" in caplog.text


def test_downstream_reference_trains_on_real_patients(study, tmp_path):
    rows = downstream_reference(dataset="toy", images_h5=study / "images.h5", splits_parquet=study / "splits.parquet",
                                modality="mri", seed=1, split="test", epochs=3, out_parquet=tmp_path / "ref.parquet")
    assert rows.equals(pd.read_parquet(tmp_path / "ref.parquet"))
    assert set(rows.model) == {"real_data"} and set(rows.privacy) == {"none"} and set(rows.seed) == {1}
    assert math.isinf(rows.epsilon_target.iloc[0])
    value = dict(zip(rows.metric, rows.value))
    assert set(value) == {"downstream_auroc", "downstream_accuracy", "downstream_auroc_patient",
                          "downstream_accuracy_patient", "downstream_val_auroc", "downstream_epoch"}
    counts = pd.read_parquet(study / "splits.parquet").groupby("split").n_images.sum()
    assert set(rows.n_fake) == {counts["train"]} and set(rows.n_real) == {counts["test"]}  # train on train, test on test


BENCHMARK = (
    "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    "{s}\t0:00:12\t{rss}\t3124.05\t495.08\t534.05\t0.05\t0.02\t81.77\t{cpu}\n"
)


def test_cost_rows_read_snakemake_benchmarks_and_skip_unmeasured(tmp_path):
    run = {"dataset": "toy", "model": "dcgan", "privacy": "none", "epsilon_target": math.inf, "seed": 0}
    (tmp_path / "a.tsv").write_text(BENCHMARK.format(s=11.74, rss=637.35, cpu=10.05))
    rows = {r["metric"]: r["value"] for r in cost_rows(run, "evaluate", tmp_path / "a.tsv")}
    assert rows == {"cost_evaluate_wall_s": 11.74, "cost_evaluate_cpu_s": 10.05, "cost_evaluate_max_rss_mb": 637.35}
    (tmp_path / "b.tsv").write_text(BENCHMARK.format(s=0.5, rss="-", cpu=0.4))  # too short to sample memory
    rows = {r["metric"] for r in cost_rows(run, "train", tmp_path / "b.tsv")}
    assert rows == {"cost_train_wall_s", "cost_train_cpu_s"}


def test_aggregate_adds_cost_rows_per_run(study, tmp_path):
    run = RunSpec("toy", "dcgan", "none", math.inf, 0)
    paths = _run(study, tmp_path, run, {"width": 8, "latent_dim": 8})
    _evaluate(study, tmp_path, run, paths, metrics=["ssim_nn"])
    (tmp_path / "train.tsv").write_text(BENCHMARK.format(s=3.0, rss=100.0, cpu=2.5))
    metrics, privacy = aggregate(
        [tmp_path / "metrics.parquet"], [paths["ledger"]], tmp_path / "m.parquet", tmp_path / "p.parquet",
        runs=[run.table_keys()], benchmarks={"train": [tmp_path / "train.tsv"]},
    )
    assert list(metrics.metric) == ["cost_train_cpu_s", "cost_train_max_rss_mb", "cost_train_wall_s", "ssim_nn"]
    assert (metrics.model == "dcgan").all() and len(privacy) == 1
    with pytest.raises(ValueError, match="benchmarks of train: 2 files for 1 runs"):
        aggregate([tmp_path / "metrics.parquet"], [paths["ledger"]], tmp_path / "m.parquet", tmp_path / "p.parquet",
                  runs=[run.table_keys()], benchmarks={"train": [tmp_path / "train.tsv"] * 2})
