from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.audit import one_run_audit
from dpmedgen.runs import RunSpec

one_run_audit(
    RunSpec.from_wildcards(snakemake.wildcards),
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    modality=snakemake.params.modality,
    model_params=dict(snakemake.params.model_params),
    privacy_params=dict(snakemake.params.privacy_params),
    delta=snakemake.params.delta,
    train=dict(snakemake.params.train) | {"threads": snakemake.threads},
    n_canaries=snakemake.params.n_canaries,
    n_canary_patients=snakemake.params.n_canary_patients,
    n_samples=snakemake.params.n_samples,
    out_parquet=snakemake.output[0],
    randomness=snakemake.params.randomness,
)
