# Metrics of each run against real held-out patients (their encoder features computed once per dataset; the
# downstream classifier's real-data reference once per dataset and seed), then the study tables.


rule real_features:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RESULTS}/{{dataset}}/real_features.pt",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        split=config["evaluate"].get("split", "test"),
        batch_size=config["evaluate"].get("batch_size", 64),
    log:
        f"{LOGS}/real_features/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/real_features/{{dataset}}.tsv"
    conda:
        ENV
    priority: 10  # finish started runs before training new ones: an interrupted study keeps whole runs
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    script:
        "../workflow_scripts/real_features.py"


rule downstream_reference:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RESULTS}/{{dataset}}/downstream_reference/seed{{seed}}.parquet",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        split=config["evaluate"].get("split", "test"),
        epochs=config["evaluate"].get("downstream_epochs", 30),
    log:
        f"{LOGS}/downstream_reference/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/downstream_reference/{{dataset}}/seed{{seed}}.tsv"
    conda:
        ENV
    priority: 10  # finish started runs before training new ones: an interrupted study keeps whole runs
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    script:
        "../workflow_scripts/downstream_reference.py"


rule evaluate:
    input:
        samples=f"{RUN_DIR}/samples.h5",
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        ledger=f"{RUN_DIR}/privacy.json",
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
        real_features=f"{RESULTS}/{{dataset}}/real_features.pt",
    output:
        f"{RUN_DIR}/metrics.parquet",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        metrics=config["evaluate"]["metrics"],
        split=config["evaluate"].get("split", "test"),
        batch_size=config["evaluate"].get("batch_size", 64),
        nonmember_splits=config["evaluate"].get("nonmember_splits", ["val", "test"]),
        inception_weights=config["evaluate"].get("inception_weights"),
        downstream_epochs=config["evaluate"].get("downstream_epochs", 30),
    log:
        f"{LOGS}/evaluate/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{RUN_ID}.tsv"
    conda:
        ENV
    priority: 10  # finish started runs before training new ones: an interrupted study keeps whole runs
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    script:
        "../workflow_scripts/evaluate.py"


rule aggregate:
    input:
        metrics=run_paths("metrics.parquet") + downstream_reference_paths(),
        ledgers=run_paths("privacy.json"),
        train_benchmarks=benchmark_paths("train"),
        generate_benchmarks=benchmark_paths("generate"),
        evaluate_benchmarks=benchmark_paths("evaluate"),
    output:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    params:
        runs=[r.as_dict() for r in RUNS],
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
