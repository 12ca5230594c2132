from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.data.stages import split_file

split_file(
    snakemake.input[0], snakemake.output[0], fractions=snakemake.params.fractions, seed=snakemake.params.seed,
    canary_patients=snakemake.params.canary_patients,
)
