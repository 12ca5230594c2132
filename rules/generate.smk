# Draw samples from each trained model (a fusion model fuses the evaluation split's MRI-PET pairs).


rule generate:
    input:
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        ledger=f"{RUN_DIR}/privacy.json",
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RUN_DIR}/samples.h5",
    params:
        n_samples=config["generate"]["n_samples"],
        split=config["evaluate"].get("split", "test"),
    log:
        f"{LOGS}/generate/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/generate/{RUN_ID}.tsv"
    conda:
        ENV
    priority: 10  # finish started runs before training new ones: an interrupted study keeps whole runs
    threads: 1
    resources:
        mem_mb=resources(config, "generate")["mem_mb"],
        runtime=resources(config, "generate")["runtime"],
    script:
        "../workflow_scripts/generate.py"
