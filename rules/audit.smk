# One-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023) of the study's DP-SGD configurations: each
# audited (dataset, model, epsilon) of the first seed is trained once more, with white-box gradient canaries
# and black-box canary patients, and each kind's scores give a lower bound on epsilon beside the claimed one
# (src/dpmedgen/audit.py).


rule audit_one_run:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
    output:
        f"{RESULTS}/{{dataset}}/audit/{{model}}/{{privacy}}/eps{{epsilon}}/seed{{seed}}.parquet",
    log:
        f"{LOGS}/audit/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/audit/{RUN_ID}.tsv"
    priority: seed_priority(0)
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
        n_canaries=config["audit"]["n_canaries"],
        n_canary_patients=config["audit"]["n_canary_patients"],
        n_samples=config["audit"]["n_samples"],
        randomness=config["privacy"]["randomness"],
    script:
        "../workflow_scripts/audit.py"


rule audit_table:
    input:
        audit_paths(),
    output:
        f"{RESULTS}/audit.parquet",
    log:
        f"{LOGS}/audit/table.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "aggregate")["mem_mb"],
        runtime=resources(config, "aggregate")["runtime"],
    script:
        "../workflow_scripts/audit_table.py"


rule plot_one_run_audit:
    input:
        f"{RESULTS}/audit.parquet",
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/one_run_audit.png",
            caption="../report/one_run_audit.rst",
            category="2. Privacy audit",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "figure": "one-run audit (white- and black-box canaries)",
            },
        ),
        pdf=f"{FIGURES}/{{dataset}}/one_run_audit.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/one_run_audit.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_one_run_audit.py"
