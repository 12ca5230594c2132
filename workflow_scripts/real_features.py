from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.evaluate import real_features

real_features(
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    split=snakemake.params.split,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    out_path=snakemake.output[0],
)
