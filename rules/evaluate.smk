# Metrics of each run against real held-out patients (their encoder features and the memorization threshold
# computed once per dataset; the downstream classifier's real-data reference once per dataset and seed), then
# the study tables.


rule real_features:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RESULTS}/{{dataset}}/real_features.pt",
    log:
        f"{LOGS}/real_features/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/real_features/{{dataset}}.tsv"
    priority: SHARED_PRIORITY  # every evaluation needs it (common.smk)
    conda:
        ENV
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        split=config["evaluate"]["split"],
        batch_size=config["evaluate"]["batch_size"],
        nonmember_splits=config["evaluate"]["nonmember_splits"],  # the memorization threshold's non-members
    script:
        "../workflow_scripts/real_features.py"


rule downstream_reference:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RESULTS}/{{dataset}}/downstream_reference/seed{{seed}}.parquet",
    log:
        f"{LOGS}/downstream_reference/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/downstream_reference/{{dataset}}/seed{{seed}}.tsv"
    priority: seed_priority(10)  # started runs finish first, and the first seed before the next (common.smk)
    conda:
        ENV
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        split=config["evaluate"]["split"],
        epochs=config["evaluate"]["downstream_epochs"],
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
    log:
        f"{LOGS}/evaluate/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{RUN_ID}.tsv"
    priority: seed_priority(10)  # started runs finish first, and the first seed before the next (common.smk)
    conda:
        ENV
    threads: resources(config, "evaluate")["threads"]
    resources:
        mem_mb=resources(config, "evaluate")["mem_mb"],
        runtime=resources(config, "evaluate")["runtime"],
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        evaluate=config["evaluate"],  # dpmedgen.settings.EvaluateSettings (defaults: the schema's)
    script:
        "../workflow_scripts/evaluate.py"


rule aggregate_seed:
    input:
        metrics=lambda w: run_paths("metrics.parquet", seed_runs(w.seed)) + downstream_reference_paths([w.seed]),
        ledgers=lambda w: run_paths("privacy.json", seed_runs(w.seed)),
        train_benchmarks=lambda w: benchmark_paths("train", seed_runs(w.seed)),
        generate_benchmarks=lambda w: benchmark_paths("generate", seed_runs(w.seed)),
        evaluate_benchmarks=lambda w: benchmark_paths("evaluate", seed_runs(w.seed)),
    output:
        metrics=f"{RESULTS}/seed{{seed}}/metrics.parquet",
        privacy=f"{RESULTS}/seed{{seed}}/privacy.parquet",
    log:
        f"{LOGS}/aggregate/seed{{seed}}.log",
    priority: seed_priority(20)  # the first seed's tables and figure as soon as its runs are done
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "aggregate")["mem_mb"],
        runtime=resources(config, "aggregate")["runtime"],
    params:
        runs=lambda w: [r.table_keys() for r in seed_runs(w.seed)],
    script:
        "../workflow_scripts/aggregate.py"


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
    params:
        runs=[r.table_keys() for r in RUNS],
    script:
        "../workflow_scripts/aggregate.py"
