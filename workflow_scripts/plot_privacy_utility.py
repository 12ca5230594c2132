from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.study import privacy_utility_figure
from dpmedgen.settings import PlotSettings

privacy_utility_figure(
    snakemake.input.metrics, snakemake.input.privacy, snakemake.wildcards.dataset, [snakemake.output.png, snakemake.output.pdf],
    list(PlotSettings.from_config(snakemake.params.plot).privacy_utility_metrics), model=snakemake.params.model,
)
