# Figures computed from the study tables, the generated samples and the training logs. PNGs go into the
# HTML report (`snakemake --report results/report.html`), each with its caption in report/; PDFs are the
# paper's. One style everywhere: colour = privacy technique, line style = noise type, marker = model.


rule plot_privacy_utility:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/privacy_utility.png",
            caption="../report/privacy_utility.rst",
            category="1. Privacy-utility",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "all models (overview)"},
        ),
        pdf=f"{FIGURES}/{{dataset}}/privacy_utility.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/privacy_utility.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/privacy_utility.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    params:
        plot=config["plot"],  # dpmedgen.settings.PlotSettings (defaults: the schema's)
        model=None,
    script:
        "../workflow_scripts/plot_privacy_utility.py"


use rule plot_privacy_utility as plot_privacy_utility_model with:
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/privacy_utility_{{model}}.png",
            caption="../report/privacy_utility.rst",
            category="1. Privacy-utility",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "{model}"},
        ),
        pdf=f"{FIGURES}/{{dataset}}/privacy_utility_{{model}}.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/privacy_utility_{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/privacy_utility_{{model}}.tsv"
    params:
        plot=config["plot"],
        model=lambda w: w.model,


use rule plot_privacy_utility as plot_privacy_utility_seed with:
    input:
        metrics=f"{RESULTS}/seed{{seed}}/metrics.parquet",
        privacy=f"{RESULTS}/seed{{seed}}/privacy.parquet",
    output:
        png=f"{FIGURES}/{{dataset}}/seed{{seed}}/privacy_utility.png",
        pdf=f"{FIGURES}/{{dataset}}/seed{{seed}}/privacy_utility.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/seed{{seed}}/privacy_utility.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/seed{{seed}}/privacy_utility.tsv"
    priority: seed_priority(30)  # the first figure of a study: one seed's runs (common.smk)


rule plot_privacy_audit:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/privacy_audit.png",
            caption="../report/privacy_audit.rst",
            category="2. Privacy audit",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "membership inference against the DP bound"},
        ),
        pdf=f"{FIGURES}/{{dataset}}/privacy_audit.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/privacy_audit.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/privacy_audit.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_privacy_audit.py"


rule plot_comparison:
    input:
        images=f"{RESULTS}/{{dataset}}/images.h5",
        splits=f"{RESULTS}/{{dataset}}/splits.parquet",
        samples=comparison_runs,
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/comparison_{{model}}.png",
            caption="../report/comparison.rst",
            category="3. Samples",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "{model}"},
        ),
        pdf=f"{FIGURES}/{{dataset}}/comparison_{{model}}.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/comparison_{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/comparison_{{model}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    params:
        modalities=comparison_modalities,
        split=config["evaluate"]["split"],
        plot=config["plot"],
    script:
        "../workflow_scripts/plot_comparison.py"


rule plot_cost:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
    output:
        png=report(
            f"{FIGURES}/{{dataset}}/cost.png",
            caption="../report/cost.rst",
            category="4. Training",
            subcategory="{dataset}",
            labels={"model": "all models (cost)", "privacy": "all", "epsilon_target": "all", "seed": "all"},
        ),
        pdf=f"{FIGURES}/{{dataset}}/cost.pdf",
    log:
        f"{LOGS}/plot/{{dataset}}/cost.log",
    benchmark:
        f"{BENCHMARKS}/plot/{{dataset}}/cost.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    script:
        "../workflow_scripts/plot_cost.py"
