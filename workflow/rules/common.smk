# Input functions and helpers shared by the rule files, in plain Python;
# the ML lives in the `tarpo` package, which knows nothing about Snakemake.
#
# Every job gets the configuration as JSON (`tarpo ... --config-json`), sliced
# to the sections that job reads. Snakemake reruns a job when its params
# change, so a slice keeps unrelated edits (another backbone, the training
# schedule, resources) from retriggering it.

import json
import re

from tarpo.config import Config, load_config, to_dict

# Schema validation (Snakefile) catches unknown keys and wrong types; this
# adds the cross-field checks (known methods, OOD ranges, valid overrides)
# and gives the typed view the input functions below read.
CFG: Config = load_config(config)

RESULTS = "results"
LOGS = f"{RESULTS}/logs"

DATASETS = sorted(CFG.datasets)
BACKBONES = sorted(CFG.backbones)


def one_of(names):
    """A wildcard regex matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"  # (?!) matches nothing


# ------------------------------------------------------------------ paths


def data_dir(dataset):
    return f"{RESULTS}/data/{dataset}"


def backbone_dir(backbone):
    return f"{RESULTS}/backbones/{backbone}"


def warm_start_dataset(backbone):
    """The dataset an embedded backbone is warm-started on; None for hub backbones."""
    bb = CFG.backbones[backbone]
    return bb.warm_start_dataset if bb.kind == "embedded" else None


def backbone_targets(backbone):
    """Everything `all` builds for one backbone (its `all_<backbone>` target).

    Issues 3-5 extend this with the backbone's checkpoints, evaluations and
    summary; `all` is the union over backbones plus the datasets."""
    targets = [backbone_dir(backbone)]
    ds = warm_start_dataset(backbone)
    if ds:
        targets.append(data_dir(ds))
    return targets


def all_targets():
    targets = [data_dir(d) for d in DATASETS]
    for b in BACKBONES:
        targets += [t for t in backbone_targets(b) if t not in targets]
    return targets


# ------------------------------------------------------------------ config slices


def _slice(datasets=(), backbones=None, methods=(), sections=()):
    """A complete, valid config holding only the named parts: `datasets` and
    `methods` by name, `backbones` as given, whole top-level `sections` (e.g.
    "train", "evaluate"); every other collection empty, so its defaults do not
    leak in. `name` (the MLflow experiment) and `seed` always travel along."""
    full = to_dict(CFG)
    out = {
        "name": full["name"],
        "seed": full["seed"],
        "datasets": {d: full["datasets"][d] for d in datasets},
        "backbones": backbones or {},
        "methods": {m: full["methods"][m] for m in methods},
        "baselines": [],
    }
    out.update({key: full[key] for key in sections})
    return json.dumps(out, sort_keys=True)


def prepare_config(wildcards):
    return _slice(datasets=[wildcards.dataset])


def backbone_config(wildcards):
    bb = to_dict(CFG.backbones[wildcards.backbone])
    # Overrides of training, methods and resources do not change the backbone.
    bb.update(train={}, method_overrides={}, resources={})
    ds = warm_start_dataset(wildcards.backbone)
    return _slice(datasets=[ds] if ds else [], backbones={wildcards.backbone: bb})


# ------------------------------------------------------------------ inputs


def backbone_inputs(wildcards):
    ds = warm_start_dataset(wildcards.backbone)
    return {"data": data_dir(ds)} if ds else {}


def backbone_data_arg(wildcards):
    ds = warm_start_dataset(wildcards.backbone)
    return f"--data {data_dir(ds)}" if ds else ""


# ------------------------------------------------------------------ resources
# threads / mem_mb / runtime / gpu come from `resources` in the config, merged
# with a backbone's own `resources` overrides (Config.resources_for). `gpu` is
# the standard resource the SLURM executor plugin turns into a GPU request.


def _resources(rule, backbone=None):
    if backbone is None:
        return getattr(CFG.resources, rule)
    return CFG.resources_for(backbone, rule)


def rule_threads(rule):
    return lambda wildcards: _resources(rule, getattr(wildcards, "backbone", None)).threads


def rule_resources(rule):
    """`resources:` keyword arguments for a rule whose jobs may have a {backbone} wildcard."""

    def get(field):
        return lambda wildcards: getattr(_resources(rule, getattr(wildcards, "backbone", None)), field)

    return {"mem_mb": get("mem_mb"), "runtime": get("runtime"), "gpu": get("gpus")}
