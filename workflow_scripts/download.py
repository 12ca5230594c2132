from dpmedgen.logs import setup_rule_log

setup_rule_log(snakemake.log[0])

from dpmedgen.data.stages import materialize_dataset

materialize_dataset(snakemake.wildcards.dataset, snakemake.params.dataset_params, snakemake.output[0])
