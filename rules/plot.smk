# Figures computed from the study tables and the generated samples.


rule plot_privacy_utility:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    output:
        png=f"{RESULTS}/figures/privacy_utility_{{dataset}}.png",
        pdf=f"{RESULTS}/figures/privacy_utility_{{dataset}}.pdf",
    params:
        metrics=config["plot"].get("privacy_utility_metrics"),
    log:
        f"{LOGS}/plot/privacy_utility_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/plot/privacy_utility_{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_privacy_utility.py"


rule plot_samples:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
        samples=sample_grid_runs,
    output:
        f"{RESULTS}/figures/samples_{{dataset}}.png",
    params:
        modality=lambda w: config["datasets"][w.dataset]["modality"],
        split=config["evaluate"].get("split", "test"),
        n_columns=config.get("plot", {}).get("n_columns", 8),
    log:
        f"{LOGS}/plot/samples_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/plot/samples_{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_samples.py"


rule plot_fusion:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
        samples=fusion_figure_runs,
    output:
        f"{RESULTS}/figures/fusion_{{dataset}}.png",
    params:
        modalities=lambda w: fusion_modalities(w.dataset),
        split=config["evaluate"].get("split", "test"),
        n_columns=config.get("plot", {}).get("n_columns", 8),
    log:
        f"{LOGS}/plot/fusion_{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/plot/fusion_{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_fusion.py"
