from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.tables import write_tables

write_tables(snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset,
             out_dir=dict(snakemake.output.items()), metric_names=snakemake.params.metrics)
