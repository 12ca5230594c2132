from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.study import model_comparison_figure

model_comparison_figure(
    snakemake.wildcards.model,
    snakemake.input.images,
    snakemake.input.splits,
    snakemake.params.split,
    snakemake.params.modalities,
    list(snakemake.input.samples),
    [snakemake.output.png, snakemake.output.pdf],
    n_columns=snakemake.params.n_columns,
    indices=snakemake.params.indices,
)
