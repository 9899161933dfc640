# TARPO reproduction pipeline. Thin on purpose: the rules live in
# workflow/rules/*.smk and call the `tarpo` CLI; the ML lives in src/tarpo/.
#
#   snakemake --cores 2 all                              default config (config/config.yaml)
#   snakemake --cores 2 all --configfile config/smoke.yaml   another config file (replaces the default)
#   snakemake --cores 2 all_tiny                         one backbone's chain only
#   snakemake --cores 2 -n all                           dry run: what would run, and why

from snakemake.utils import validate

# A config file given with --configfile replaces config/config.yaml rather
# than being merged into it, so a config (smoke, paper) holds exactly the
# datasets, backbones and methods it names. --config KEY=VALUE still
# overrides single keys on top of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Unknown or mistyped keys are errors that name the key. The schema is
# generated from src/tarpo/config.py by `tarpo schema` (a test checks it is current).
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# A wildcard only ever takes a configured name: a typo in a target path fails
# with "no rule to produce" instead of running a job for an unknown name.
wildcard_constraints:
    dataset=one_of(DATASETS),
    backbone=one_of(BACKBONES),
    method=one_of(EVAL_METHODS),
    benchmark=one_of(BENCHMARKS),
    seed=one_of([str(s) for s in SEEDS]),


rule all:
    default_target: True
    input:
        all_targets(),


# One target per backbone: `snakemake --cores 2 all_<backbone>` builds that
# backbone's whole chain and nothing else (add `--forcerun backbone` to rebuild
# the backbone itself).
for _backbone in BACKBONES:

    rule:
        name:
            f"all_{_backbone}"
        input:
            backbone_targets(_backbone),


include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
