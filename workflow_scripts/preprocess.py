from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.data.stages import preprocess_file

preprocess_file(snakemake.input[0], snakemake.output[0], size=snakemake.params.size)
