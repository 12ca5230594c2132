# Paper tables of each dataset (LaTeX for the paper, Markdown for a README or issue, HTML for the report),
# computed from the study tables. The report itself: `snakemake --report results/report.html` (see README).


rule tables:
    input:
        metrics=f"{RESULTS}/metrics.parquet",
        privacy=f"{RESULTS}/privacy.parquet",
    output:
        main_tex=f"{TABLES}/main_{{dataset}}.tex",
        main_md=f"{TABLES}/main_{{dataset}}.md",
        main_html=report(
            f"{TABLES}/main_{{dataset}}.html",
            caption="../report/main_table.rst",
            category="5. Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "main results"},
        ),
        privacy_tex=f"{TABLES}/privacy_{{dataset}}.tex",
        privacy_md=f"{TABLES}/privacy_{{dataset}}.md",
        privacy_html=report(
            f"{TABLES}/privacy_{{dataset}}.html",
            caption="../report/privacy_table.rst",
            category="5. Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "privacy ledger per run"},
        ),
    log:
        f"{LOGS}/tables/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/tables/{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "plot")["mem_mb"],
        runtime=resources(config, "plot")["runtime"],
    params:
        plot=config["plot"],  # dpmedgen.settings.PlotSettings (defaults: the schema's)
    script:
        "../workflow_scripts/tables.py"
