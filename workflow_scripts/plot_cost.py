from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.training import cost_figure

cost_figure(snakemake.input.metrics, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf])
