from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.data.stages import preprocess_file

preprocess_file(snakemake.input[0], snakemake.output[0], size=snakemake.params.size)
