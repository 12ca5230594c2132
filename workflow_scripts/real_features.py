from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.evaluate import real_features

real_features(
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    split=snakemake.params.split,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    nonmember_splits=snakemake.params.nonmember_splits,
    out_path=snakemake.output[0],
)
