from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.evaluate import aggregate

aggregate(
    snakemake.input.metrics,
    snakemake.input.ledgers,
    snakemake.output.metrics,
    snakemake.output.privacy,
    runs=snakemake.params.runs,
    benchmarks={
        "train": snakemake.input.train_benchmarks,
        "generate": snakemake.input.generate_benchmarks,
        "evaluate": snakemake.input.evaluate_benchmarks,
    },
)
