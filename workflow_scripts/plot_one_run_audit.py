from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.one_run_audit import one_run_audit_figure

one_run_audit_figure(snakemake.input[0], snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf])
