from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.training import cost_figure

cost_figure(snakemake.input.metrics, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf])
