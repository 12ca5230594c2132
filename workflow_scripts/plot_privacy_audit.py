from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.audit import privacy_audit_figure

privacy_audit_figure(
    snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf]
)
