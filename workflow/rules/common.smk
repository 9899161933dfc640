# Config loading, paths, input functions and helpers shared by the rule files,
# in plain Python; the ML lives in the `tarpo` package, which knows nothing
# about Snakemake. The Snakefile includes this file first.
#
# Every job gets the configuration as JSON (`tarpo ... --config-json`), sliced
# to the sections that job reads. Snakemake reruns a job when its params
# change, so a slice keeps unrelated edits (another backbone, the training
# schedule, resources) from retriggering it.

import json
import os
import re
import socket
import sys
import tempfile
import time
from types import SimpleNamespace

from snakemake.utils import update_config, validate

from tarpo.config import (
    Config,
    ConfigError,
    TuningConfig,
    _merge,
    coerce_overrides,
    load_config,
    read_config_file,
    resolved_tuning,
    schema_yaml,
    to_dict,
)
from tarpo.data.benchmarks import get_benchmark
from tarpo.io import hold_lock
from tarpo.layout import RUN_LOCK as ROOT_RUN_LOCK
from tarpo.layout import claim_root, config_file_id, old_layout
from tarpo.methods import get_method
from tarpo.provenance import source_digest
from tarpo.tuning import trials as grid_trials

# ------------------------------------------------------------------ config


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
# mean ...?"). It also gives the typed view (CFG) the rules and input functions read.
CFG: Config = checked(load_config, config)

# Then the JSON schema, as a second check of the same rules. It is generated from
# the code that runs (src/tarpo/config.py and the method registry), so a newly
# registered method is valid without regenerating a file; the committed copy,
# workflow/schemas/config.schema.yaml (`tarpo schema`), is for readers and
# editors, and a test keeps it current.
with tempfile.TemporaryDirectory() as _schema_dir:
    _schema_file = os.path.join(_schema_dir, "config.schema.yaml")
    with open(_schema_file, "w") as _f:
        _f.write(schema_yaml())
    validate(config, _schema_file)

# ------------------------------------------------------------------ code
# A digest of the package's sources (src/tarpo/**/*.py, tarpo.provenance): a param (`code`) of every
# rule that runs tarpo, so a change to the code marks the outputs it made stale (Snakemake's default
# rerun triggers include params). To keep outputs across an edit known not to change them (a comment),
# `snakemake --touch` the targets once after the edit.
CODE = source_digest()

# ------------------------------------------------------------------ software
# The rules that run `tarpo` declare `conda: "../../envs/tarpo.yaml"`. Without
# `--sdm conda` Snakemake ignores it and the jobs run the `tarpo` on PATH (the
# project's .venv: `make run`). With `--sdm conda` (e.g. a cluster without a
# prepared venv) Snakemake builds that environment once under .snakemake/conda/
# and runs the jobs in it. It copies the file there before conda reads it, so
# a path relative to the file would point into .snakemake/: the file names the
# repository as ${TARPO_REPO}, which pip expands from the environment conda
# runs in, set here to the Snakefile's directory (the repository root) unless
# it is set already.
os.environ.setdefault("TARPO_REPO", workflow.basedir)

# ------------------------------------------------------------------ layout
# Each config's outputs live under a root of their own, results/{name}/ (tarpo.layout), so the default,
# smoke, objectives and paper configs coexist. Per job, its log at {root}/logs/{rule}/JOB.log and its
# runtime and memory (Snakemake's `benchmark:` record, a one-row TSV) at {root}/benchmarks/{rule}/JOB.tsv;
# neither is versioned by DVC. The MLflow store (results/mlflow.db, mlruns/) is shared: one experiment per
# config name.
RESULTS = CFG.results_root
LOGS = f"{RESULTS}/logs"
BENCHMARKS_DIR = f"{RESULTS}/benchmarks"
FIGURES_DIR = f"{RESULTS}/figures"  # tables and figures (figures.smk)

# ------------------------------------------------------------------ one config per root, one run per root
# The config file that owns the root is named in its marker ({root}/.tarpo-config.json), written by its
# first run: another config file with the same `name` would overwrite its results, and is refused before
# anything is planned (a dry run too), naming both files and the fix. Two pipelines writing one root would
# race on its outputs and train_state: the first takes a lock ({root}/.tarpo-run.lock, held until its
# Snakemake exits, however it exits) while the Snakefile is read; a second is refused, naming the running
# one. A dry run (-n) writes nothing: it is not refused, and says a run is in progress. Two configs (two
# roots) may run at once. Processes that re-read the Snakefile for a job (a cluster executor's job steps)
# belong to the holder's run: they neither check nor take anything.
CONFIG_FILE = " + ".join(config_file_id(f) for f in workflow.overwrite_configfiles or ["config/config.yaml"])
RUN_LOCK = f"{RESULTS}/{ROOT_RUN_LOCK}"
_DRY_RUN = any(a in ("--dry-run", "--dryrun") or re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", a) for a in sys.argv[1:])
if workflow.is_main_process:
    _old = old_layout()
    if _old:
        raise WorkflowError(
            f"{', '.join(_old)}: results of the layout before per-config roots; move them, with each backbone's "
            'directory, under the root of the config that made them, results/NAME/ (README, "Moving an old '
            'results/ tree"), e.g. for config/config.yaml: `mkdir -p results/default && mv results/{data,backbones,'
            "figures,logs,benchmarks,tiny} results/default/`"
        )
    checked(claim_root, RESULTS, CONFIG_FILE, CFG.name, False)
    _me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["snakemake", *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "config": CONFIG_FILE,
    }
    _holder = hold_lock(RUN_LOCK, _me, keep=not _DRY_RUN)
    if _holder is not None:
        _running = (
            f"pid {_holder.get('pid')} on {_holder.get('host', '?')}, started {_holder.get('started', '?')}, "
            f"command `{_holder.get('command', '?')}` in {_holder.get('cwd', '?')}"
        )
        if not _DRY_RUN:
            raise WorkflowError(
                f"another run is using {os.path.abspath(RESULTS)}: {_running}; wait for it to "
                "finish (or stop it), then rerun; a dry run (-n) is allowed meanwhile"
            )
        print(
            f"note: a run is in progress on {os.path.abspath(RESULTS)} ({_running}); "
            "this dry run plans against outputs it may still be writing",
            file=sys.stderr,
        )
    elif not _DRY_RUN:
        checked(claim_root, RESULTS, CONFIG_FILE, CFG.name, True)  # under the lock: one first run writes it

BACKBONES = sorted(CFG.backbones)
METHODS = sorted(CFG.methods)
# Ablation arms (`ablations`): each a trained method with training overrides, trained and evaluated per seed
# like a method under {root}/{backbone}/{arm}/, and compared with its method in the ablation table only
# (figures.smk, rule ablations_table); the summaries, figures and main tables hold the methods.
ARMS = sorted(CFG.ablations)
TRAINED = METHODS + ARMS  # what rule train trains
# What `prepare` writes under {root}/data/: the configured synthetic datasets,
# plus each registry training set (gsm8k_train, math_train, ...) a training job
# reads, exported to train.jsonl (a paper-scale config has no synthetic data).
TRAIN_SETS_USED = sorted({CFG.train_config(b, m).dataset for b in BACKBONES for m in TRAINED} - set(CFG.datasets))
DATASETS = sorted(CFG.datasets) + TRAIN_SETS_USED
# TARPO runs (the method and its arms) whose router the probe reads; none when `router.problems` is 0
ROUTED = [m for m in TRAINED if CFG.method_of(m) == "tarpo"] if CFG.router.problems > 0 else []
EVAL_METHODS = sorted(CFG.baselines) + METHODS  # what the summaries read: untrained baselines and trained methods
EVALUATED = EVAL_METHODS + ARMS  # what rule evaluate evaluates
BENCHMARKS = list(CFG.evaluate.benchmarks)
# Every trained method is trained and evaluated once per seed, and every baseline evaluated once per seed
# (its sampling seed), so that comparisons pair by seed: paths carry a {seed} wildcard.
SEEDS = list(CFG.seeds)


def one_of(names):
    """A wildcard regex matching exactly these names."""
    return "|".join(re.escape(n) for n in names) or "(?!)"  # (?!) matches nothing


# ------------------------------------------------------------------ paths


def data_dir(dataset):
    return f"{RESULTS}/data/{dataset}"


def backbone_dir(backbone):
    return f"{RESULTS}/backbones/{backbone}"


def run_dir(backbone, method, seed):
    """One seed's run of a method: checkpoint/, train_state/ (trained methods), eval/."""
    return f"{RESULTS}/{backbone}/{method}/seed{seed}"


def atp_sft_dir(backbone):
    """ATP-Latent's supervised stage (one per backbone): the policy its RL starts from, and its decoder."""
    return f"{RESULTS}/{backbone}/atp_latent/sft"


def policy_backbone_dir(backbone, method):
    """What a method's (or an arm's) training and evaluation load as the backbone: the supervised stage's output
    for a method whose registry entry says it starts from one (atp_latent), else the backbone."""
    return atp_sft_dir(backbone) if get_method(CFG.method_of(method)).sft_stage else backbone_dir(backbone)


def checkpoint_dir(backbone, method, seed):
    return f"{run_dir(backbone, method, seed)}/checkpoint"


def eval_json(backbone, method, seed, benchmark):
    return f"{run_dir(backbone, method, seed)}/eval/{benchmark}.json"


def warm_start_dataset(backbone):
    """The dataset an embedded backbone is warm-started on; None for hub backbones."""
    bb = CFG.backbones[backbone]
    return bb.warm_start_dataset if bb.kind == "embedded" else None


def ablations_csv(backbone):
    return f"{RESULTS}/{backbone}/ablations.csv"


def router_json(backbone, method, seed):
    return f"{run_dir(backbone, method, seed)}/router.json"


def router_benchmark():
    """The benchmark the router probe samples: the first in-distribution test benchmark of `evaluate`."""
    for b in BENCHMARKS:
        if not get_benchmark(b, CFG.datasets).ood:
            return b
    return BENCHMARKS[0]


def router_targets(backbone):
    """The router table and figure of a backbone (rule router_figure), when it trains a routed run."""
    if not ROUTED:
        return []
    return [f"{RESULTS}/{backbone}/router.csv", f"{FIGURES_DIR}/{backbone}/router.png"]


def backbone_targets(backbone):
    """Everything `all` builds for one backbone (its `all_<backbone>` target): the backbone (and its
    warm-start data), a checkpoint per trained method (and ablation arm) and seed, every method's (and arm's)
    evaluation per seed on every benchmark, the backbone's summary (tables, paired comparisons, figures) and,
    with arms, its ablation table. `all` is the union over backbones plus the datasets, the all-backbone
    table, the results page and the runtime table."""
    targets = [backbone_dir(backbone)]
    ds = warm_start_dataset(backbone)
    if ds:
        targets.append(data_dir(ds))
    targets += [checkpoint_dir(backbone, m, s) for m in TRAINED for s in SEEDS]
    targets += [eval_json(backbone, m, s, b) for m in EVALUATED for s in SEEDS for b in BENCHMARKS]
    targets += [f"{RESULTS}/{backbone}/summary.csv", f"{RESULTS}/{backbone}/paired.csv"]
    if ARMS:
        targets.append(ablations_csv(backbone))
    targets += router_targets(backbone)
    return targets


def ablation_targets(backbones):
    """The ablation tables of `backbones` (targets `ablations`, `ablations_<backbone>`), as an input function,
    so that only those targets meet a config without arms."""

    def targets(wildcards):
        if not ARMS:
            raise WorkflowError(
                "config error: the config has no `ablations`: add arms (ablations: {NAME: {method: tarpo, "
                "train: {...}}}) to build ablation tables"
            )
        return [ablations_csv(b) for b in backbones]

    return targets


def all_targets():
    targets = [data_dir(d) for d in DATASETS] + [f"{RESULTS}/figures/tables/main.md", CFG.results_page]
    targets.append(f"{BENCHMARKS_DIR}/runtime.html")  # runtime.smk: the costly jobs' runtime and memory
    for b in BACKBONES:
        targets += [t for t in backbone_targets(b) if t not in targets]
    return targets


def results_root(wildcards):
    """The results directory, as a params function (a plain string param that prefixes an input is a lint)."""
    return RESULTS


def figures_root(wildcards):
    """Where tables and figures go, as a params function (see results_root)."""
    return FIGURES_DIR


def report_figure(name, title):
    """A figure output of rule summarise, declared for the report with its caption (workflow/report/NAME.rst)
    and labels."""
    return report(
        f"{FIGURES_DIR}/{{backbone}}/{name}.png",
        caption=f"../report/{name}.rst",
        category="Figures",
        subcategory="{backbone}",
        labels={"backbone": "{backbone}", "figure": title},
    )


def costly_jobs():
    """(output, benchmark record) of every job of `all` that does real work: prepare, backbone, atp_sft,
    train, evaluate and router_probe, in that order. The paths follow the rules' `output:` and `benchmark:` patterns."""
    jobs = [(data_dir(d), f"{BENCHMARKS_DIR}/prepare/{d}.tsv") for d in DATASETS]
    jobs += [(backbone_dir(b), f"{BENCHMARKS_DIR}/backbone/{b}.tsv") for b in BACKBONES]
    if any(get_method(m).sft_stage for m in METHODS):
        jobs += [(atp_sft_dir(b), f"{BENCHMARKS_DIR}/atp_sft/{b}.tsv") for b in BACKBONES]
    jobs += [
        (checkpoint_dir(b, m, s), f"{BENCHMARKS_DIR}/train/{b}/{m}/seed{s}.tsv")
        for b in BACKBONES
        for m in TRAINED
        for s in SEEDS
    ]
    jobs += [
        (eval_json(b, m, s, x), f"{BENCHMARKS_DIR}/evaluate/{b}/{m}/seed{s}/{x}.tsv")
        for b in BACKBONES
        for m in EVALUATED
        for s in SEEDS
        for x in BENCHMARKS
    ]
    jobs += [
        (router_json(b, m, s), f"{BENCHMARKS_DIR}/router/{b}/{m}/seed{s}.tsv")
        for b in BACKBONES
        for m in ROUTED
        for s in SEEDS
    ]
    return jobs


# ------------------------------------------------------------------ config slices


def _dumps_in_backbone_order(sliced):
    """JSON with sorted keys, but the backbones in the order given (the config's): the tables and the page
    list them in that order, and the page's size comparison takes the first as its reference. With one
    backbone it is json.dumps(sliced, sort_keys=True)."""

    def ordered(value):
        if isinstance(value, dict):
            return {key: ordered(value[key]) for key in sorted(value)}
        return [ordered(v) for v in value] if isinstance(value, (list, tuple)) else value

    out = ordered(sliced)
    out["backbones"] = {name: ordered(bb) for name, bb in sliced["backbones"].items()}
    return json.dumps(out)


def _slice(datasets=(), backbones=None, methods=(), sections=(), seeds=None, arms=()):
    """A complete, valid config holding only the named parts: `datasets`,
    `methods` and ablation `arms` by name, `backbones` as given, whole top-level
    `sections` (e.g. "train", "evaluate"), `seeds` when given (a per-seed job
    gets its own seed only, so adding a seed reruns no existing job); every other
    collection empty, so its defaults do not leak in (`ablations` is left out
    without arms: adding an arm reruns no method's job). `name` (the MLflow
    experiment) and `seed` always travel along. A registry training set in
    `datasets` brings its `benchmarks` override, if any."""
    full = to_dict(CFG)
    out = {
        "name": full["name"],
        "seed": full["seed"],
        "datasets": {d: full["datasets"][d] for d in datasets if d in full["datasets"]},
        "backbones": backbones or {},
        "methods": {m: full["methods"][m] for m in methods},
        "baselines": [],
    }
    if seeds is not None:
        out["seeds"] = [int(s) for s in seeds]
    if arms:
        out["ablations"] = {a: full["ablations"][a] for a in arms}
    registry = {d: full["benchmarks"][d] for d in datasets if d in full["benchmarks"]}
    if registry:
        out["benchmarks"] = registry
    out.update({key: full[key] for key in sections})
    return _dumps_in_backbone_order(out)


def prepare_config(wildcards):
    return _slice(datasets=[wildcards.dataset])


def backbone_config(wildcards):
    bb = to_dict(CFG.backbones[wildcards.backbone])
    # Overrides of training, methods and resources do not change the backbone.
    bb.update(train={}, method_overrides={}, resources={})
    ds = warm_start_dataset(wildcards.backbone)
    return _slice(datasets=[ds] if ds else [], backbones={wildcards.backbone: bb})


def arm_of(method):
    """[method] for an ablation arm (its slice carries the arm), else []."""
    return [method] if method in CFG.ablations else []


def method_arg(wildcards):
    """`--method M`, or for an ablation arm `--method ITS_METHOD --arm ARM` (tarpo train / evaluate)."""
    m = wildcards.method
    return f"--method {CFG.method_of(m)} --arm {m}" if m in CFG.ablations else f"--method {m}"


def train_config(wildcards):
    """Everything a training job reads: its backbone, its method (an arm: the arm and its method), its seed, the
    train section and the training set."""
    b, m = wildcards.backbone, wildcards.method
    dataset = CFG.train_config(b, m).dataset
    return _slice(
        datasets=[dataset],
        backbones={b: to_dict(CFG.backbones[b])},
        methods=[CFG.method_of(m)],
        sections=["train"],
        seeds=[wildcards.seed],
        arms=arm_of(m),
    )


def synthetic_dataset_of(benchmark):
    """The generated dataset behind `{dataset}_test_id` / `{dataset}_test_ood` (and `{dataset}_val`, the
    validation split rule tune_evaluate scores on); None for registry benchmarks."""
    for d in CFG.datasets:
        if benchmark in (f"{d}_test_id", f"{d}_test_ood", f"{d}_val"):
            return d
    return None


def evaluate_config(wildcards):
    """What an evaluation reads. A trained method's checkpoint carries its own train settings, so only the
    baseline (cot) takes the prompt length and precision from `train`: training edits rerun no cot job."""
    b, m, bench = wildcards.backbone, wildcards.method, wildcards.benchmark
    bb = to_dict(CFG.backbones[b])
    bb.update(train={}, method_overrides={}, resources={})
    sets = sorted({d for d in (synthetic_dataset_of(bench), warm_start_dataset(b)) if d})
    sliced = json.loads(
        _slice(
            datasets=sets,
            backbones={b: bb},
            methods=[CFG.method_of(m)] if m in TRAINED else [],
            sections=["evaluate"],
            seeds=[wildcards.seed],
            arms=arm_of(m),
        )
    )
    if m not in TRAINED:
        merged = _merge(to_dict(CFG.train), CFG.backbones[b].train)
        sliced["train"] = {key: merged[key] for key in ("max_prompt_tokens", "mixed_precision")}
    sliced["baselines"] = [m] if m in CFG.baselines else []
    sliced["benchmarks"] = {bench: CFG.benchmarks[bench]} if bench in CFG.benchmarks else {}
    return json.dumps(sliced, sort_keys=True)


def summarise_config(wildcards):
    """Figures and tables read the method list, the benchmarks and the backbone names (not training details):
    the job's backbone (rule summarise), or every backbone (rule tables, no wildcard)."""
    b = getattr(wildcards, "backbone", None)
    names = [b] if b else list(CFG.backbones)  # the config's order (BACKBONES is sorted)
    backbones = {}
    for name in names:
        bb = to_dict(CFG.backbones[name])
        bb.update(train={}, method_overrides={}, resources={})
        backbones[name] = bb
    datasets = sorted({warm_start_dataset(n) for n in names} - {None})
    sliced = json.loads(
        _slice(datasets=datasets, backbones=backbones, methods=METHODS, sections=["evaluate"], seeds=SEEDS)
    )
    sliced["baselines"] = list(CFG.baselines)
    return _dumps_in_backbone_order(sliced)


def backbone_eval_jsons(backbone):
    return [eval_json(backbone, m, s, bench) for m in EVAL_METHODS for s in SEEDS for bench in BENCHMARKS]


def results_page_config(wildcards):
    """The summary slice of every backbone, plus the sampling settings and `results_page` the page states, and
    the arms its ablation section lists."""
    sliced = json.loads(summarise_config(wildcards))
    sliced["results_page"] = CFG.results_page
    if ARMS:
        sliced["ablations"] = {a: to_dict(CFG.ablations[a]) for a in ARMS}
    return _dumps_in_backbone_order(sliced)


def ablations_config(wildcards):
    """The ablation table's slice: the backbone, the arms and their methods, the benchmarks and seeds."""
    b = wildcards.backbone
    bb = to_dict(CFG.backbones[b])
    bb.update(train={}, method_overrides={}, resources={})
    ds = warm_start_dataset(b)
    return _slice(
        datasets=[ds] if ds else [],
        backbones={b: bb},
        methods=sorted({CFG.method_of(a) for a in ARMS}),
        sections=["evaluate"],
        seeds=SEEDS,
        arms=ARMS,
    )


def router_config(wildcards):
    """What a router probe reads: the run's slice as an evaluation of it sees it (backbone, method or arm,
    seed, `evaluate`'s sampling settings, the benchmark's dataset) plus the `router` section."""
    run = SimpleNamespace(
        backbone=wildcards.backbone, method=wildcards.method, seed=wildcards.seed, benchmark=router_benchmark()
    )
    sliced = json.loads(evaluate_config(run))
    sliced["router"] = to_dict(CFG.router)
    return json.dumps(sliced, sort_keys=True)


def router_inputs(wildcards):
    inputs = {
        "backbone": backbone_dir(wildcards.backbone),
        "checkpoint": checkpoint_dir(wildcards.backbone, wildcards.method, wildcards.seed),
    }
    ds = synthetic_dataset_of(router_benchmark())
    if ds:
        inputs["data"] = data_dir(ds)
    return inputs


def router_probes(wildcards):
    return [router_json(wildcards.backbone, m, s) for m in ROUTED for s in SEEDS]


def ablations_inputs(wildcards):
    """Every evaluation of the backbone's arms and of their methods, every seed (JSON: the per-problem counts)."""
    b = wildcards.backbone
    names = sorted({*ARMS, *(CFG.method_of(a) for a in ARMS)})
    return [eval_json(b, m, s, bench) for m in names for s in SEEDS for bench in BENCHMARKS]


def ablations_tables_dir(wildcards):
    """Where the ablation table's .md / .tex / .html go (a params function, see results_root)."""
    return f"{FIGURES_DIR}/{wildcards.backbone}/tables"


def summarise_inputs(wildcards):
    """A backbone's evaluations (metrics + samples) and training runs (checkpoint/metrics.jsonl), every seed."""
    b = wildcards.backbone
    return {
        "evals": backbone_eval_jsons(b),
        "samples": [e[: -len(".json")] + ".samples.jsonl" for e in backbone_eval_jsons(b)],
        "checkpoints": [checkpoint_dir(b, m, s) for m in METHODS for s in SEEDS],
    }


# ------------------------------------------------------------------ inputs


def evaluate_inputs(wildcards):
    inputs = {"backbone": policy_backbone_dir(wildcards.backbone, wildcards.method)}
    if wildcards.method in TRAINED:
        inputs["checkpoint"] = checkpoint_dir(wildcards.backbone, wildcards.method, wildcards.seed)
    ds = synthetic_dataset_of(wildcards.benchmark)
    if ds:
        inputs["data"] = data_dir(ds)
    local = CFG.benchmarks.get(wildcards.benchmark, {}).get("path")
    if local:
        inputs["local"] = local
    return inputs


def evaluate_data_root(wildcards, input):
    """--data-root: the directory holding a synthetic benchmark's prepared dataset (an input of the job);
    registry benchmarks read nothing from it."""
    return os.path.dirname(input.data) if "data" in input.keys() else f"{RESULTS}/data"


def evaluate_checkpoint_arg(wildcards):
    if wildcards.method in TRAINED:
        return f"--checkpoint {checkpoint_dir(wildcards.backbone, wildcards.method, wildcards.seed)}"
    return ""


def train_data_dir(wildcards):
    return data_dir(CFG.train_config(wildcards.backbone, wildcards.method).dataset)


def train_backbone_input(wildcards):
    return policy_backbone_dir(wildcards.backbone, wildcards.method)


def atp_sft_data_dir(wildcards):
    return data_dir(CFG.train_config(wildcards.backbone, "atp_latent").dataset)


def atp_sft_config(wildcards):
    """What the SFT stage reads: its backbone, the atp_latent method, the train and atp_sft sections, its data."""
    b = wildcards.backbone
    dataset = CFG.train_config(b, "atp_latent").dataset
    return _slice(
        datasets=[dataset],
        backbones={b: to_dict(CFG.backbones[b])},
        methods=["atp_latent"],
        sections=["train", "atp_sft"],
    )


def train_launcher(wildcards):
    """`tarpo` for one process; `accelerate launch` with one process per GPU when a job asks for several."""
    gpus = CFG.resources_for(wildcards.backbone, "train").gpus
    if gpus > 1:
        return f"accelerate launch --multi_gpu --num_processes {gpus} --num_machines 1 -m tarpo.cli"
    return "tarpo"


def backbone_inputs(wildcards):
    ds = warm_start_dataset(wildcards.backbone)
    return {"data": data_dir(ds)} if ds else {}


def backbone_data_arg(wildcards):
    ds = warm_start_dataset(wildcards.backbone)
    return f"--data {data_dir(ds)}" if ds else ""


# ------------------------------------------------------------------ tuning (tune.smk)

# A config without a `tuning` section tunes with its defaults; where they do not fit it (e.g. no synthetic
# dataset for `synthetic_val`), only a `tune` target fails, naming the problem. A `tuning` section given in
# the config was checked with the rest of it, before any target.
try:
    TUNING = resolved_tuning(CFG)
    TUNING_ERROR = ""
except ConfigError as err:
    TUNING, TUNING_ERROR = TuningConfig(), f"{err} (the defaults of `tuning`: give the config a section that fits it)"
TRIALS = grid_trials(TUNING.grid)  # trial name -> {train key: value}, in grid order
TUNE = f"{RESULTS}/{{backbone}}/tune/{{method}}/{{trial}}/seed{{seed}}"


def tune_eval_json(backbone, method, trial, seed):
    return f"{RESULTS}/{backbone}/tune/{method}/{trial}/seed{seed}/eval/{TUNING.benchmark}.json"


def tune_targets(backbones):
    """The report of each backbone (an input function, so that only a `tune` target meets TUNING_ERROR)."""

    def targets(wildcards):
        if TUNING_ERROR:
            raise WorkflowError(f"config error: {TUNING_ERROR}")
        return [f"{RESULTS}/{b}/tuning.md" for b in backbones]

    return targets


def tune_train_config(wildcards):
    """Rule train's slice with the trial's grid point as the method's last override."""
    sliced = json.loads(train_config(wildcards))
    overrides = sliced["backbones"][wildcards.backbone]["method_overrides"]
    overrides[wildcards.method] = {**overrides.get(wildcards.method, {}), **TRIALS[wildcards.trial]}
    sliced["name"] = f"{CFG.name}-tune"
    return json.dumps(sliced, sort_keys=True)


def tune_evaluate_config(wildcards):
    sliced = json.loads(evaluate_config(wildcards))
    sliced["name"] = f"{CFG.name}-tune"
    return json.dumps(sliced, sort_keys=True)


def tune_evaluate_inputs(wildcards):
    b, m = wildcards.backbone, wildcards.method
    inputs = {
        "backbone": policy_backbone_dir(b, m),
        "checkpoint": f"{RESULTS}/{b}/tune/{m}/{wildcards.trial}/seed{wildcards.seed}/checkpoint",
    }
    ds = synthetic_dataset_of(wildcards.benchmark)
    if ds:
        inputs["data"] = data_dir(ds)
    return inputs


def tune_report_config(wildcards):
    """The backbone, the tuned methods, `train` (the budget the table states), `evaluate` (k) and `tuning`
    resolved (methods filled in), with the datasets the benchmark and the warm start read."""
    b = wildcards.backbone
    sets = sorted({d for d in (synthetic_dataset_of(TUNING.benchmark), warm_start_dataset(b)) if d})
    sliced = json.loads(
        _slice(
            datasets=sets,
            backbones={b: to_dict(CFG.backbones[b])},
            methods=TUNING.methods,
            sections=["train", "evaluate"],
        )
    )
    sliced["tuning"] = to_dict(TUNING)
    return json.dumps(sliced, sort_keys=True)


def tune_report_inputs(wildcards):
    b = wildcards.backbone
    return [tune_eval_json(b, m, t, s) for m in TUNING.methods for t in TRIALS for s in TUNING.seeds]


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
