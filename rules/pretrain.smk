# Public pretraining: each model trained once, non-privately, on the public dataset that a studied dataset names
# in `pretrain_on`; every run of that model on the dataset starts from these weights (src/dpmedgen/train/pretrain.py).


rule pretrain:
    input:
        images=lambda w: f"{RESULTS}/{pretrain_source(config, w.dataset)}/images.h5",
    output:
        f"{RESULTS}/{{dataset}}/pretrained/{{model}}.pt",
    log:
        f"{LOGS}/pretrain/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{dataset}}/{{model}}.tsv"
    priority: 20  # every run of the dataset waits for it
    conda:
        ENV
    threads: resources(config, "train")["threads"]
    resources:
        mem_mb=resources(config, "train")["mem_mb"],
        runtime=resources(config, "train")["runtime"],
        gpu=resources(config, "train")["gpu"],
    params:
        public_dataset=lambda w: pretrain_source(config, w.dataset),
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        model_params=lambda w: model_params(config, w.model),
        pretrain=lambda w: pretrain_settings(config, w.model),
    script:
        "../workflow_scripts/pretrain.py"
