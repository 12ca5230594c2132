from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.training import training_curves_figure

training_curves_figure(snakemake.input.train_log, snakemake.input.ledger, [snakemake.output[0]])
