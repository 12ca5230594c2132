from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.tables import write_tables

write_tables(snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset,
             out_dir=dict(snakemake.output.items()), metric_names=snakemake.params.metrics)
