"""The Snakemake workflow: schema, config files, dry runs, and one real smoke run.

Snakemake runs as a subprocess in a temporary copy of the workflow files, so
no test writes into the repository's results/ or .snakemake/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tarpo import config as tconfig
from tarpo.methods import method_names

from conftest import with_key

pytestmark = [pytest.mark.workflow]  # runs Snakemake

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = ["config/config.yaml", "config/smoke.yaml"]

# (dotted path of a misspelt key, the value put there)
MISSPELT = [
    ("sead", 1),
    ("datasets.synthetic.n_trian", 10),
    ("backbones.tiny.model.hidden_sise", 16),
    ("backbones.tiny.resources.train.gpu", 1),  # the field is `gpus`
    ("methods.tarpo.action_bias_hrd", 2.2),
    ("train.learning_rat", 0.1),
    ("evaluate.benchmark", ["synthetic_test_id"]),
]


def _with_key(data: dict, dotted: str, value) -> dict:
    return with_key(data, dotted, value)


def _default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the rules call the `tarpo` console script installed beside this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["TARPO_TRACKING"] = "on"  # jobs track into the copy's results/mlflow.db
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow files (Snakefile, workflow/, config/) to run Snakemake in."""
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    return wd


def snakemake(workdir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------ schema


def test_schema_file_is_generated_from_the_config_classes():
    assert SCHEMA.read_text() == tconfig.schema_yaml(), "regenerate: tarpo schema --out workflow/schemas/config.schema.yaml"


@pytest.mark.parametrize("path", CONFIGS)
def test_config_files_load_and_validate(path):
    cfg = tconfig.load_config(REPO / path)
    assert "tiny" in cfg.backbones and "synthetic" in cfg.datasets
    assert set(cfg.methods) == set(method_names(trained=True))  # every method runs in the default and smoke configs
    from snakemake.utils import validate

    validate(yaml.safe_load((REPO / path).read_text()), str(SCHEMA))


def test_smoke_config_is_small():
    cfg = tconfig.load_config(REPO / "config" / "smoke.yaml")
    assert cfg.datasets["synthetic"].n_train <= 500
    assert cfg.backbones["tiny"].model.num_layers <= 2
    assert cfg.backbones["tiny"].warm_start.steps <= 50
    assert cfg.train.steps <= 3


@pytest.mark.parametrize("dotted,value", MISSPELT, ids=[m[0] for m in MISSPELT])
def test_schema_rejects_misspelt_key_by_name(dotted, value):
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    bad = _with_key(_default_config(), dotted, value)
    leaf = dotted.rsplit(".", 1)[-1]

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert errors and any(f"'{leaf}'" in e.message for e in errors)

    with pytest.raises(WorkflowError, match=f"'{leaf}' was unexpected"):
        validate(bad, str(SCHEMA))

    with pytest.raises(tconfig.ConfigError, match=f"'{dotted}'"):
        tconfig.load_config(bad)


def test_schema_rejects_wrong_type():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    bad = _with_key(_default_config(), "train.steps", "forty")
    with pytest.raises(WorkflowError, match="forty"):
        validate(bad, str(SCHEMA))
    with pytest.raises(tconfig.ConfigError, match="train.steps"):
        tconfig.load_config(bad)


# ------------------------------------------------------------------ dry runs


@pytest.mark.parametrize("path", CONFIGS)
def test_dry_run_resolves(workdir, path):
    args = ["-n", "-p", "all"] + (["--configfile", path] if path != "config/config.yaml" else [])
    proc = snakemake(workdir, *args)
    out = _out(proc)
    assert proc.returncode == 0, out
    root = "results/default" if path == "config/config.yaml" else "results/smoke"  # results/{name}
    assert "tarpo prepare --config-json" in out and f"--dataset synthetic --out {root}/data/synthetic" in out
    assert "tarpo backbone --config-json" in out and f"--data {root}/data/synthetic --out {root}/backbones/tiny" in out
    assert not (workdir / "results").exists()


def _outputs(stdout: str) -> list[str]:
    """Every output, log and benchmark record of the jobs a `snakemake -n` run printed."""
    paths = []
    for line in stdout.splitlines():
        key, _, rest = line.strip().partition(": ")
        if key in ("output", "log", "benchmark"):
            paths += [p.split(" (")[0] for p in rest.split(", ")]
    return paths


def test_two_configs_dry_run_into_their_own_roots_without_overlap(workdir):
    cfg = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    cfg["name"] = "other"
    (workdir / "config" / "other.yaml").write_text(yaml.safe_dump(cfg))
    outs = {}
    for name in ("smoke", "other"):
        proc = snakemake(workdir, "-n", "-p", "all", "--configfile", f"config/{name}.yaml")
        assert proc.returncode == 0, _out(proc)
        outs[name] = _outputs(proc.stdout)
        assert len(outs[name]) > 50 and all(p.startswith(f"results/{name}/") for p in outs[name]), outs[name]
        assert {c["name"] for c in _config_jsons(proc.stdout)} == {name}  # the MLflow experiment of every job
    assert not set(outs["smoke"]) & set(outs["other"])
    assert {p[len("results/smoke/"):] for p in outs["smoke"]} == {p[len("results/other/"):] for p in outs["other"]}
    assert not (workdir / "results").exists()  # a dry run claims nothing


def test_a_second_config_file_with_the_same_name_is_refused_before_planning(workdir):
    target = "results/smoke/data/synthetic"
    proc = snakemake(workdir, target, "--configfile", "config/smoke.yaml")  # the first run claims the root
    assert proc.returncode == 0, _out(proc)
    marker = json.loads((workdir / "results" / "smoke" / ".tarpo-config.json").read_text())
    assert marker["config"] == "config/smoke.yaml" and marker["name"] == "smoke"
    shutil.copy(workdir / "config" / "smoke.yaml", workdir / "config" / "smoke-copy.yaml")  # name: smoke
    for dry in (["-n"], []):
        proc = snakemake(workdir, *dry, "all", "--configfile", "config/smoke-copy.yaml")
        out = _out(proc)
        assert proc.returncode != 0
        assert ("config error: results/smoke/ holds the results of config/smoke.yaml (name: smoke), not of "
                "config/smoke-copy.yaml: two config files with `name: smoke` would overwrite each other's results. "
                "Give config/smoke-copy.yaml another `name`") in out, out
        assert "Job stats" not in out and len(out.strip().splitlines()) < 10, out
    # the owner is fine, by any spelling of its path, and the copy with a name of its own too
    for args in (["--configfile", "./config/smoke.yaml"], ["--configfile", str(workdir / "config" / "smoke.yaml")],
                 ["--configfile", "config/smoke-copy.yaml", "--config", "name=copy"]):
        proc = snakemake(workdir, "-n", "all", *args)
        assert proc.returncode == 0, _out(proc)
    # an unmoved tree of the layout before roots is refused, naming the README's section
    (workdir / "results" / "backbones" / "tiny").mkdir(parents=True)
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/smoke.yaml")
    assert proc.returncode != 0 and "results/backbones: results of the layout before per-config roots" in _out(proc)
    assert "Moving an old results/ tree" in _out(proc), _out(proc)


def test_configfile_replaces_the_default(workdir):
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/smoke.yaml")
    assert proc.returncode == 0, _out(proc)
    assert '"name": "smoke"' in proc.stdout
    assert '"n_train": 200' in proc.stdout  # smoke sizes reach the job


def test_backbone_job_gets_only_its_slice_of_the_config(workdir):
    proc = snakemake(workdir, "-n", "-p", "results/default/backbones/tiny")
    assert proc.returncode == 0, _out(proc)
    line = next(ln for ln in proc.stdout.splitlines() if "tarpo backbone --config-json" in ln)
    blob = line.split("--config-json '", 1)[1].split("' --backbone", 1)[0]
    sliced = json.loads(blob)
    assert sliced["methods"] == {} and sliced["baselines"] == []
    assert list(sliced["backbones"]) == ["tiny"] and list(sliced["datasets"]) == ["synthetic"]
    assert "train" not in sliced and "resources" not in sliced
    assert sliced["backbones"]["tiny"]["resources"] == {}
    tconfig.load_config_json(json.dumps(sliced))  # what the CLI will load


def test_hub_backbone_takes_no_data_and_gets_its_resources(workdir):
    cfg = _default_config()
    cfg["backbones"]["qwen2.5-1.5b"] = {
        "kind": "hub",
        "repo_id": "Qwen/Qwen2.5-1.5B-Instruct",
        "resources": {"backbone": {"gpus": 1, "mem_mb": 30000}},
    }
    (workdir / "config" / "hub.yaml").write_text(yaml.safe_dump(cfg))
    # targets go before --configfile (it takes several values)
    proc = snakemake(workdir, "-n", "-p", "all_qwen2.5-1.5b", "--configfile", "config/hub.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out
    assert "gpu=1" in out and "mem_mb=30000" in out
    cmd = next(ln for ln in proc.stdout.splitlines() if "tarpo backbone --config-json" in ln)
    assert "--data" not in cmd.split("--backbone", 1)[1]
    # the backbone job of a hub model needs no data (only its training set does)
    backbone_job = out.split("rule backbone:", 1)[1].split("rule ", 1)[0]
    assert "input:" not in backbone_job or "/data/" not in backbone_job


@pytest.mark.parametrize("dotted,value", MISSPELT[:3] + MISSPELT[5:6], ids=[m[0] for m in MISSPELT[:3] + MISSPELT[5:6]])
def test_dry_run_fails_on_misspelt_key_naming_it(workdir, dotted, value):
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(_with_key(_default_config(), dotted, value)))
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/bad.yaml")
    assert proc.returncode != 0
    out = _out(proc)
    # the tarpo loader's one line (dotted key, did you mean ...), not the schema's dump of ~180 lines
    assert f"config error: unknown config key '{dotted}' (did you mean" in out, out
    assert len(out.strip().splitlines()) < 10, out


def test_every_seed_trains_and_evaluates_every_method(workdir):
    cfg = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    cfg["seeds"] = [0, 5]
    (workdir / "config" / "seeds.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/seeds.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out
    stats = out.split("Job stats:", 1)[1].split("total", 1)[0]
    counts = {row.split()[0]: int(row.split()[1]) for row in stats.splitlines()[3:] if row.strip()}
    assert counts["train"] == 5 * 2 and counts["evaluate"] == 6 * 2 * 2  # methods (+ cot) x seeds x benchmarks
    assert counts["atp_sft"] == 1  # once per backbone, whatever the seeds
    assert "--out results/smoke/tiny/tarpo/seed5/checkpoint" in out
    assert "results/smoke/tiny/cot/seed5/eval/synthetic_test_ood.json" in out
    train = next(ln for ln in proc.stdout.splitlines() if "tarpo train" in ln and "--seed 5" in ln)
    sliced = json.loads(train.split("--config-json '", 1)[1].split("' --backbone", 1)[0])
    assert sliced["seeds"] == [5]  # a job's slice holds its own seed only: adding a seed reruns no other job
    assert "results/smoke/figures/tables/results.md" in out  # not the default config: the page stays under its root


def test_an_ablation_arm_is_trained_and_evaluated_per_seed_and_tabled(workdir):
    cfg = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    cfg["seeds"] = [0, 1]
    (workdir / "config" / "seeds.yaml").write_text(yaml.safe_dump(cfg))
    cfg["ablations"] = {"tarpo_flat": {"method": "tarpo", "train": {"action_loss_weight": 0.0}}}
    (workdir / "config" / "arm.yaml").write_text(yaml.safe_dump(cfg))
    without = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/seeds.yaml")
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/arm.yaml")
    out = _out(proc)
    assert proc.returncode == 0 and without.returncode == 0, out
    counts = _job_counts(out)
    assert counts["train"] == (5 + 1) * 2 and counts["evaluate"] == (6 + 1) * 2 * 2  # methods + the arm (+ cot)
    assert counts["ablations_table"] == 1 and counts["summarise"] == 1
    for seed in (0, 1):
        train = next(ln for ln in proc.stdout.splitlines() if "tarpo train" in ln and "tarpo_flat" in ln
                     and f"--seed {seed}" in ln)
        assert f"--method tarpo --arm tarpo_flat --seed {seed} --backbone-dir results/smoke/backbones/tiny " in train
        assert f"--out results/smoke/tiny/tarpo_flat/seed{seed}/checkpoint" in train
        sliced = tconfig.load_config_json(train.split("--config-json '", 1)[1].split("' --", 1)[0])
        assert sliced.train_config("tiny", "tarpo_flat").action_loss_weight == 0.0 and sliced.seeds == [seed]
        for bench in ("synthetic_test_id", "synthetic_test_ood"):
            assert (f"--method tarpo --arm tarpo_flat --seed {seed} --backbone-dir results/smoke/backbones/tiny "
                    f"--checkpoint results/smoke/tiny/tarpo_flat/seed{seed}/checkpoint --benchmark {bench}") in out
    assert ("tarpo ablations --config-json" in out and "--out-csv results/smoke/tiny/ablations.csv --out-dir "
            "results/smoke/figures/tiny/tables") in out
    # adding an arm reruns no method's job: every other job's slice is unchanged
    page = [s for s in _config_jsons(proc.stdout) if "results_page" in s]
    assert page and page[0]["ablations"]["tarpo_flat"]["method"] == "tarpo"  # the page lists the arm
    others = [s for s in _config_jsons(proc.stdout) if "ablations" not in s]
    assert sorted(map(json.dumps, others)) == sorted(
        json.dumps(s) for s in _config_jsons(without.stdout) if "results_page" not in s)
    # `snakemake ablations`: the arms, their methods and the tables, nothing else
    counts = _job_counts(_out(snakemake(workdir, "-n", "ablations", "--configfile", "config/arm.yaml")))
    assert counts["train"] == 2 * 2 and counts["evaluate"] == 2 * 2 * 2 and "summarise" not in counts
    proc = snakemake(workdir, "-n", "ablations", "--configfile", "config/seeds.yaml")
    assert proc.returncode != 0 and "config error: the config has no `ablations`" in _out(proc)


def test_seeds_must_be_a_non_empty_list_of_distinct_seeds():
    for bad, match in (([], "at least one"), ([1, 1], "repeat"), ([-1], "non-negative")):
        with pytest.raises(tconfig.ConfigError, match=match):
            tconfig.load_config({"seeds": bad})
    assert tconfig.load_config({}).seeds == [0]
    assert tconfig.load_config(REPO / "config" / "paper.yaml").seeds == [0, 1, 2]


def test_dry_run_fails_on_unknown_method_naming_it(workdir):
    cfg = _default_config()
    cfg["methods"]["ppo"] = {}
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/bad.yaml")
    assert proc.returncode != 0
    assert "methods.ppo" in _out(proc)


def _config_jsons(stdout: str) -> list[dict]:
    """The --config-json of every job a `snakemake -n -p` printed."""
    return [json.loads(line.split("--config-json '", 1)[1].split("' --", 1)[0])
            for line in stdout.splitlines() if "--config-json '" in line]


def _job_counts(out: str) -> dict[str, int]:
    stats = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {row.split()[0]: int(row.split()[1]) for row in stats.splitlines()[3:] if row.strip()}


def test_dry_run_fails_on_unknown_benchmark_before_any_training(workdir):
    cfg = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    cfg["evaluate"]["benchmarks"] = ["synthetic_test_id", "gsm9k"]
    (workdir / "config" / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/bad.yaml")
    out = _out(proc)
    assert proc.returncode != 0
    assert "unknown benchmark 'gsm9k' in 'evaluate.benchmarks[1]' (did you mean 'gsm8k'?)" in out, out
    assert "rule train" not in out and len(out.strip().splitlines()) < 10, out


def test_out_of_range_value_fails_the_dry_run_naming_the_key(workdir):
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/smoke.yaml", "--config", "train={group_size: 1}")
    out = _out(proc)
    assert proc.returncode != 0
    assert "config error: 'train.group_size' must be >= 2, got 1" in out, out
    assert len(out.strip().splitlines()) < 10, out


def test_nested_overrides_on_the_command_line_reach_the_jobs(workdir):
    """--config 'SECTION={key: value}' overrides one key of a section; the value gets the key's type."""
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/smoke.yaml", "--config",
                     "evaluate={k: 8}", "train={learning_rate: 1e-4, group_size: 3}", "seeds=[3]",
                     "methods={tarpo: {action_bias_hard: 2.2}}")
    out = _out(proc)
    assert proc.returncode == 0, out
    slices = _config_jsons(proc.stdout)
    trains = [s for s in slices if "train" in s and s["methods"] and "evaluate" not in s and "atp_sft" not in s]
    sfts = [s for s in slices if "atp_sft" in s]
    assert len(sfts) == 1 and sfts[0]["train"]["learning_rate"] == 1e-4  # the SFT job gets the overrides too
    evals = [s for s in slices if "evaluate" in s and "results_page" not in s]
    assert trains and evals
    for sliced in trains:
        assert sliced["train"]["learning_rate"] == 1e-4 and sliced["train"]["group_size"] == 3
        assert sliced["train"]["max_new_tokens"] == 24  # the rest of the section is the file's
        assert sliced["seeds"] == [3]
    # each training job's slice holds its own method only: tarpo's with the override, the others as in the file
    assert [len(s["methods"]) for s in trains] == [1] * len(trains), trains
    assert {m: o for s in trains for m, o in s["methods"].items()} == {
        "grpo": {}, "hrpo": {}, "lepo": {}, "tarpo": {"action_bias_hard": 2.2}, "atp_latent": {"atp_max_steps": 4}}
    for sliced in evals:
        assert sliced["evaluate"]["k"] == 8
        assert sliced["evaluate"]["benchmarks"] == ["synthetic_test_id", "synthetic_test_ood"]
    assert "--out results/smoke/tiny/tarpo/seed3/checkpoint" in out and "seed0" not in out


def test_config_file_problems_fail_the_dry_run_in_a_few_lines(workdir):
    # the default config file, read before Snakemake reads it: file, line and column
    good = (workdir / "config" / "config.yaml").read_text()
    (workdir / "config" / "config.yaml").write_text("name: x\nseeds: [0, 1\n")
    proc = snakemake(workdir, "-n", "all")
    out = _out(proc)
    assert proc.returncode != 0 and "config error: config/config.yaml:3:1: invalid YAML" in out, out
    (workdir / "config" / "config.yaml").write_text(good)
    # a --configfile with a key given twice (Snakemake's reader silently keeps the last one)
    (workdir / "config" / "dup.yaml").write_text(good + "\ntrain:\n  steps: 1\n")
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/dup.yaml")
    out = _out(proc)
    assert proc.returncode != 0 and "dup.yaml" in out and "duplicate key 'train' (first at line" in out, out
    # an empty --configfile is an error (Snakemake's own), not the full-size defaults
    (workdir / "config" / "empty.yaml").write_text("")
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/empty.yaml")
    assert proc.returncode != 0 and "Job stats" not in _out(proc)
    for proc in (snakemake(workdir, "-n", "all", "--configfile", "config/dup.yaml"),
                 snakemake(workdir, "-n", "all", "--configfile", "config/empty.yaml")):
        assert len(_out(proc).strip().splitlines()) < 10, _out(proc)


def test_every_job_of_the_paper_config_loads_its_slice_as_the_cli_does(workdir):
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/paper.yaml")
    assert proc.returncode == 0, _out(proc)
    slices = _config_jsons(proc.stdout)
    counts = _job_counts(_out(proc))
    # every job that runs tarpo on a config slice (router_figure only reads the probes' JSONs)
    assert len(slices) == sum(counts.values()) - counts["all"] - counts["runtime"] - counts["router_figure"]
    assert counts["router_probe"] == counts["router_figure"] * len(tconfig.load_config(
        REPO / "config" / "paper.yaml").seeds)  # TARPO's probe per backbone and seed
    for sliced in slices:
        tconfig.load_config_json(json.dumps(sliced))


def test_default_profile_reruns_incomplete_outputs_and_unlock_clears_a_stale_lock(workdir):
    """What a `kill -9` of Snakemake leaves behind: a lock, and an output marked incomplete."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True
    assert yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["rerun-incomplete"] is True
    shutil.copytree(REPO / "profiles" / "default", workdir / "profiles" / "default")
    target = "results/smoke/data/synthetic"
    meta = workdir / ".snakemake"
    (meta / "locks").mkdir(parents=True)
    (meta / "locks" / "0.output.lock").write_text(target + "\n")
    (meta / "incomplete").mkdir()
    (meta / "incomplete" / base64.urlsafe_b64encode(target.encode()).decode()).write_text('{"external_jobid": null}')
    (workdir / target).mkdir(parents=True)
    (workdir / target / "train.jsonl").write_text("half written")

    args = (target, "--configfile", "config/smoke.yaml")
    proc = snakemake(workdir, *args)  # a real run refuses the lock, naming the fix
    assert proc.returncode != 0 and "--unlock" in _out(proc), _out(proc)
    proc = snakemake(workdir, "--unlock", *args)
    assert proc.returncode == 0 and not list((meta / "locks").glob("*.lock")), _out(proc)
    proc = snakemake(workdir, "-n", *args, "--workflow-profile", "none")  # without the profile
    assert proc.returncode != 0 and "--rerun-incomplete" in _out(proc)
    proc = snakemake(workdir, "-n", *args)  # with it: the incomplete output is simply rebuilt
    out = _out(proc)
    assert proc.returncode == 0 and "profiles/default" in out and "rule prepare" in out, out


# ------------------------------------------------------------------ a real run


@pytest.mark.slow
def test_smoke_run_builds_data_and_backbone(workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    targets = ["results/smoke/data/synthetic", "results/smoke/backbones/tiny"]
    proc = snakemake(workdir, *targets, "--configfile", "config/smoke.yaml", timeout=900)
    out = _out(proc)
    assert proc.returncode == 0, out[-5000:]

    root = workdir / "results" / "smoke"  # the smoke config's root (its name)
    data = root / "data" / "synthetic"
    for split, n in (("train", 200), ("test_id", 16), ("test_ood", 16)):
        rows = (data / f"{split}.jsonl").read_text().splitlines()
        assert len(rows) == n
    bb = root / "backbones" / "tiny"
    tok = AutoTokenizer.from_pretrained(bb)
    model = AutoModelForCausalLM.from_pretrained(bb)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert tok.eos_token is not None and tok.pad_token is not None
    assert (root / "logs" / "prepare" / "synthetic.log").exists()
    assert (root / "logs" / "backbone" / "tiny.log").stat().st_size > 0
    # each job's runtime and memory (Snakemake's benchmark: record) beside its log's path
    for record in ("prepare/synthetic.tsv", "backbone/tiny.tsv"):
        rows = (root / "benchmarks" / record).read_text().splitlines()
        header, values = rows[0].split("\t"), rows[1].split("\t")
        assert header[:3] == ["s", "h:m:s", "max_rss"] and float(values[0]) > 0, rows
    # The warm start is tracked as a `tiny/...` run of experiment `smoke` in the default store, shared by every
    # config's root: results/mlflow.db.
    from mlflow.tracking import MlflowClient

    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()  # nothing stray in the cwd
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert any(r.info.run_name.startswith("tiny/") and r.info.status == "FINISHED" for r in runs), runs
    assert not list((workdir / "results").rglob(".*.tmp-*"))  # no half-written outputs left behind
    assert json.loads((root / ".tarpo-config.json").read_text())["config"] == "config/smoke.yaml"  # owns the root

    # Nothing to redo; and editing a section no data/backbone job reads retriggers nothing.
    cfg = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    cfg["train"]["steps"] = 7
    cfg["resources"]["train"]["mem_mb"] = 1234
    cfg["methods"]["tarpo"] = {"action_bias_hard": 2.2}
    (workdir / "config" / "smoke.yaml").write_text(yaml.safe_dump(cfg))  # the same file, edited
    proc = snakemake(workdir, "-n", *targets, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 0, _out(proc)
    assert "Nothing to be done" in _out(proc), _out(proc)
    # ...while a change to the backbone's own settings does.
    cfg["backbones"]["tiny"]["warm_start"]["steps"] = 21
    (workdir / "config" / "smoke.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "-n", *targets, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 0, _out(proc)
    assert "rule backbone:" in proc.stdout and "rule prepare:" not in proc.stdout


def test_the_ablations_config_trains_every_arm_per_seed_and_the_sizes_config_each_size_alone(workdir):
    """config/ablations.yaml: TARPO, ATP-Latent and their 7 arms at 3 seeds; config/sizes.yaml: `all_small`
    builds the second size's own warm start, trainings and tables, nothing of `tiny`."""
    proc = snakemake(workdir, "-n", "-p", "ablations", "--configfile", "config/ablations.yaml")
    assert proc.returncode == 0, _out(proc)
    counts = _job_counts(_out(proc))
    arms = tconfig.load_config(REPO / "config" / "ablations.yaml").ablations
    assert len(arms) == 7 and {a.method for a in arms.values()} == {"tarpo", "atp_latent"}
    assert counts["train"] == (2 + len(arms)) * 3 and counts["evaluate"] == counts["train"] * 2
    for arm in arms:
        for seed in (0, 1, 2):
            assert f"results/ablations/tiny/{arm}/seed{seed}/checkpoint" in proc.stdout
    # `all` adds the router probe of every TARPO run (the method and its 6 arms) per seed, and its figure
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/ablations.yaml")
    assert proc.returncode == 0, _out(proc)
    counts = _job_counts(_out(proc))
    assert counts["router_probe"] == 7 * 3 and counts["router_figure"] == 1
    assert "results/ablations/tiny/tarpo_random_router/seed2/router.json" in proc.stdout
    assert "results/ablations/tiny/atp_no_coherence/seed0/router.json" not in proc.stdout
    proc = snakemake(workdir, "-n", "-p", "all_small", "--configfile", "config/sizes.yaml")
    assert proc.returncode == 0, _out(proc)
    counts = _job_counts(_out(proc))
    assert counts["backbone"] == 1 and counts["train"] == 4 * 3 and "results/sizes/tiny/" not in proc.stdout
    assert "results/sizes/backbones/small" in proc.stdout
    # the tables and the page get the backbones in the config's order (tiny, then small: the page's size
    # comparison takes the first as its reference), where every other slice sorts its keys
    proc = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/sizes.yaml")
    assert proc.returncode == 0, _out(proc)
    lines = [ln for ln in proc.stdout.splitlines() if "--config-json '" in ln]
    for flag in ("--combined", "--page"):  # rules tables and results_page
        line = next(ln for ln in lines if "tarpo summarise --config-json" in ln and flag in ln)
        sliced = json.loads(line.split("--config-json '", 1)[1].split("' --", 1)[0])
        assert list(sliced["backbones"]) == ["tiny", "small"], flag
