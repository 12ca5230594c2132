# Materialise each dataset's raw cohort in the common HDF5 schema (the embedded brain_phantom is built
# offline from nilearn's MNI152 templates; real datasets download here).


rule download:
    output:
        f"{RESOURCES}/{{dataset}}/raw.h5",
    params:
        dataset_params=lambda w: config["datasets"][w.dataset].get("params", {}),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "download")["mem_mb"],
        runtime=resources(config, "download")["runtime"],
    script:
        "../workflow_scripts/download.py"
