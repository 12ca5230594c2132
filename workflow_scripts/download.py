from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.data.stages import materialize_dataset

materialize_dataset(
    snakemake.params.source,
    snakemake.params.dataset_params,
    snakemake.output[0],
    download_dir=snakemake.params.download_dir,
    downloads=snakemake.params.downloads,
    dataset=snakemake.wildcards.dataset,
)
