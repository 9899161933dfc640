# TARPO reproduction pipeline. Thin on purpose: the rules live in
# workflow/rules/*.smk and call the `tarpo` CLI; the ML lives in src/tarpo/.
#
#   snakemake --cores 2 all                              default config (config/config.yaml)
#   snakemake --cores 2 all --configfile config/smoke.yaml   another config file (replaces the default)
#   snakemake --cores 2 all_tiny                         one backbone's chain only
#   snakemake --cores 2 -n all                           dry run: what would run, and why

from snakemake.utils import update_config, validate

from tarpo.config import ConfigError, coerce_overrides, load_config, read_config_file


def checked(load, *args):
    """A config problem as Snakemake's one-line error, not a traceback."""
    try:
        return load(*args)
    except ConfigError as err:
        raise WorkflowError(f"config error: {err}") from None


# A config file given with --configfile replaces config/config.yaml rather
# than being merged into it, so a config (smoke, paper) holds exactly the
# datasets, backbones and methods it names. --config KEY=VALUE still
# overrides single keys on top of whichever file is used.
# The tarpo reader reads each file too: the default one before Snakemake does,
# whose message for a YAML error names neither file nor line; a --configfile
# (which Snakemake has read by now) for a key given twice, which Snakemake's
# reader lets the last one win silently.
for _path in workflow.overwrite_configfiles or ["config/config.yaml"]:
    checked(read_config_file, _path)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# --config 'evaluate={k: 8}' overrides one key of a section, but Snakemake hands
# nested values (and lists) over as strings: give them the types their keys expect.
update_config(config, coerce_overrides(dict(workflow.config_settings.config)))

# The tarpo loader runs first: an unknown key, a value out of range, an unknown
# benchmark or training set is one line that names the dotted key (and "did you
# mean ...?"). It also gives the typed view (CFG) the rules read.
CFG = checked(load_config, config)

# Then the JSON schema, generated from src/tarpo/config.py by `tarpo schema`
# (a test checks it is current), as a second check of the same rules.
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
