# Draw samples from each trained model (a fusion model fuses generate.n_samples test pairs).


rule generate:
    input:
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        ledger=f"{RUN_DIR}/privacy.json",
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RUN_DIR}/samples.h5",
    log:
        f"{LOGS}/generate/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/generate/{RUN_ID}.tsv"
    priority: seed_priority(10)  # started runs finish first, and the first seed before the next (common.smk)
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "generate")["mem_mb"],
        runtime=resources(config, "generate")["runtime"],
    params:
        generate=config["generate"],  # dpmedgen.settings.GenerateSettings (defaults: the schema's)
        split=config["evaluate"]["split"],
        randomness=config["privacy"]["randomness"],
    script:
        "../workflow_scripts/generate.py"
