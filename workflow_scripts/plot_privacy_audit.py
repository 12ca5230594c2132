from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.audit import privacy_audit_figure

privacy_audit_figure(
    snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf]
)
