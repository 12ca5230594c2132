"""The real Snakemake workflow, end to end, on the tiny CI config."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, SLURM_PROFILE, require_slurm, run_snakemake

from dpmedgen.config import runs
from dpmedgen.io import load_torch
from dpmedgen.metrics import all_metric_info
from dpmedgen.results import GUARANTEE_COLUMNS, METRIC_COLUMNS
from dpmedgen.train.pretrain import weights_sha256



@pytest.fixture(scope="module")
def ci_study(tmp_path_factory) -> Path:
    """The CI study run locally once (the working directory), shared by the tests that read it."""
    workdir = tmp_path_factory.mktemp("ci_study")
    proc = run_snakemake(workdir, "--cores", "2", "all")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


@pytest.mark.integration
def test_ci_study_end_to_end(ci_study):
    tmp_path = ci_study
    results = tmp_path / "results-ci"
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())

    metrics = pd.read_parquet(results / "metrics.parquet")
    assert set(METRIC_COLUMNS + GUARANTEE_COLUMNS) <= set(metrics.columns) and "epsilon" not in metrics.columns
    grid = runs(config)
    n_runs = len(grid)
    reference = metrics[metrics.model == "real_data"]  # the downstream classifier trained on real train patients
    assert set(reference.metric) == {"downstream_auroc", "downstream_accuracy", "downstream_auroc_patient",
                                     "downstream_accuracy_patient", "downstream_val_auroc", "downstream_epoch"}
    assert set(reference.seed) == set(config["seeds"]) and (reference.privacy == "none").all()
    metrics = metrics[metrics.model != "real_data"]
    assert metrics.groupby(["model", "privacy", "epsilon_target", "seed"]).ngroups == n_runs
    for model in config["models"]:  # every model trains non-privately and with DP-SGD
        assert {"none", "dpsgd"} <= set(metrics.loc[metrics.model == model, "privacy"]), model
    family = {i.name: i.family for i in all_metric_info(config["models"]["ddcgan"]["modalities"])}
    assert set(metrics.metric) <= set(family) and metrics.value.notna().all()
    found = metrics.assign(family=metrics.metric.map(family)).groupby(["model", "privacy"]).family.agg(set)
    for (model, privacy), families in found.items():  # every family that applies to the run, and only those
        expected = {"fid_effnetlite0", "kid_effnetlite0", "prdc_effnetlite0", "ssim_nn", "psnr_nn", "iqa_nn", "cost"}
        if model == "ddcgan":  # fused test pairs: scored against their sources; LOGAN on its MRI discriminator
            expected |= {"iqa_sources", "fusion", "mia_discriminator"}
        else:
            expected |= {"mia_dcr", "canary", "downstream"}  # one generator per class: labelled samples
            expected |= {"mia_discriminator"} if model != "ddpm" and privacy != "functional" else set()
        assert families == expected, (model, privacy)  # fid_inception: skipped, no weights file in CI
    assert metrics.loc[metrics.metric == "fid_effnetlite0", "value"].gt(0).all()
    assert math.isinf(metrics.loc[metrics.privacy == "none", "epsilon_target"].iloc[0])
    no_guarantee = metrics.guarantee == "none"  # no bound where there is no guarantee; no run of CI is a DP release
    assert metrics.loc[no_guarantee, "epsilon_spent"].map(math.isinf).all()
    assert (metrics.loc[~no_guarantee, "epsilon_spent"] <= metrics.loc[~no_guarantee, "epsilon_target"] * (1 + 1e-6)).all()
    assert set(metrics.loc[~no_guarantee, "privacy"]) == {"dpsgd", "input_gaussian", "functional"}
    assert not metrics.dp_release.any() and set(metrics.randomness.dropna()) == {"deterministic"}

    privacy = pd.read_parquet(results / "privacy.parquet")
    assert len(privacy) == n_runs
    assert set(privacy.privacy) == set(config["privacy"]["modes"])
    formal = privacy[privacy.guarantee == "formal"]
    assert (formal.epsilon_spent <= formal.epsilon_target * (1 + 1e-6)).all() and (formal.unit == "patient").all()
    assert set(formal.privacy) == {"dpsgd", "input_gaussian", "functional"}
    assert privacy.loc[privacy.privacy.str.startswith("output_"), "epsilon_spent"].map(math.isinf).all()
    ledger = json.loads(next(results.glob("brain_phantom/runs/dcgan/dpsgd/eps1/seed0/privacy.json")).read_text())
    assert ledger["epsilon_spent"] <= 1.0 and ledger["noise_multiplier"] > 0
    # each model clips at its own norm where it sets one (models.<name>.dpsgd), else at privacy.dpsgd's
    for model in ("dcgan", "sngan", "ddpm"):
        own = (config["models"][model].get("dpsgd") or {}).get("max_grad_norm", config["privacy"]["dpsgd"]["max_grad_norm"])
        run_ledger = json.loads((results / f"brain_phantom/runs/{model}/dpsgd/eps1/seed0/privacy.json").read_text())
        assert run_ledger["max_grad_norm"] == own, model
    assert config["models"]["dcgan"]["dpsgd"]["max_grad_norm"] != config["privacy"]["dpsgd"]["max_grad_norm"]
    fusion = json.loads((results / "brain_phantom/runs/ddcgan/dpsgd/eps1/seed0/privacy.json").read_text())
    assert fusion["protected_networks"] == ["discriminator_mri", "discriminator_pet", "generator"]
    assert fusion["steps"] == 3 * config["train"]["steps"] and fusion["epsilon_spent"] <= 1.0
    figures = results / "figures" / "brain_phantom"
    expected = ["privacy_utility", "privacy_audit", "cost", "one_run_audit"]
    expected += [f"{kind}_{m}" for kind in ("privacy_utility", "comparison") for m in config["models"]]
    assert sorted(f.name for f in figures.iterdir() if f.is_file()) == sorted(
        f"{n}.{ext}" for n in expected for ext in ("png", "pdf"))
    first_seed = figures / f"seed{config['seeds'][0]}"  # the first seed's early figure, and only the first seed's
    assert sorted(f.name for f in figures.iterdir() if f.is_dir()) == [first_seed.name]
    assert sorted(f.name for f in first_seed.iterdir()) == ["privacy_utility.pdf", "privacy_utility.png"]
    assert (first_seed / "privacy_utility.png").stat().st_size > 10_000
    for name in expected:
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    for log in results.glob("brain_phantom/runs/*/dpsgd/*/*/train_log.csv"):  # released: no real-data statistic
        columns = set(pd.read_csv(log).columns)
        protected = json.loads((log.parent / "privacy.json").read_text())["protected_networks"]
        assert "real_batch" not in columns and not {f"loss_{n}" for n in protected} & columns, log
    assert not list(results.glob("**/resume*.pt"))  # the private random roots are gone with the resume files
    curves = sorted(results.glob("brain_phantom/runs/*/*/*/*/training_curves.png"))
    assert len(curves) == n_runs and all(c.stat().st_size > 10_000 for c in curves)
    tables = results / "tables"
    assert sorted(f.name for f in tables.iterdir()) == sorted(
        f"{t}_brain_phantom.{ext}" for t in ("main", "privacy") for ext in ("tex", "md", "html"))
    main_tex = (tables / "main_brain_phantom.tex").read_text()
    assert "\\toprule" in main_tex and "\\bottomrule" in main_tex and "DP-SGD" in main_tex
    progress = list(results.glob("brain_phantom/runs/*/none/epsinf/seed0/progress/epoch_*.png"))
    assert {p.parts[-6] for p in progress} == set(config["models"])
    assert {p.name.rsplit("_", 1)[-1] for p in progress if p.parts[-6] == "dcgan"} == {"class0.png", "class1.png"}
    assert not list(results.glob("**/resume*.pt"))  # removed once each run finished
    dcgan = json.loads((results / "brain_phantom/runs/dcgan/dpsgd/eps1/seed0/privacy.json").read_text())
    assert dcgan["class_generators"] == [0, 1] and set(dcgan["class_ledgers"]) == {"0", "1"}

    audit = pd.read_parquet(results / "audit.parquet")  # the one-run audit of DCGAN's DP-SGD runs
    assert {"dataset", "model", "privacy", "epsilon_claimed", "epsilon_lower", "n_canaries", "threat_model"} <= set(
        audit.columns)
    assert len(audit) == 2 * len(config["privacy"]["epsilons"]) and set(audit.model) == set(config["audit"]["models"])
    black = audit.threat_model.str.startswith("black-box")  # one white-box and one black-box row per audited run
    assert black.sum() == len(config["privacy"]["epsilons"]) and (audit.epsilon_lower <= audit.epsilon_claimed).all()
    assert (audit.n_canaries[~black] == config["audit"]["n_canaries"]).all()
    assert (audit.n_canaries[black] == config["audit"]["n_canary_patients"]).all()
    assert (audit.n_samples[black] == config["audit"]["n_samples"]).all()

    splits = pd.read_parquet(results / "brain_phantom" / "splits.parquet")
    assert splits.patient_id.is_unique
    assert any((results / "logs" / "train").rglob("*.log")) and any((results / "benchmarks" / "train").rglob("*.tsv"))

    # the HTML report: every registered figure and table, with its caption, in one self-contained file
    report = results / "report.html"
    proc = run_snakemake(tmp_path, "--report", str(report))
    assert proc.returncode == 0, proc.stderr[-4000:]
    html = report.read_text()
    assert len(html) > 1_000_000  # the figures are embedded
    for name in expected:
        assert f"{name}.png" in html, name
    assert "training_curves.png" in html and "main_brain_phantom.html" in html and "privacy_brain_phantom.html" in html
    for category in ("1. Privacy-utility", "2. Privacy audit", "3. Samples", "4. Training", "5. Tables"):
        assert category in html, category
    assert "Privacy-utility trade-off of" in html  # captions are rendered


@pytest.mark.integration
def test_bad_config_stops_before_any_job(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["train"]["batch_size"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "--cores", "1", "all", config=bad)
    assert proc.returncode != 0
    assert "batch_size" in proc.stderr + proc.stdout
    assert not (tmp_path / "results-ci").exists() and not (tmp_path / "resources-ci").exists()


@pytest.mark.integration
def test_large_grid_plans(tmp_path):
    """A 1,000-run grid must plan (dry run) without building anything."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["models"] = {"dcgan": config["models"]["dcgan"]}
    config["privacy"]["modes"] = ["none", "dpsgd"]
    config["privacy"]["epsilons"] = [0.1 * k for k in range(1, 100)]  # 10 seeds x (99 epsilons + none)
    config["seeds"] = list(range(10))
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", "all", config=big)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    train_jobs = [line for line in proc.stdout.splitlines() if line.strip().startswith("train ")]
    assert train_jobs and train_jobs[0].split()[-1] == "1000", proc.stdout[-2000:]


@pytest.mark.integration
def test_paper_target_plans_the_full_grid(tmp_path):
    """`snakemake paper -n --configfile configs/paper.yaml` (README) plans every run and exactly the paper's set."""
    proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", "--", "paper", config=ROOT / "configs" / "paper.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[-1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[-1].isdigit()}
    n_runs = len(runs(yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())))
    assert n_runs == 680
    assert counts["train"] == counts["generate"] == counts["evaluate"] == n_runs, proc.stdout[-2000:]
    n_models = 4
    assert counts["plot_comparison"] == counts["plot_privacy_utility_model"] == n_models
    assert counts["plot_privacy_utility"] == counts["plot_privacy_audit"] == counts["plot_cost"] == counts["tables"] == 1
    assert "plot_privacy_utility_seed" not in counts  # the first seed's early figure is the study's, not the paper's
    assert not (tmp_path / "results-paper").exists()


@pytest.mark.integration
def test_first_seed_runs_and_its_figure_outrank_the_next_seed(tmp_path):
    """Priorities (dry run): every job of seed 0 outranks every job of seed 1, evaluation outranks training
    within a seed, and `all` asks for seed 0's early privacy-utility figure."""
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["seeds"] = [0, 1]
    two = tmp_path / "two_seeds.yaml"
    two.write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "all", config=two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", proc.stdout + proc.stderr):
        rule = re.match(r"rule (\w+):", block)
        seed = re.search(r"wildcards:.*\bseed=(\d+)", block)
        if rule and seed:
            priority = re.search(r"priority: (\d+)", block)
            jobs.append((rule.group(1), int(seed.group(1)), int(priority.group(1)) if priority else 0))
    by_seed = {s: [p for _, seed, p in jobs if seed == s] for s in (0, 1)}
    assert by_seed[0] and by_seed[1], proc.stdout[-2000:]
    assert min(by_seed[0]) > max(by_seed[1])
    for seed in (0, 1):
        train = {p for rule, s, p in jobs if rule == "train" and s == seed}
        evaluate = {p for rule, s, p in jobs if rule == "evaluate" and s == seed}
        assert min(evaluate) > max(train)
    assert any(rule == "plot_privacy_utility_seed" and s == 0 for rule, s, _ in jobs)
    assert not any(rule == "plot_privacy_utility_seed" and s == 1 for rule, s, _ in jobs)


# --- the SLURM profile, against a live single-node cluster (tests/slurm/start_cluster.sh; CI starts it) ---

# The smallest DAG that exercises the profile end to end: the dataset stages (downloads stay local), public
# pretraining and one DP-SGD training (the rule that asks SLURM for gpu: 0 and a resume checkpoint), compared with
# the local run by its weights and ledger. Each SLURM stage costs ~20 s of status polling on top of the job (the
# executor backs off 10 s per check that finds nothing finished), so sampling and evaluation, which the local CI
# study covers, are left out; the whole CI study under SLURM took ~15 min of CI for the same coverage of the profile.
SLURM_TARGETS = [f"results-ci/brain_phantom/runs/dcgan/dpsgd/eps1/seed0/{name}" for name in ("checkpoint.pt", "privacy.json")]


@pytest.mark.integration
def test_slurm_profile_reproduces_the_local_study(ci_study, tmp_path):
    """`snakemake --profile slurm` on a live cluster: every job is a SLURM job (sbatch, then srun inside),
    its state read with sacct, and the trained weights and ledger are those of the same run done locally (same
    seeds), bit for bit."""
    require_slurm()
    planned = run_snakemake(tmp_path, "-n", *SLURM_TARGETS, "--quiet", "rules")
    assert planned.returncode == 0, planned.stderr[-3000:]
    proc = run_snakemake(tmp_path, *SLURM_PROFILE, *SLURM_TARGETS, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", planned.stdout + planned.stderr, flags=re.M)}
    cluster_jobs = counts["total"] - counts.get("download", 0)  # downloads are local rules (rules/download.smk)
    assert counts["train"] == 1 and counts["pretrain"] == 1, counts
    assert cluster_jobs >= 5 and len(submitted) == cluster_jobs, (counts, submitted)  # the rest went through sbatch
    accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(submitted)],
                               capture_output=True, text=True, timeout=60).stdout.split()
    assert {line.split("|")[0] for line in accounted} == set(submitted)
    assert {line.split("|")[1] for line in accounted} == {"COMPLETED"}

    local, cluster = (load_torch(w / SLURM_TARGETS[0]) for w in (ci_study, tmp_path))
    assert len(local["state_dicts"]) == len(cluster["state_dicts"]) == 2  # one generator per class
    for mine, theirs in zip(local["state_dicts"], cluster["state_dicts"]):
        assert weights_sha256(mine) == weights_sha256(theirs)
    ledgers = [json.loads((w / SLURM_TARGETS[1]).read_text()) for w in (ci_study, tmp_path)]
    assert ledgers[0] == ledgers[1]
