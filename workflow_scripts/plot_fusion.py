from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.plots.study import fusion_figure

fusion_figure(
    snakemake.input.images,
    snakemake.input.splits,
    snakemake.params.split,
    tuple(snakemake.params.modalities),
    list(snakemake.input.samples),
    [snakemake.output[0]],
    n_columns=snakemake.params.n_columns,
)
