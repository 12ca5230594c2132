from dpmedgen.runtime import start_job

start_job(snakemake.log[0], snakemake.threads)

from dpmedgen.train.pretrain import pretrain

pretrain(
    snakemake.wildcards.model,
    model_params=dict(snakemake.params.model_params),
    images_h5=snakemake.input.images,
    modality=snakemake.params.modality,
    public_dataset=snakemake.params.public_dataset,
    steps=snakemake.params.pretrain["steps"],
    train=dict(snakemake.params.pretrain["train"]) | {"threads": snakemake.threads},
    seed=snakemake.params.pretrain["seed"],
    out=snakemake.output[0],
)
