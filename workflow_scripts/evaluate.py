from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.evaluate import evaluate_run
from dpmedgen.runs import RunSpec
from dpmedgen.settings import EvaluateSettings

evaluate_run(
    RunSpec.from_wildcards(snakemake.wildcards),
    samples_h5=snakemake.input.samples,
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    settings=EvaluateSettings.from_config(snakemake.params.evaluate),
    threads=snakemake.threads,
    real_features_file=snakemake.input.real_features,
    checkpoint=snakemake.input.checkpoint,
    ledger=snakemake.input.ledger,
    out_parquet=snakemake.output[0],
)
