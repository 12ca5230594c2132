from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.settings import PlotSettings
from dpmedgen.tables import write_tables

write_tables(snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset,
             out_dir=dict(snakemake.output.items()),
             metric_names=list(PlotSettings.from_config(snakemake.params.plot).table_metrics))
