from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.study import privacy_utility_figure

privacy_utility_figure(
    snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf],
    snakemake.params.metrics, model=snakemake.params.model,
)
