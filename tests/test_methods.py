"""The method registry (`tarpo.methods`): every method is declared once, and a method registered anywhere is
valid in the config and its schema, built by the trainer and evaluation, labelled, ordered and coloured in
tables and figures, and part of the workflow's DAG, without other edits."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from test_tables import make_summary, md_tables

from tarpo import plots, tables
from tarpo.config import ConfigError, TrainConfig, json_schema, load_config
from tarpo.evaluate import mode_metrics
from tarpo.methods import (
    Method,
    RewardInputs,
    all_methods,
    build_mode,
    get_method,
    method_names,
    method_order,
    register,
    unregister,
)
from tarpo.modes import Mode
from tarpo.summary import method_label

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ["cot", "grpo", "hrpo", "lepo", "tarpo", "atp_latent"]

EXAMPLE = Method(name="example_rl", label="Example-RL", colour="#56b4e9", marker="*", mode=Mode, rank=45,
                 train_defaults={"beta": 0.02})

# What one new module in src/tarpo/methods/ holds for a method that reuses the explicit mode.
EXAMPLE_MODULE = '''"""An example method: explicit tokens, its own KL weight."""

from tarpo.methods import Method, register
from tarpo.modes.base import Mode

EXAMPLE = register(Method(name="example_rl", label="Example-RL", colour="#56b4e9", marker="*", mode=Mode,
                          rank=45, train_defaults={"beta": 0.02}))
'''


@pytest.fixture
def example():
    register(EXAMPLE)
    yield EXAMPLE
    unregister(EXAMPLE.name)


def test_the_built_in_methods_in_table_order():
    assert method_names() == BUILT_IN
    assert method_names(trained=False) == ["cot"] and method_names(trained=True) == BUILT_IN[1:]
    assert [method_label(m) for m in BUILT_IN] == ["CoT", "GRPO", "HRPO", "LEPO", "TARPO", "ATP-Latent"]
    assert [m.name for m in all_methods() if m.soft_positions] == ["lepo", "tarpo"]
    assert [m.name for m in all_methods() if m.sft_stage] == ["atp_latent"]
    assert len({m.colour for m in all_methods()}) == len({m.marker for m in all_methods()}) == len(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_method_builds_its_declared_mode(name):
    mode = build_mode(name, TrainConfig(), 16)
    assert type(mode) is get_method(name).mode


def test_a_method_s_defaults_enter_between_train_and_the_config_s_overrides():
    cfg = load_config({"methods": {"atp_latent": {"log_ratio_clamp": 2.0}, "grpo": {}}})
    atp = cfg.train_config("tiny", "atp_latent")
    assert (atp.beta, atp.advantage_eps, atp.log_ratio_clamp) == (0.0, 1e-8, 2.0)  # defaults, then the override
    assert cfg.train_config("tiny", "grpo").beta == TrainConfig().beta


def test_unknown_and_untrained_names_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown method 'methods.example_rl'; known methods: grpo, hrpo"):
        load_config({"methods": {"example_rl": {}}})
    with pytest.raises(ConfigError, match="unknown method 'methods.cot'"):  # a baseline is not trained
        load_config({"methods": {"cot": {}}})
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")


def test_register_refuses_bad_and_twice_declared_names(example):
    with pytest.raises(ValueError, match="declared twice"):
        register(Method(name="example_rl", label="x", colour="#000000", marker="o", mode=Mode))
    register(example)  # the same declaration again is harmless (a module imported twice)
    for bad in ("Example", "1rl", "ex-rl", ""):
        with pytest.raises(ValueError, match="lowercase letter"):
            register(Method(name=bad, label="x", colour="#000000", marker="o", mode=Mode))


def test_a_registered_method_is_valid_in_the_config_and_its_schema(example):
    cfg = load_config({"methods": {"example_rl": {"learning_rate": 3e-5}}})
    tc = cfg.train_config("tiny", "example_rl")
    assert (tc.beta, tc.learning_rate) == (0.02, 3e-5)  # its declared default and the config's override
    schema = json_schema()
    assert schema["properties"]["methods"]["propertyNames"]["enum"] == BUILT_IN[1:5] + ["example_rl", "atp_latent"]
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors({"methods": {"example_rl": {}}}))
    unregister("example_rl")  # without it, the schema refuses the name
    assert list(jsonschema.Draft202012Validator(json_schema()).iter_errors({"methods": {"example_rl": {}}}))


def test_a_registered_method_is_ordered_labelled_and_coloured(example):
    assert method_order(["atp_latent", "example_rl", "grpo", "zzz"]) == ["grpo", "example_rl", "atp_latent", "zzz"]
    assert method_label("example_rl") == "Example-RL" and method_label("zzz") == "zzz"
    pal = plots.palette(["grpo", "example_rl", "zzz"])
    assert pal["example_rl"] == "#56b4e9" and pal["grpo"] == "#0173b2"
    assert pal["zzz"] not in (pal["example_rl"], pal["grpo"])  # an unregistered method gets an unused colour
    assert plots.style("example_rl", ["grpo", "example_rl"])["marker"] == "*"


def test_a_registered_method_appears_in_the_main_table(example):
    summary = make_summary({"synthetic_test_id": "id"})
    summary = summary.assign(method=summary.method.replace({"tarpo": "example_rl"}))
    (header, rows), = md_tables(tables.table_markdown(tables.main_table(summary), "T"))
    assert [r[0] for r in rows] == ["CoT", "GRPO", "Example-RL"]


def test_evaluation_metrics_come_from_the_method_s_hook():
    rows = [{"n_thinking": 4, "soft": [1, 0, 1, 0], "mean_gate": 0.5},
            {"n_thinking": 2, "soft": [1, 1], "mean_gate": 0.8, "n_latents": 3, "stopped": True}]
    assert mode_metrics("tarpo", rows) == {"soft_ratio": pytest.approx(4 / 6)}
    assert mode_metrics("lepo", rows) == mode_metrics("tarpo", rows)
    assert mode_metrics("hrpo", rows) == {"mean_gate": pytest.approx((0.5 * 4 + 0.8 * 2) / 6)}
    assert mode_metrics("atp_latent", rows) == {"active_latents": pytest.approx(1.5), "stop_rate": 0.5}
    assert mode_metrics("grpo", rows) == {} and mode_metrics("cot", rows) == {}


def test_atp_latent_reward_hook_by_hand(monkeypatch):
    """acc_w * acc + fmt_w * fmt + coh_w * coh * acc; the steps the decoder reads are given here."""
    from tarpo.methods import atp_latent

    steps = [["2 + 3 = 5.", "5 * 2 = 10."], ["1 + 1 = 2."], []]
    monkeypatch.setattr(atp_latent, "latent_step_texts", lambda *a: steps)
    meta = {"z": None, "latent": None,
            "stop": torch.tensor([[False, True], [False, False], [False, False]]),
            "forced": torch.tensor([[False, False], [False, False], [True, False]])}
    rollout = type("R", (), {"meta": meta})()
    texts = ["#### 10", "#### 7", "no answer here"]
    t = TrainConfig(accuracy_weight=1.0, format_weight=0.5, coherence_weight=0.25)
    acc = torch.tensor([1.0, 0.0, 0.0])
    total, parts = atp_latent.reward(RewardInputs(acc, rollout, texts, t, None, None, None))
    # row 0: correct, ended, answer 10, both steps used later -> 1 + 0.5 + 0.25 * 1 * 1
    # row 1: wrong, the block never ended -> fmt 0; coherence gated by accuracy -> 0
    # row 2: ended by force but no answer -> fmt 0
    assert total.tolist() == pytest.approx([1.75, 0.0, 0.0])
    assert parts["format"] == pytest.approx(1 / 3) and parts["accuracy"] == pytest.approx(1 / 3)


def test_the_cli_lists_the_registry(capsys):
    from tarpo.cli import main

    main(["methods"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == BUILT_IN
    assert "starts from its SFT stage" in lines[-1] and "beta=0.0" in lines[-1]


@pytest.mark.workflow
def test_a_new_method_module_joins_the_workflow_without_other_edits(tmp_path):
    """Copy the package, add one module to tarpo/methods/, name the method in a config: the dry run trains
    and evaluates it per seed like the others, and `tarpo methods` lists it."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "tarpo", src / "tarpo", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "tarpo" / "methods" / "example_rl.py").write_text(EXAMPLE_MODULE)
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    cfg = yaml.safe_load((wd / "config" / "smoke.yaml").read_text())
    cfg["methods"] = {"grpo": {}, "example_rl": {}}
    cfg["seeds"] = [0, 1]
    (wd / "config" / "example.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(src), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "-n", "-p", "all", "--configfile",
                           "config/example.yaml"], cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "--method example_rl" in out
    for seed in (0, 1):
        assert f"results/smoke/tiny/example_rl/seed{seed}/checkpoint" in out
        assert f"results/smoke/tiny/example_rl/seed{seed}/eval/synthetic_test_id.json" in out
    listed = subprocess.run([sys.executable, "-m", "tarpo.cli", "methods"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "example_rl   Example-RL" in listed.stdout, listed.stdout + listed.stderr
