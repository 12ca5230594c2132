# Config validation (before any job runs), the run grid, and path templates shared by every stage.
from snakemake.utils import min_version, validate

min_version("9.0")

from dpmedgen.config import check_config, privacy_params, resources, runs
from dpmedgen.runs import format_epsilon


validate(config, "../schemas/config.schema.yaml")
check_config(config)

RESULTS = config.get("results_dir", "results")
RESOURCES = config.get("resources_dir", "resources")
RUNS = runs(config)
RUN_DIR = RESULTS + "/{dataset}/runs/{model}/{privacy}/eps{epsilon}/seed{seed}"
LOGS = RESULTS + "/logs"
BENCHMARKS = RESULTS + "/benchmarks"
RUN_ID = "{dataset}/{model}/{privacy}/eps{epsilon}/seed{seed}"


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    privacy="[A-Za-z0-9_]+",
    epsilon="inf|[0-9]+(\.[0-9]+)?(e-?[0-9]+)?",
    seed="[0-9]+",


def run_paths(filename, dataset=None):
    """`filename` inside the directory of every run (of one dataset, if given)."""
    return [
        f"{RUN_DIR}/{filename}".format(
            dataset=r.dataset, model=r.model, privacy=r.privacy, epsilon=format_epsilon(r.epsilon), seed=r.seed
        )
        for r in RUNS
        if dataset is None or r.dataset == dataset
    ]


def sample_grid_runs(wildcards):
    """Samples of the first seed of every (model, privacy, epsilon) of a dataset, for the comparison grid."""
    first_seed = min(r.seed for r in RUNS)
    return [p for p in run_paths("samples.h5", wildcards.dataset) if p.endswith(f"/seed{first_seed}/samples.h5")]


def study_targets():
    targets = [f"{RESULTS}/metrics.parquet", f"{RESULTS}/privacy.parquet"]
    for dataset in config["datasets"]:
        targets += [
            f"{RESULTS}/figures/privacy_utility_{dataset}.png",
            f"{RESULTS}/figures/privacy_utility_{dataset}.pdf",
            f"{RESULTS}/figures/samples_{dataset}.png",
        ]
    return targets
