from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

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
