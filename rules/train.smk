# Train one (dataset, model, privacy, epsilon, seed) run; writes the checkpoint, the privacy ledger and
# the training log.


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        ledger=f"{RUN_DIR}/privacy.json",
        train_log=f"{RUN_DIR}/train_log.csv",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        model_params=lambda w: config["models"][w.model],
        privacy_params=lambda w: privacy_params(config, w.privacy),
        delta=config["privacy"]["delta"],
        train=config["train"],
    log:
        f"{LOGS}/train/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train/{RUN_ID}.tsv"
    conda:
        ENV
    threads: resources(config, "train")["threads"]
    resources:
        mem_mb=resources(config, "train")["mem_mb"],
        runtime=resources(config, "train")["runtime"],
        gpu=resources(config, "train")["gpu"],
    script:
        "../workflow_scripts/train.py"
