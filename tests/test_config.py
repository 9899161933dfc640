"""Bad configuration is rejected before a run, by name: ranges, names, files, JSON, command-line overrides."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tarpo import cli
from tarpo import config as tconfig
from tarpo.config import ConfigError, coerce_overrides, load_config, load_config_json, read_config_file

from conftest import with_key as with_config_key

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def with_key(dotted: str, value) -> dict:
    return with_config_key(SMOKE, dotted, value)


# (dotted key, degenerate value, what the error says)
OUT_OF_RANGE = [
    ("train.steps", -1, "non-negative"),
    ("train.prompts_per_step", 0, ">= 1"),
    ("train.grad_accum", 0, ">= 1"),
    ("train.group_size", 1, ">= 2"),  # one completion per prompt: every advantage is 0
    ("train.learning_rate", -1e-4, "positive"),
    ("train.learning_rate", 0.0, "positive"),  # nothing would train
    ("backbones.tiny.warm_start.learning_rate", 0.0, "positive"),
    ("atp_sft.learning_rate", 0.0, "positive"),
    ("train.temperature", -0.5, "positive"),
    ("train.temperature", 0.0, "positive"),  # training samples; it has no greedy mode
    ("train.max_grad_norm", 0.0, "positive"),
    ("train.warmup_ratio", 1.5, "<= 1"),
    ("train.adam_beta2", 1.0, "< 1"),
    ("train.hrpo_r_max", 1.0, "< 1"),
    ("train.lora.r", 0, ">= 1"),
    ("evaluate.k", 0, ">= 1"),
    ("evaluate.batch_size", 0, ">= 1"),
    ("evaluate.max_new_tokens", 0, ">= 1"),
    ("evaluate.max_problems", -1, "non-negative"),
    ("evaluate.temperature", -1.0, "non-negative"),  # was silently greedy
    ("datasets.synthetic.n_train", 0, ">= 1"),
    ("datasets.synthetic.n_test_ood", -5, ">= 1"),
    ("datasets.synthetic.demo_error_rate", 1.0, "< 1"),
    ("backbones.tiny.warm_start.batch_size", 0, ">= 1"),
    ("backbones.tiny.model.num_kv_heads", 0, ">= 1"),
    ("resources.train.threads", 0, ">= 1"),
    ("resources.train.mem_mb", -1, ">= 1"),
    ("seed", -1, "non-negative"),
    ("seeds", [0, -1], "non-negative"),
    ("seeds", [], "at least one"),
    ("seeds", [1, 1], "repeat"),
    ("evaluate.benchmarks", [], "at least one"),
    ("evaluate.benchmarks", ["synthetic_test_id", "synthetic_test_id"], "repeat"),
]


@pytest.mark.parametrize("dotted,value,says", OUT_OF_RANGE, ids=[f"{d}={v}" for d, v, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_rejected_naming_the_key(dotted, value, says):
    bad = with_key(dotted, value)
    with pytest.raises(ConfigError, match=f"'{dotted}' must .*{says}") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    # the generated schema (what Snakemake validates against) has the same bounds
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(bad))


def test_bounds_are_in_the_generated_schema():
    props = SCHEMA["properties"]
    train = props["train"]["properties"]
    assert train["group_size"]["minimum"] == 2
    assert train["temperature"]["exclusiveMinimum"] == 0
    assert train["steps"]["minimum"] == 0
    assert train["learning_rate"]["exclusiveMinimum"] == 0  # 0 would train nothing
    assert props["evaluate"]["properties"]["temperature"]["minimum"] == 0
    assert props["evaluate"]["properties"]["k"]["minimum"] == 1
    assert props["seeds"]["items"]["minimum"] == 0 and props["seeds"]["uniqueItems"] is True
    # override mappings (methods.NAME, backbones.NAME.train) are bounded like `train` itself
    assert props["methods"]["additionalProperties"]["properties"]["group_size"]["minimum"] == 2


def test_bounds_hold_in_override_layers_too():
    for dotted in ("methods.tarpo", "backbones.tiny.train", "backbones.tiny.method_overrides.grpo"):
        with pytest.raises(ConfigError, match=f"'{dotted}.group_size' must be >= 2"):
            load_config(with_key(dotted, {"group_size": 1}))


def test_documented_zero_meanings_stay_valid():
    cfg = load_config(with_key("train.steps", 0))  # one epoch (trainer.total_steps)
    assert cfg.train.steps == 0
    assert load_config(with_key("evaluate.temperature", 0.0)).evaluate.temperature == 0.0  # explicit greedy
    assert load_config(with_key("evaluate.max_problems", 0)).evaluate.max_problems == 0  # all problems
    assert load_config(with_key("train.checkpoint_every", 0)).train.checkpoint_every == 0


@pytest.mark.parametrize("dotted,value,says", [
    ("train.learning_rate", float("nan"), "'train.learning_rate' must be a finite number"),
    ("train.max_grad_norm", float("inf"), "'train.max_grad_norm' must be a finite number"),
    ("datasets.synthetic.min_steps", 5, "min_steps must not exceed max_steps"),
    ("datasets.synthetic.max_value", 10, "max_value' must be at least 2 x ood_max_operand"),
    ("backbones.tiny.model.num_heads", 3, "hidden_size \\(32\\) must be num_heads \\(3\\)"),
    ("backbones.tiny.model.num_kv_heads", 3, "hidden_size|multiple of num_kv_heads"),
    ("train.hrpo_r_min", 0.9999, "hrpo_r_min.*exceeds 'hrpo_r_max'"),
    ("name", "", "'name': '' may hold only letters"),
    ("name", "a/b", "'name': 'a/b' may hold only letters, digits, '.', '_' and '-'.*results root results/NAME/"),
    ("name", "mlruns", "'name': 'mlruns' is taken by the MLflow store"),
    ("name", "mlflow.db", "'name': 'mlflow.db' is taken by the MLflow store"),
    ("results_page", "results/other/page.md", "'results_page': results/other/page.md lies under results/ but "
                                              "outside this config's root results/smoke/"),
    ("train.lora.target_modules", [], "target_modules' must list at least one"),
    ("baselines", ["cot", "cot"], "repeat"),
])
def test_cross_field_checks(dotted, value, says):
    with pytest.raises(ConfigError, match=says):
        load_config(with_key(dotted, value))


def test_each_config_has_its_results_root_and_its_page_under_it_by_default():
    cfg = load_config(SMOKE)
    assert cfg.results_root == "results/smoke"
    assert cfg.results_page == "results/smoke/figures/tables/results.md"  # no results_page: under the root
    assert load_config(with_key("results_page", " ")).results_page == "results/smoke/figures/tables/results.md"
    assert load_config(with_key("name", "try2")).results_page == "results/try2/figures/tables/results.md"
    assert load_config(with_key("results_page", "results/smoke/page.md")).results_page == "results/smoke/page.md"
    assert load_config(with_key("results_page", "docs/smoke.md")).results_page == "docs/smoke.md"
    assert load_config(REPO / "config" / "config.yaml").results_page == "docs/results.md"
    configs = sorted((REPO / "config").glob("*.yaml"))
    roots = {load_config(path).results_root for path in configs}
    assert len(roots) == len(configs)  # every config of the repository has a root of its own
    assert {"results/default", "results/smoke", "results/objectives", "results/paper", "results/ablations",
            "results/sizes"} <= roots


@pytest.mark.parametrize("section,name", [("backbones", "qwen/7b"), ("backbones", "my model"), ("datasets", "a'b"),
                                          ("backbones", "-x")])
def test_names_that_would_break_paths_or_shell_words_are_rejected(section, name):
    data = copy.deepcopy(SMOKE)
    data[section][name] = {"kind": "hub", "repo_id": "Qwen/Qwen2.5-7B"} if section == "backbones" else {}
    with pytest.raises(ConfigError, match=f"'{section}.{name}': a name may hold only"):
        load_config(data)
    ok = copy.deepcopy(SMOKE)
    ok["backbones"]["qwen2.5-1.5b_x"] = {"kind": "hub", "repo_id": "Qwen/Qwen2.5-1.5B-Instruct"}
    load_config(ok)


@pytest.mark.parametrize("section", ["backbones", "datasets"])
def test_names_too_long_for_a_file_name_are_rejected_in_one_line(section):
    """A 300-character backbone name used to pass the checks and kill the backbone job (File name too long)."""
    data = copy.deepcopy(SMOKE)
    name = "b" * 300
    data[section][name] = {"kind": "hub", "repo_id": "Qwen/Qwen2.5-7B"} if section == "backbones" else {}
    with pytest.raises(ConfigError, match=rf"'{section}\.b{{20}}\.\.\.': a name may be at most 64 characters long "
                                          r"\(it becomes a file and job name\), got 300") as err:
        load_config(data)
    assert "\n" not in str(err.value)
    data = copy.deepcopy(SMOKE)
    data["name"] = "n" * 65
    with pytest.raises(ConfigError, match="'name' may be at most 64 characters long .* got 65"):
        load_config(data)
    data[section] = {**SMOKE[section], "c" * 64: data[section][next(iter(SMOKE[section]))]}
    data["name"] = "n" * 64
    load_config(data)  # 64 is fine


# ------------------------------------------------------------------ benchmark and training-set names


def test_unknown_benchmark_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown benchmark 'gsm9k' in 'evaluate.benchmarks\[1\]' "
                                          r"\(did you mean 'gsm8k'\?\)"):
        load_config(with_key("evaluate.benchmarks", ["synthetic_test_id", "gsm9k"]))
    with pytest.raises(ConfigError, match="unknown benchmark 'synthetc_test_ood'.*did you mean 'synthetic_test_ood'"):
        load_config(with_key("evaluate.benchmarks", ["synthetc_test_ood"]))
    with pytest.raises(ConfigError, match="'benchmarks.gsm9k'"):
        load_config(with_key("benchmarks", {"gsm9k": {"path": "x.jsonl"}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pth'\] in 'benchmarks.gsm8k'"):
        load_config(with_key("benchmarks", {"gsm8k": {"pth": "x.jsonl"}}))
    with pytest.raises(ConfigError, match="skip_bad_rows' must be true or false"):
        load_config(with_key("benchmarks", {"gsm8k": {"skip_bad_rows": "yes"}}))


def test_benchmarks_of_configured_datasets_and_registry_entries_are_known():
    data = with_key("datasets.arith", {"seed": 7})
    data["evaluate"]["benchmarks"] = ["arith_test_ood", "synthetic_test_id", "gsm8k", "humaneval"]
    assert load_config(data).evaluate.benchmarks[0] == "arith_test_ood"
    load_config(REPO / "config" / "paper.yaml")


def test_a_training_set_is_not_an_evaluation_benchmark():
    with pytest.raises(ConfigError, match="'gsm8k_train' is a training set, not an evaluation benchmark"):
        load_config(with_key("evaluate.benchmarks", ["gsm8k_train"]))


def test_a_config_must_build_and_evaluate_something():
    with pytest.raises(ConfigError, match="'backbones' must name at least one backbone"):
        load_config(with_key("backbones", {}))
    nothing = with_key("methods", {})
    nothing["baselines"] = []
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_config(nothing)
    load_config(with_key("methods", {}))  # cot alone is fine
    load_config_json(json.dumps(with_key("backbones", {})))  # a job's slice (prepare) has no backbones


def test_unknown_training_set_is_rejected():
    with pytest.raises(ConfigError, match="training set 'gsm8k_trian' of tiny/tarpo"):
        load_config(with_key("methods.tarpo", {"dataset": "gsm8k_trian"}))


def test_a_jobs_slice_skips_the_whole_config_checks():
    """A job's --config-json holds only the datasets it reads; its benchmark list may name others."""
    data = with_key("evaluate.benchmarks", ["arith_test_id"])
    with pytest.raises(ConfigError, match="unknown benchmark 'arith_test_id'"):
        load_config(data)
    assert load_config_json(json.dumps(data)).evaluate.benchmarks == ["arith_test_id"]
    with pytest.raises(ConfigError, match="'evaluate.k' must be >= 1"):  # ranges still hold in a slice
        load_config_json(json.dumps(with_key("evaluate.k", 0)))


# ------------------------------------------------------------------ files and JSON


def test_config_file_errors_name_the_file_and_line(tmp_path):
    cases = {
        "missing.yaml": None,
        "syntax.yaml": "name: x\ntrain:\n  steps: [1, 2\n",
        "tab.yaml": "train:\n\tsteps: 1\n",
        "indent.yaml": "name: x\ntrain:\n  steps: 3\n   lr: 2\n",
        "duplicate.yaml": "name: x\ntrain:\n  steps: 3\nseeds: [0]\ntrain:\n  group_size: 4\n",
        "empty.yaml": "",
        "comments.yaml": "# nothing but a comment\n",
        "list.yaml": "- name: x\n",
    }
    says = {
        "missing.yaml": "config file not found: .*missing.yaml",
        "syntax.yaml": r"syntax.yaml:4:1: invalid YAML: .*flow sequence at line 3",
        "tab.yaml": r"tab.yaml:2:1: invalid YAML",
        "indent.yaml": r"indent.yaml:4:6: invalid YAML: mapping values are not allowed",
        "duplicate.yaml": r"duplicate.yaml:5:1: invalid YAML: duplicate key 'train' \(first at line 2\)",
        "empty.yaml": "empty.yaml: the config file is empty",  # not the full-size defaults
        "comments.yaml": "comments.yaml: the config file is empty",
        "list.yaml": "list.yaml: the config must be a mapping at its top level, got list",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=says[name]) as err:
            load_config(tmp_path / name)
        assert "\n" not in str(err.value), name
    assert load_config({}).seeds == [0]  # an empty *mapping* (tests, defaults) is still the defaults


@pytest.mark.parametrize("text,says", [
    ("{", "--config-json: invalid JSON at line 1 column 2"),
    ('{"train": {"steps": 1,}}', "--config-json: invalid JSON at line 1"),
    ("[1]", "--config-json: the config must be a JSON object, got list"),
    ('{"train": {"steps": "forty"}}', "'train.steps' must be an integer, got 'forty'"),
    ('{"evaluate": {"k": 2.5}}', "'evaluate.k' must be an integer"),
    ('{"train": {"group_size": true}}', "'train.group_size' must be an integer, got True"),
])
def test_bad_config_json_is_one_config_error(text, says):
    with pytest.raises(ConfigError, match=says):
        load_config_json(text)


def test_cli_reports_config_problems_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("train:\n  steps: [1\n")
    (tmp_path / "empty.yaml").write_text("")
    runs = [
        (["check", "--config", str(tmp_path / "bad.yaml")], "bad.yaml:3:1: invalid YAML"),
        (["check", "--config", str(tmp_path / "nope.yaml")], "config file not found"),
        (["prepare", "--config", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "o")], "the config file is empty"),
        (["prepare", "--config-json", "{", "--out", str(tmp_path / "o")], "--config-json: invalid JSON"),
        (["prepare", "--config-json", "[]", "--out", str(tmp_path / "o")], "must be a JSON object"),
    ]
    for argv, says in runs:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("tarpo: config error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # the empty config did not generate the full-size dataset
    argv = ["train", "--config", str(REPO / "config" / "smoke.yaml"), "--backbone", "tiny", "--method", "grpo",
            "--backbone-dir", "x", "--data", "x", "--out", str(tmp_path / "o"), "--seed", "-1"]
    assert cli.main(argv) == 2 and "--seed must be non-negative" in capsys.readouterr().err
    assert cli.main(["check", "--config", str(REPO / "config" / "smoke.yaml")]) == 0
    assert "smoke.yaml: ok" in capsys.readouterr().out


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    (tmp_path / "anchors.yaml").write_text(
        "methods:\n  grpo: &m {group_size: 8, beta: 0.01}\n  tarpo:\n    <<: *m\n    group_size: 4\n")
    cfg = load_config(tmp_path / "anchors.yaml")
    assert cfg.methods["tarpo"] == {"group_size": 4, "beta": 0.01}


def test_read_config_file_reads_the_repository_configs():
    for path in (REPO / "config").glob("*.yaml"):
        assert read_config_file(path) == yaml.safe_load(path.read_text())


# ------------------------------------------------------------------ command-line overrides


def test_command_line_override_strings_get_their_keys_types():
    """What Snakemake's --config hands over for `evaluate={k: 8}`, `train={learning_rate: 1e-4}`, `seeds=[3,4]`."""
    given = {
        "evaluate": {"k": "8", "temperature": "0", "benchmarks": ["gsm8k"]},
        "train": {"learning_rate": "1e-4", "adapter": "full", "lora": {"r": "8"}},
        "seeds": ["3", "4"],
        "methods": {"tarpo": {"action_bias_hard": "2.2", "group_size": "8"}},
        "backbones": {"tiny": {"train": {"steps": "5"}, "resources": {"train": {"gpus": "1"}},
                               "revision": "1234", "warm_start": {"steps": "7"}}},
        "datasets": {"synthetic": {"n_train": "50"}},
        "name": "run1",
    }
    out = coerce_overrides(given)
    assert out["evaluate"] == {"k": 8, "temperature": 0.0, "benchmarks": ["gsm8k"]}
    assert out["train"] == {"learning_rate": 1e-4, "adapter": "full", "lora": {"r": 8}}
    assert out["seeds"] == [3, 4]
    assert out["methods"]["tarpo"] == {"action_bias_hard": 2.2, "group_size": 8}
    bb = out["backbones"]["tiny"]
    assert bb["train"] == {"steps": 5} and bb["resources"] == {"train": {"gpus": 1}} and bb["warm_start"] == {"steps": 7}
    assert bb["revision"] == "1234"  # a string key stays a string
    assert out["datasets"]["synthetic"]["n_train"] == 50 and out["name"] == "run1"
    # what does not parse is left for load_config to name
    assert coerce_overrides({"evaluate": {"k": "eight"}, "nope": {"x": "1"}}) == {"evaluate": {"k": "eight"},
                                                                               "nope": {"x": "1"}}
    with pytest.raises(ConfigError, match="'evaluate.k' must be an integer, got 'eight'"):
        load_config(tconfig._merge(SMOKE, coerce_overrides({"evaluate": {"k": "eight"}})))
