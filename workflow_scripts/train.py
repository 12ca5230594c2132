from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.plots.training import training_curves_figure
from dpmedgen.runs import RunSpec
from dpmedgen.train import train_run

train_run(
    RunSpec.from_wildcards(snakemake.wildcards),
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    model_params=dict(snakemake.params.model_params),
    privacy_params=dict(snakemake.params.privacy_params),
    delta=snakemake.params.delta,
    train=dict(snakemake.params.train) | {"threads": snakemake.threads},
    checkpoint=snakemake.output.checkpoint,
    ledger=snakemake.output.ledger,
    log_csv=snakemake.output.train_log,
    progress_dir=snakemake.output.progress,
    reference_checkpoint=snakemake.input.get("reference_checkpoint"),
    reference_log=snakemake.input.get("reference_log"),
    reference_progress_dir=snakemake.input.get("reference_progress"),
    randomness=snakemake.params.randomness,
    init_checkpoint=snakemake.input.get("init"),
)
training_curves_figure(snakemake.output.train_log, snakemake.output.ledger, [snakemake.output.curves])
