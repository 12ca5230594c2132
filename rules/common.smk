# Config validation (before any job runs), the run grid, and path templates shared by every stage.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# Jobs import the library from this checkout, also inside `--sdm conda` environments that do not install it.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))

from dpmedgen.config import check_config, coerce_command_line_values, model_params, privacy_params, resources, runs, skipped_pairs, train_settings
from dpmedgen.models import MODELS
from dpmedgen.privacy import PRIVACY_MODES
from dpmedgen.runs import format_epsilon


coerce_command_line_values(config)  # `--config seeds=[0,1]` arrives as strings
validate(config, "../schemas/config.schema.yaml")
check_config(config)

for _model, _mode in skipped_pairs(config):
    logger.info(f"dpmedgen: privacy mode {_mode!r} does not apply to model {_model!r}; those runs are left out of the grid")

RESULTS = config.get("results_dir", "results")
RESOURCES = config.get("resources_dir", "resources")
RUNS = runs(config)
RUN_ID = "{dataset}/{model}/{privacy}/eps{epsilon}/seed{seed}"
RUN_DIR = f"{RESULTS}/{{dataset}}/runs/{{model}}/{{privacy}}/eps{{epsilon}}/seed{{seed}}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
ENV = "../envs/dpmedgen.yaml"


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    privacy="[A-Za-z0-9_]+",
    epsilon="inf|[0-9]+(\.[0-9]+)?(e-?[0-9]+)?",
    seed="[0-9]+",


def per_run(template, runs=RUNS):
    """`template` (with run wildcards) filled in for each run."""
    return [
        template.format(dataset=r.dataset, model=r.model, privacy=r.privacy, epsilon=format_epsilon(r.epsilon), seed=r.seed)
        for r in runs
    ]


def run_paths(filename, runs=RUNS):
    """`filename` inside the directory of each run."""
    return per_run(f"{RUN_DIR}/{filename}", runs)


def benchmark_paths(stage, runs=RUNS):
    """The Snakemake benchmark file of each run's `stage` job (job cost rows of metrics.parquet)."""
    return per_run(f"{BENCHMARKS}/{stage}/{RUN_ID}.tsv", runs)


def downstream_reference_paths():
    """The downstream family's real-data reference rows, one file per (dataset, seed), when it is evaluated."""
    if "downstream" not in config["evaluate"]["metrics"]:
        return []
    return [f"{RESULTS}/{d}/downstream_reference/seed{s}.parquet" for d in config["datasets"] for s in config["seeds"]]


def train_inputs(wildcards):
    """Images and split; modes that reuse the non-private training also get that run's checkpoint and log."""
    inputs = {
        "images": f"{RESULTS}/{wildcards.dataset}/images.h5",
        "splits": f"{RESULTS}/{wildcards.dataset}/splits.parquet",
    }
    if PRIVACY_MODES.get(wildcards.privacy).reuses_nonprivate_training:
        reference = RUN_DIR.format(**(dict(wildcards) | {"privacy": "none", "epsilon": "inf"}))
        inputs |= {
            "reference_checkpoint": f"{reference}/checkpoint.pt",
            "reference_log": f"{reference}/train_log.csv",
            "reference_progress": f"{reference}/progress",
        }
    return inputs


def sample_grid_runs(wildcards):
    """Samples of the first seed of every (model, privacy, epsilon) of a dataset, for the comparison grid."""
    first_seed = min(r.seed for r in RUNS)
    return run_paths("samples.h5", [r for r in RUNS if r.dataset == wildcards.dataset and r.seed == first_seed])


def fusion_models():
    return [m for m in config["models"] if MODELS.get(m).kind == "fusion"]


def fusion_modalities(dataset):
    """The (structural, functional) modalities of the dataset's fusion models (all must agree)."""
    pairs = {tuple(model_params(config, m).get("modalities", MODELS.get(m).default_modalities)) for m in fusion_models()}
    if len(pairs) != 1:
        raise ValueError(f"config key models: fusion models fuse different modalities {sorted(pairs)}; use one pair")
    return list(pairs.pop())


def fusion_figure_runs(wildcards):
    """Samples (fused test pairs) of the first seed of every fusion run of a dataset."""
    first_seed = min(r.seed for r in RUNS)
    return run_paths("samples.h5", [r for r in RUNS if r.dataset == wildcards.dataset and r.seed == first_seed
                                    and MODELS.get(r.model).kind == "fusion"])


def study_targets():
    targets = [f"{RESULTS}/metrics.parquet", f"{RESULTS}/privacy.parquet"]
    for dataset in config["datasets"]:
        targets += [
            f"{RESULTS}/figures/privacy_utility_{dataset}.png",
            f"{RESULTS}/figures/privacy_utility_{dataset}.pdf",
            f"{RESULTS}/figures/samples_{dataset}.png",
        ]
        if fusion_models():
            targets.append(f"{RESULTS}/figures/fusion_{dataset}.png")
    return targets
