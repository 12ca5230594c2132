from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.training import training_curves_figure

training_curves_figure(snakemake.input.train_log, snakemake.input.ledger, [snakemake.output[0]])
