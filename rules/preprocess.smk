# Resize / normalise to the working resolution, then split by patient (stratified by label).


rule preprocess:
    input:
        f"{RESOURCES}/{{dataset}}/raw.h5",
    output:
        f"{RESULTS}/{{dataset}}/images.h5",
    log:
        f"{LOGS}/preprocess/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess/{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "preprocess")["mem_mb"],
        runtime=resources(config, "preprocess")["runtime"],
    params:
        size=config["image_size"],
    script:
        "../workflow_scripts/preprocess.py"


rule split:
    input:
        f"{RESULTS}/{{dataset}}/images.h5",
    output:
        f"{RESULTS}/{{dataset}}/splits.parquet",
    log:
        f"{LOGS}/split/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/split/{{dataset}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=resources(config, "split")["mem_mb"],
        runtime=resources(config, "split")["runtime"],
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
        canary_patients=config["split"]["canary_patients"],
    script:
        "../workflow_scripts/split.py"
