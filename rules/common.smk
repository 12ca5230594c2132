# Config validation (before any job runs), the run grid, and path templates shared by every stage.
import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# Jobs import the library from this checkout, also inside `--sdm conda` environments that do not install it.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))

from dpmedgen.config import (
    check_config,
    coerce_command_line_values,
    dataset_source,
    missing_modalities,
    model_params,
    pretrain_settings,
    pretrain_source,
    privacy_params,
    resources,
    runs,
    skipped_pairs,
    studied_datasets,
    train_settings,
)
from dpmedgen.models import MODELS
from dpmedgen.privacy import PRIVACY_MODES
from dpmedgen.runs import format_epsilon
from dpmedgen.runtime import compile_package

# A local run (no --jobs, i.e. no cluster executor) never runs more threads at once than this machine has
# cores: `--cores 8` on a 2-core laptop would otherwise start 8 jobs. Each job uses exactly its `threads`
# (dpmedgen.runtime.start_job).
_MACHINE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_asked_cores = workflow.global_resources["_cores"].value
if workflow.global_resources["_nodes"].value is None and _asked_cores is not None and _asked_cores > _MACHINE_CORES:
    logger.info(
        f"dpmedgen: --cores {_asked_cores} on a machine with {_MACHINE_CORES} cores: running at most {_MACHINE_CORES} at once"
    )
    workflow.global_resources["_cores"] = _MACHINE_CORES

coerce_command_line_values(config)  # `--config seeds=[0,1]` arrives as strings
validate(config, "../schemas/config.schema.yaml")
check_config(config)
compile_package()  # each job then imports dpmedgen's bytecode instead of compiling its sources (~0.5 s a job)

for _model, _mode in skipped_pairs(config):
    logger.info(
        f"dpmedgen: privacy mode {_mode!r} does not apply to model {_model!r}; those runs are left out of the grid"
    )
for (_dataset, _model), _lacking in missing_modalities(config).items():
    logger.info(
        f"dpmedgen: dataset {_dataset!r} has no modality {_lacking} that model {_model!r} needs; those runs are left out of the grid"
    )

RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]
RUNS = runs(config)
RUN_ID = "{dataset}/{model}/{privacy}/eps{epsilon}/seed{seed}"
RUN_DIR = f"{RESULTS}/{{dataset}}/runs/{{model}}/{{privacy}}/eps{{epsilon}}/seed{{seed}}"
LOGS = f"{RESULTS}/logs"
FIGURES = f"{RESULTS}/figures"
TABLES = f"{RESULTS}/tables"
BENCHMARKS = f"{RESULTS}/benchmarks"
ENV = "../envs/dpmedgen.yaml"


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="|".join(map(re.escape, config["models"])),
    privacy="[A-Za-z0-9_]+",
    epsilon="inf|[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?",
    seed="[0-9]+",


# Seeds in config order. Every job of an earlier seed outranks every job of a later one, so the first seed's
# runs, evaluations and privacy-utility figure (FIRST_SEED_FIGURE) finish first, about half-way through a
# two-seed study; within a seed, evaluation outranks training, so an interrupted study keeps whole runs.
SEEDS = list(dict.fromkeys(r.seed for r in RUNS))
SEED_PRIORITY_STEP = 100


def seed_priority(base):
    """Job priority `base` raised by SEED_PRIORITY_STEP for every seed that comes after this job's seed."""
    return lambda w: base + SEED_PRIORITY_STEP * (len(SEEDS) - 1 - SEEDS.index(int(w.seed)))


#: Jobs every seed's evaluations need (e.g. the real images' features) run before any seed's training.
SHARED_PRIORITY = SEED_PRIORITY_STEP * len(SEEDS) + 10


def seed_runs(seed):
    return [r for r in RUNS if r.seed == int(seed)]


def per_run(template, runs=RUNS):
    """`template` (with run wildcards) filled in for each run."""
    return [
        template.format(
            dataset=r.dataset, model=r.model, privacy=r.privacy, epsilon=format_epsilon(r.epsilon), seed=r.seed
        )
        for r in runs
    ]


def run_paths(filename, runs=RUNS):
    """`filename` inside the directory of each run."""
    return per_run(f"{RUN_DIR}/{filename}", runs)


def benchmark_paths(stage, runs=RUNS):
    """The Snakemake benchmark file of each run's `stage` job (job cost rows of metrics.parquet)."""
    return per_run(f"{BENCHMARKS}/{stage}/{RUN_ID}.tsv", runs)


def audited_runs():
    """The DP-SGD runs of the first seed whose model `audit.models` lists: each gets a one-run audit."""
    return [r for r in RUNS if r.privacy == "dpsgd" and r.model in config["audit"]["models"] and r.seed == SEEDS[0]]


def audit_paths():
    return per_run(
        f"{RESULTS}/{{dataset}}/audit/{{model}}/{{privacy}}/eps{{epsilon}}/seed{{seed}}.parquet", audited_runs()
    )


def downstream_reference_paths(seeds=None):
    """The downstream family's real-data reference rows, one file per (dataset, seed), when it is evaluated."""
    if "downstream" not in config["evaluate"]["metrics"]:
        return []
    seeds = config["seeds"] if seeds is None else seeds
    return [f"{RESULTS}/{d}/downstream_reference/seed{s}.parquet" for d in studied_datasets(config) for s in seeds]


def train_inputs(wildcards):
    """Images and split, and the publicly pretrained weights when the dataset has `pretrain_on`; modes that reuse
    the non-private training get that run's checkpoint and log instead of the weights."""
    inputs = {
        "images": f"{RESULTS}/{wildcards.dataset}/images.h5",
        "splits": f"{RESULTS}/{wildcards.dataset}/splits.parquet",
    }
    reuses = PRIVACY_MODES.get(wildcards.privacy).reuses_nonprivate_training
    if pretrain_source(config, wildcards.dataset) is not None and not reuses:
        inputs["init"] = f"{RESULTS}/{wildcards.dataset}/pretrained/{wildcards.model}.pt"
    if reuses:
        reference = RUN_DIR.format(**(dict(wildcards) | {"privacy": "none", "epsilon": "inf"}))
        inputs |= {
            "reference_checkpoint": f"{reference}/checkpoint.pt",
            "reference_log": f"{reference}/train_log.csv",
            "reference_progress": f"{reference}/progress",
        }
    return inputs


def model_kind(model):
    return MODELS.get(model).kind


def comparison_runs(wildcards):
    """Samples of the first seed of every run of one (dataset, model): the rows of its comparison grid."""
    first_seed = min(r.seed for r in RUNS)
    return run_paths(
        "samples.h5",
        [r for r in RUNS if r.dataset == wildcards.dataset and r.model == wildcards.model and r.seed == first_seed],
    )


def dataset_models(dataset):
    """The models of the config that have runs on `dataset` (a fusion model needs the dataset's modalities)."""
    return [m for m in config["models"] if any(r.dataset == dataset and r.model == m for r in RUNS)]


def fusion_models(dataset):
    return [m for m in dataset_models(dataset) if model_kind(m) == "fusion"]


def fusion_modalities(dataset):
    """The (structural, functional) modalities of the dataset's fusion models (all must agree)."""
    pairs = {
        tuple(model_params(config, m).get("modalities", MODELS.get(m).default_modalities))
        for m in fusion_models(dataset)
    }
    if len(pairs) != 1:
        raise ValueError(f"config key models: fusion models fuse different modalities {sorted(pairs)}; use one pair")
    return list(pairs.pop())


def comparison_modalities(wildcards):
    """What a comparison grid shows: the trained modality, or a fusion model's (structural, functional) pair."""
    if model_kind(wildcards.model) == "fusion":
        return fusion_modalities(wildcards.dataset)
    return [config["datasets"][wildcards.dataset]["modality"]]


def has_audit():
    """The privacy audit figure needs at least one membership-inference attack in the evaluation."""
    return bool({"mia_dcr", "mia_discriminator"} & set(config["evaluate"]["metrics"]))


def paper_targets():
    """The paper's figures (PDF) and tables (LaTeX): exactly what `snakemake paper` builds."""
    targets = []
    for d in studied_datasets(config):
        targets += [
            f"{FIGURES}/{d}/privacy_utility.pdf",
            f"{FIGURES}/{d}/cost.pdf",
            f"{TABLES}/main_{d}.tex",
            f"{TABLES}/privacy_{d}.tex",
        ]
        targets += [f"{FIGURES}/{d}/privacy_utility_{m}.pdf" for m in dataset_models(d)]
        targets += [f"{FIGURES}/{d}/comparison_{m}.pdf" for m in dataset_models(d)]
        if has_audit():
            targets.append(f"{FIGURES}/{d}/privacy_audit.pdf")
    return targets


def study_targets():
    """Everything `all` builds: the study tables, the paper set, the report's PNGs, Markdown/HTML tables,
    the first seed's early privacy-utility figure, the one-run audit and every run's training curves."""
    targets = [f"{RESULTS}/metrics.parquet", f"{RESULTS}/privacy.parquet"] + paper_targets()
    targets += [t.replace(".pdf", ".png") for t in paper_targets() if t.endswith(".pdf")]
    for d in studied_datasets(config):
        targets += [f"{TABLES}/{name}_{d}.{ext}" for name in ("main", "privacy") for ext in ("md", "html")]
    targets += [f"{FIGURES}/{d}/seed{SEEDS[0]}/privacy_utility.png" for d in studied_datasets(config)]
    audited = sorted({r.dataset for r in audited_runs()})
    if audited:  # the one-run audit (rules/audit.smk)
        targets += [f"{RESULTS}/audit.parquet"] + [
            f"{FIGURES}/{d}/one_run_audit.{ext}" for d in audited for ext in ("png", "pdf")
        ]
    return targets + run_paths("training_curves.png")
