# TARPO reproduction pipeline. Thin on purpose: the rules live in
# workflow/rules/*.smk and call the `tarpo` CLI; the ML lives in src/tarpo/.
#
#   snakemake --cores 2 all                              default config (config/config.yaml)
#   snakemake --cores 2 all --configfile config/smoke.yaml   another config file (replaces the default)
#   snakemake --cores 2 all_tiny                         one backbone's chain only
#   snakemake --cores 2 -n all                           dry run: what would run, and why
#   snakemake --cores 2 tune                             choose hyperparameters on validation (not in `all`)
#   snakemake --cores 2 ablations                        the config's ablation arms and their tables
#
# Each config writes under its own root, results/{name}/ (its `name`): configs coexist (common.smk).


# The config (config/config.yaml, or the file given with --configfile), read and
# checked, and the paths and input functions the rules use: workflow/rules/common.smk.
include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


# A wildcard only ever takes a configured name: a typo in a target path fails
# with "no rule to produce" instead of running a job for an unknown name.
wildcard_constraints:
    dataset=one_of(DATASETS),
    backbone=one_of(BACKBONES),
    method=one_of(EVALUATED),
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
include: "workflow/rules/router.smk"
include: "workflow/rules/runtime.smk"
include: "workflow/rules/tune.smk"
