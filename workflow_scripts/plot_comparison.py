from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.study import model_comparison_figure
from dpmedgen.settings import PlotSettings

settings = PlotSettings.from_config(snakemake.params.plot)
model_comparison_figure(
    snakemake.wildcards.model,
    snakemake.input.images,
    snakemake.input.splits,
    snakemake.params.split,
    snakemake.params.modalities,
    list(snakemake.input.samples),
    [snakemake.output.png, snakemake.output.pdf],
    n_columns=settings.n_columns,
    indices=None if settings.image_indices is None else list(settings.image_indices),
)
