from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.evaluate import downstream_reference

downstream_reference(
    dataset=snakemake.wildcards.dataset,
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    seed=int(snakemake.wildcards.seed),
    split=snakemake.params.split,
    epochs=snakemake.params.epochs,
    threads=snakemake.threads,
    out_parquet=snakemake.output[0],
)
