from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.generate import generate_samples
from dpmedgen.settings import GenerateSettings

generate_samples(
    snakemake.input.checkpoint,
    snakemake.output[0],
    n_samples=GenerateSettings.from_config(snakemake.params.generate).n_samples,
    seed=int(snakemake.wildcards.seed),
    threads=snakemake.threads,
    ledger=snakemake.input.ledger,
    images_h5=snakemake.input.images,
    splits_parquet=snakemake.input.splits,
    split=snakemake.params.split,
    randomness=snakemake.params.randomness,
)
