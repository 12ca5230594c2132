# dpmedgen: privacy versus utility of generative models for medical images.
# Stages live in rules/ (one file each); the library in src/dpmedgen does the work.


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/preprocess.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/audit.smk"
include: "rules/plot.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        study_targets(),


rule paper:
    input:
        paper_targets(),
