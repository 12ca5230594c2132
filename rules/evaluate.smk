# Metrics of each run against real held-out patients, then the study tables.


rule evaluate:
    input:
        samples=f"{RUN_DIR}/samples.h5",
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RUN_DIR}/metrics.parquet",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        metrics=config["evaluate"]["metrics"],
        split=config["evaluate"].get("split", "test"),
        batch_size=config["evaluate"].get("batch_size", 64),
    log:
        f"{LOGS}/evaluate/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{RUN_ID}.tsv"
    conda:
        ENV
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    script:
        "../workflow_scripts/evaluate.py"


rule aggregate:
    input:
        metrics=run_paths("metrics.parquet"),
        ledgers=run_paths("privacy.json"),
    output:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "aggregate")["mem_mb"],
        runtime=resources(config, "aggregate")["runtime"],
    script:
        "../workflow_scripts/aggregate.py"
