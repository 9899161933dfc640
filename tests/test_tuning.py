"""Choosing hyperparameters on validation (tarpo.tuning, the `tuning` config section, workflow/rules/tune.smk):
grid and trial names, config errors, the report's choice on hand-made evaluations, and the `tune` dry run.

Snakemake runs as a subprocess in a temporary copy of the workflow files (as in test_workflow.py). A real
smoke run of `tune` (2 methods x 2 trials) took 106 s on the 2 shared CPU cores, so only dry runs here.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tarpo import stats
from tarpo.cli import build_parser, main
from tarpo.config import ConfigError, load_config, load_config_json, resolved_tuning
from tarpo.tuning import eval_path, expand_grid, trial_name, trials, value_text

REPO = Path(__file__).resolve().parents[1]


def _smoke() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def _with_tuning(tuning: dict) -> dict:
    cfg = _smoke()
    cfg["tuning"] = tuning
    return cfg


# ------------------------------------------------------------------ grid and trial names


def test_grid_expands_in_alphabetical_key_order_with_readable_trial_names():
    grid = {"learning_rate": [3e-5, 1e-4], "beta": [0.0, 0.01]}
    assert expand_grid(grid) == [
        {"beta": 0.0, "learning_rate": 3e-5},
        {"beta": 0.0, "learning_rate": 1e-4},
        {"beta": 0.01, "learning_rate": 3e-5},
        {"beta": 0.01, "learning_rate": 1e-4},
    ]
    assert list(trials(grid)) == [
        "beta=0.0,learning_rate=3e-05",
        "beta=0.0,learning_rate=0.0001",
        "beta=0.01,learning_rate=3e-05",
        "beta=0.01,learning_rate=0.0001",
    ]
    assert list(trials({"learning_rate": [3.0e-5, 1.0e-4, 3.0e-4]})) == [
        "learning_rate=3e-05", "learning_rate=0.0001", "learning_rate=0.0003"]
    assert trial_name({"compile_decode": True, "group_size": 8, "action_loss_positions": "all"}) == \
        "action_loss_positions=all,compile_decode=true,group_size=8"
    assert value_text(False) == "false"


def test_grid_values_take_their_keys_types():
    cfg = load_config(_with_tuning({"grid": {"learning_rate": [1, 2], "group_size": [2, 4]}}))
    assert cfg.tuning.grid == {"learning_rate": [1.0, 2.0], "group_size": [2, 4]}
    assert list(trials(cfg.tuning.grid)) == ["group_size=2,learning_rate=1.0", "group_size=2,learning_rate=2.0",
                                             "group_size=4,learning_rate=1.0", "group_size=4,learning_rate=2.0"]


# ------------------------------------------------------------------ config


def test_tuning_is_optional_and_its_defaults_cover_every_trained_method():
    cfg = load_config(_smoke())
    assert cfg.tuning is None
    tuning = resolved_tuning(cfg)
    assert tuning.benchmark == "synthetic_val" and tuning.seeds == [0]
    assert tuning.grid == {"learning_rate": [3e-5, 1e-4, 3e-4]}
    assert tuning.methods == ["grpo", "hrpo", "lepo", "tarpo", "atp_latent"]
    assert resolved_tuning(load_config(_with_tuning({"methods": ["tarpo"]}))).methods == ["tarpo"]


@pytest.mark.parametrize("tuning,message", [
    ({"benchmrk": "synthetic_val"}, "unknown config key 'tuning.benchmrk' (did you mean 'benchmark'?)"),
    ({"grid": {"learning_rat": [1e-4, 3e-4]}},
     "unknown key 'tuning.grid.learning_rat' (did you mean 'learning_rate'?)"),
    ({"grid": {"lora": [{"r": 8}, {"r": 16}]}}, "unknown key 'tuning.grid.lora'"),
    ({"grid": {"steps": [1, 2]}}, "'tuning.grid.steps': the training budget is not tuned"),
    ({"grid": {"learning_rate": [1e-4]}}, "'tuning.grid.learning_rate' must list at least 2 values"),
    ({"grid": {"learning_rate": [1e-4, 1e-4]}}, "'tuning.grid.learning_rate' must not repeat a value"),
    ({"grid": {"learning_rate": [1e-4, -1.0]}}, "'tuning.grid.learning_rate' must be positive"),
    ({"grid": {}}, "'tuning.grid' must name at least one key"),
    ({"benchmark": "synthetic_test_id"}, "'tuning.benchmark': 'synthetic_test_id' is not a validation benchmark"),
    ({"benchmark": "gsm8k"}, "'tuning.benchmark': 'gsm8k' is not a validation benchmark"),
    ({"benchmark": "other_val"}, "unknown benchmark 'other_val' in 'tuning.benchmark'"),
    ({"methods": ["ppo"]}, "'tuning.methods[0]': 'ppo' is not a trained method"),
    ({"seeds": []}, "'tuning.seeds' must list at least one item"),
])
def test_tuning_config_errors_name_the_key(tuning, message):
    with pytest.raises(ConfigError) as err:
        load_config(_with_tuning(tuning))
    assert message in str(err.value)


def test_test_splits_are_for_reporting_only():
    with pytest.raises(ConfigError, match="test splits are for reporting only"):
        load_config(_with_tuning({"benchmark": "synthetic_test_ood"}))


def test_every_tuned_method_gets_the_same_steps():
    cfg = _with_tuning({"methods": ["grpo", "tarpo"]})
    cfg["methods"]["tarpo"] = {"steps": 3}
    with pytest.raises(ConfigError, match=r"tuning tiny: the tuned methods train different numbers of steps"):
        load_config(cfg)
    cfg["tuning"]["methods"] = ["grpo", "lepo"]  # tarpo is not tuned: no difference
    load_config(cfg)


def test_default_tuning_needs_its_dataset_only_when_tune_is_asked_for():
    cfg = load_config(REPO / "config" / "paper.yaml")  # no synthetic dataset: the config itself is fine
    with pytest.raises(ConfigError, match="'synthetic_val' is a split of the dataset 'synthetic'"):
        resolved_tuning(cfg)


def test_evaluate_accepts_a_validation_benchmark():
    argv = ["evaluate", "--backbone", "b", "--method", "tarpo", "--backbone-dir", "x", "--out", "y", "--benchmark"]
    assert build_parser().parse_args([*argv, "synthetic_val"]).benchmark == "synthetic_val"
    assert build_parser().parse_args([*argv, "arith_val"]).benchmark == "arith_val"


# ------------------------------------------------------------------ the report


def _write_eval(results: Path, method: str, trial: str, seed: int, correct: dict[str, int], k: int = 4) -> None:
    path = eval_path(results, "tiny", method, trial, seed, "synthetic_val")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "synthetic_val", "distribution": "val", "k": k,
                                "correct_per_problem": correct}))


def test_report_chooses_the_highest_mean_and_breaks_ties_to_the_earlier_grid_value(tmp_path, capsys):
    cfg = _with_tuning({"grid": {"learning_rate": [1e-4, 3e-4, 1e-3]}, "seeds": [0, 1], "methods": ["grpo", "tarpo"]})
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(cfg))
    results = tmp_path / "results"
    lr = ["learning_rate=0.0001", "learning_rate=0.0003", "learning_rate=0.001"]
    # pass@1 of a problem = correct / k (k = 4). grpo: 0.5, 0.625, 0.25 -> 0.0003
    _write_eval(results, "grpo", lr[0], 0, {"p1": 4, "p2": 0})  # 1, 0
    _write_eval(results, "grpo", lr[0], 1, {"p1": 2, "p2": 2})  # 0.5, 0.5   -> mean 0.5
    _write_eval(results, "grpo", lr[1], 0, {"p1": 4, "p2": 4})  # 1, 1
    _write_eval(results, "grpo", lr[1], 1, {"p1": 0, "p2": 2})  # 0, 0.5     -> mean 0.625
    _write_eval(results, "grpo", lr[2], 0, {"p1": 1, "p2": 1})
    _write_eval(results, "grpo", lr[2], 1, {"p1": 1, "p2": 1})  #            -> mean 0.25
    # tarpo: 0.5, 0.5, 0.25 -> a tie, the earlier grid value 0.0001
    _write_eval(results, "tarpo", lr[0], 0, {"p1": 2, "p2": 2})
    _write_eval(results, "tarpo", lr[0], 1, {"p1": 2, "p2": 2})  #           -> mean 0.5
    _write_eval(results, "tarpo", lr[1], 0, {"p1": 4, "p2": 0})
    _write_eval(results, "tarpo", lr[1], 1, {"p1": 0, "p2": 4})  #           -> mean 0.5
    _write_eval(results, "tarpo", lr[2], 0, {"p1": 1, "p2": 1})
    _write_eval(results, "tarpo", lr[2], 1, {"p1": 1, "p2": 1})  #           -> mean 0.25

    out_csv, out_md = tmp_path / "tuning.csv", tmp_path / "tuning.md"
    assert main(["tune-report", "--config", str(config), "--backbone", "tiny", "--results", str(results),
                 "--out-csv", str(out_csv), "--out-md", str(out_md)]) == 0
    assert "grpo: chose learning_rate=0.0003" in capsys.readouterr().out
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["method"], r["trial"], float(r["pass1"]), r["chosen"]) for r in rows] == [
        ("grpo", lr[0], 0.5, "0"), ("grpo", lr[1], 0.625, "1"), ("grpo", lr[2], 0.25, "0"),
        ("tarpo", lr[0], 0.5, "1"), ("tarpo", lr[1], 0.5, "0"), ("tarpo", lr[2], 0.25, "0"),
    ]
    assert {r["learning_rate"] for r in rows} == {"0.0001", "0.0003", "0.001"}
    assert all(r["n_seeds"] == "2" and r["n_problems"] == "2" and r["benchmark"] == "synthetic_val" for r in rows)
    ci = stats.mean_ci([[1.0, 1.0], [0.0, 0.5]])  # grpo at 0.0003: seeds x problems
    assert float(rows[1]["low"]) == pytest.approx(ci.low, abs=1e-6)
    assert float(rows[1]["high"]) == pytest.approx(ci.high, abs=1e-6)
    md = out_md.read_text()
    assert "| grpo | 0.0003 | **0.625** |" in md and "| tarpo | 0.0001 | **0.500** |" in md
    assert "| tarpo | 0.0003 | 0.500 |" in md
    assert "`synthetic_val`" in md and "test splits are never used for a choice" in md
    assert "2 steps of 2 prompts x 2 completions" in md  # the budget, the same for both methods

    # a missing evaluation is a missing input (exit 3), naming the file
    eval_path(results, "tiny", "tarpo", lr[2], 1, "synthetic_val").unlink()
    assert main(["tune-report", "--config", str(config), "--backbone", "tiny", "--results", str(results),
                 "--out-csv", str(out_csv), "--out-md", str(out_md)]) == 3
    assert "learning_rate=0.001/seed1/eval/synthetic_val.json" in capsys.readouterr().err


def test_tune_report_help_explains_the_choice(capsys):
    with pytest.raises(SystemExit):
        main(["tune-report", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "highest mean" in out and "earlier grid point" in out and "Test splits are never read" in out


# ------------------------------------------------------------------ the workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow files with config/tune.yaml: the smoke config, atp_latent at its own learning
    rate (as in config.yaml), and a tuning section with 2 grid values."""
    wd = tmp_path_factory.mktemp("tune") / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    cfg = _smoke()
    cfg["methods"]["atp_latent"]["learning_rate"] = 1e-5
    (wd / "config" / "base.yaml").write_text(yaml.safe_dump(cfg))
    cfg = copy.deepcopy(cfg)
    cfg["tuning"] = {"grid": {"learning_rate": [1e-4, 3e-4]}}
    (wd / "config" / "tune.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def snakemake(workdir: Path, *args: str) -> str:
    env = dict(os.environ, TARPO_TRACKING="off")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert not (workdir / "results").exists()
    return out


def _job_counts(out: str) -> dict[str, int]:
    stats_ = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {row.split()[0]: int(row.split()[1]) for row in stats_.splitlines()[3:] if row.strip()}


def _shell_commands(out: str) -> set[str]:
    return {line for line in out.splitlines() if "tarpo " in line}


@pytest.mark.workflow
def test_tune_dry_run_trains_and_evaluates_every_method_trial_and_seed(workdir):
    out = snakemake(workdir, "-n", "-p", "tune", "--configfile", "config/tune.yaml")
    counts = _job_counts(out)
    methods, trials_, seeds = 5, 2, 1
    assert counts["tune_train"] == methods * trials_ * seeds and counts["tune_evaluate"] == methods * trials_ * seeds
    assert counts["tune_report"] == 1 and counts["tune"] == 1
    assert counts["atp_sft"] == 1 and counts["prepare"] == 1 and counts["backbone"] == 1
    assert not {"train", "evaluate", "summarise", "all"} & set(counts)  # nothing of `all`
    assert "--out results/smoke/tiny/tune/atp_latent/learning_rate=0.0003/seed0/checkpoint" in out
    assert "--out-csv results/smoke/tiny/tuning.csv --out-md results/smoke/tiny/tuning.md" in out

    trains = [line for line in out.splitlines() if "tarpo train --config-json" in line]
    for line in trains:
        sliced = json.loads(line.split("--config-json '", 1)[1].split("' --backbone", 1)[0])
        method = line.split("--method ", 1)[1].split()[0]
        want = 3e-4 if "learning_rate=0.0003" in line else 1e-4
        cfg = load_config_json(json.dumps(sliced))  # what `tarpo train` loads
        assert cfg.train_config("tiny", method).learning_rate == want  # atp_latent's own 1e-5 replaced
        assert sliced["name"] == "smoke-tune"
        if method == "atp_latent":
            assert "--backbone-dir results/smoke/tiny/atp_latent/sft" in line
    evals = [line for line in out.splitlines() if "tarpo evaluate --config-json" in line]
    assert len(evals) == 10 and all("--benchmark synthetic_val" in line for line in evals)


@pytest.mark.workflow
def test_all_is_the_same_with_a_tuning_section(workdir):
    with_tuning = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/tune.yaml")
    assert not [job for job in _job_counts(with_tuning) if job.startswith("tune")]
    without = snakemake(workdir, "-n", "-p", "all", "--configfile", "config/base.yaml")
    assert _job_counts(with_tuning) == _job_counts(without)
    assert _shell_commands(with_tuning) == _shell_commands(without)  # same commands, params and outputs
