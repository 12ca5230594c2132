# Train one (dataset, model, privacy, epsilon, seed) run; writes the checkpoint, the privacy ledger, the
# per-epoch training log, progress sample grids and the training curves (drawn in the same job: one process
# per run instead of two). A killed job resumes from {RUN_DIR}/resume.pt when it
# is run again (e.g. by --retries after a SLURM time limit or preemption).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        ledger=f"{RUN_DIR}/privacy.json",
        train_log=f"{RUN_DIR}/train_log.csv",
        progress=directory(f"{RUN_DIR}/progress"),
        curves=report(
            f"{RUN_DIR}/training_curves.png",
            caption="../report/training_curves.rst",
            category="4. Training",
            subcategory="{dataset}",
            labels={"model": "{model}", "privacy": "{privacy}", "epsilon_target": "{epsilon}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/train/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train/{RUN_ID}.tsv"
    priority: seed_priority(0)  # the first seed's runs before the next seed's (common.smk)
    conda:
        ENV
    threads: resources(config, "train")["threads"]
    resources:
        mem_mb=resources(config, "train")["mem_mb"],
        runtime=resources(config, "train")["runtime"],
        gpu=resources(config, "train")["gpu"],
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        model_params=lambda w: model_params(config, w.model),
        privacy_params=lambda w: privacy_params(config, w.privacy, w.model),
        delta=config["privacy"]["delta"],
        train=lambda w: train_settings(config, w.model),
        randomness=config["privacy"]["randomness"],
    script:
        "../workflow_scripts/train.py"
