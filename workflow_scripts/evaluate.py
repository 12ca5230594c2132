from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.evaluate import evaluate_run
from dpmedgen.runs import RunSpec

evaluate_run(
    RunSpec.from_wildcards(snakemake.wildcards),
    samples_h5=snakemake.input.samples,
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    metrics=list(snakemake.params.metrics),
    split=snakemake.params.split,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    real_features_file=snakemake.input.real_features,
    checkpoint=snakemake.input.checkpoint,
    ledger=snakemake.input.ledger,
    nonmember_splits=snakemake.params.nonmember_splits,
    inception_weights=snakemake.params.inception_weights,
    downstream_epochs=snakemake.params.downstream_epochs,
    out_parquet=snakemake.output[0],
)
