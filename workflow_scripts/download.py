from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.data.stages import materialize_dataset

materialize_dataset(
    snakemake.params.source,
    snakemake.params.dataset_params,
    snakemake.output[0],
    download_dir=snakemake.params.download_dir,
    downloads=snakemake.params.downloads,
    dataset=snakemake.wildcards.dataset,
)
