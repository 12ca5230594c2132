from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.audit import gather_audits

gather_audits(list(snakemake.input), snakemake.output[0])
