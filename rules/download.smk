# Materialise each dataset's raw cohort in the common HDF5 schema: the adapter's files are downloaded
# (resumable, checksum-verified, atomic) into <resources_dir>/downloads/<source>/ and read from there.
# The embedded brain_phantom is built offline from nilearn's MNI152 templates. Downloads need the
# internet, which cluster compute nodes often lack, so this rule runs on the submitting machine.


localrules:
    download,


rule download:
    output:
        f"{RESOURCES}/{{dataset}}/raw.h5",
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
    params:
        source=lambda w: dataset_source(config, w.dataset),
        dataset_params=lambda w: config["datasets"][w.dataset].get("params", {}),
        downloads=lambda w: config["datasets"][w.dataset].get("downloads", {}),
        download_dir=lambda w: f"{RESOURCES}/downloads/{dataset_source(config, w.dataset)}",
    script:
        "../workflow_scripts/download.py"
