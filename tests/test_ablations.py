"""Ablation arms: the config section, and the ablation table (tarpo.ablations) from hand-made evaluations whose
every number is known: each arm differs from its method by the same amount on every problem of a seed, so the
seed-level interval is the classic paired t interval over the per-seed differences (df = seeds - 1)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from tarpo.ablations import ablation_frame
from tarpo.cli import main
from tarpo.config import ConfigError, load_config

from conftest import write_eval_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
K = 8
SEEDS = [0, 1, 2]
BENCHMARKS = {"synthetic_test_id": "id", "synthetic_test_ood": "ood"}
PARENT = [2, 3, 3]  # correct samples of 8 on each of the 3 problems, every seed
# arm minus its method, in correct samples (of K) per problem, by seed: the same on every problem of a seed
SHIFT = {
    ("tarpo_x", "synthetic_test_id"): [2, 4, 0],
    ("tarpo_x", "synthetic_test_ood"): [1, 1, 3],
    ("grpo_y", "synthetic_test_id"): [4, 4, 5],
    ("grpo_y", "synthetic_test_ood"): [-2, 0, -2],
}
ARMS = {"tarpo_x": {"method": "tarpo", "train": {"action_loss_weight": 0.0}},
        "grpo_y": {"method": "grpo", "train": {"beta": 0.0}}}


def config(**changes) -> dict:
    data = copy.deepcopy(SMOKE)
    data.update(seeds=SEEDS, methods={"grpo": {}, "tarpo": {}}, ablations=copy.deepcopy(ARMS))
    data["evaluate"]["benchmarks"] = list(BENCHMARKS)
    data["evaluate"]["k"] = K
    data.update(changes)
    return data


# ------------------------------------------------------------------ the config section


def test_an_arm_is_its_method_with_its_overrides_merged_last():
    data = config()
    data["backbones"]["tiny"]["method_overrides"] = {"tarpo": {"action_loss_weight": 0.3, "beta": 0.02}}
    cfg = load_config(data)
    arm = cfg.train_config("tiny", "tarpo_x")
    method = cfg.train_config("tiny", "tarpo")
    assert method.action_loss_weight == 0.3 and arm.action_loss_weight == 0.0  # over the method's override
    assert arm.beta == method.beta == 0.02  # everything else is the method's
    assert cfg.method_of("tarpo_x") == "tarpo" and cfg.method_of("tarpo") == "tarpo" and cfg.method_of("cot") == "cot"
    with pytest.raises(ConfigError, match="unknown method 'nope'; registered: .*; arms of `ablations`: tarpo_x"):
        cfg.method_of("nope")
    # an arm of atp_latent starts from its SFT stage like its method, with the method's own defaults
    data = config(methods={"atp_latent": {"atp_max_steps": 4}},
                  ablations={"no_coherence": {"method": "atp_latent", "train": {"coherence_weight": 0.0}}})
    arm = load_config(data).train_config("tiny", "no_coherence")
    assert arm.coherence_weight == 0.0 and arm.atp_max_steps == 4 and arm.beta == 0.0  # beta: atp_latent's default


@pytest.mark.parametrize("arms,says", [
    ({"x": {"method": "tarpoo"}}, r"'ablations.x.method': 'tarpoo' is not a trained method of this config; "
                                  r"`methods`: grpo, tarpo"),
    ({"x": {"method": "cot"}}, r"'ablations.x.method': 'cot' is not a trained method"),
    ({"x": {"method": "hrpo"}}, r"'hrpo' is not a trained method of this config \(a registered method, but not "
                                r"trained by this config: add it to `methods`\)"),
    ({"x": {"train": {}}}, r"'ablations.x.method': '' is not a trained method"),
    ({"x": {"method": "tarpo", "train": {"action_loss_weigth": 0.0}}},
     r"unknown config key 'ablations.x.train.action_loss_weigth' \(did you mean 'action_loss_weight'\?\)"),
    ({"x": {"method": "tarpo", "trian": {}}}, r"unknown config key 'ablations.x.trian' \(did you mean 'train'\?\)"),
    ({"x": {"method": "tarpo", "train": {"steps": "many"}}}, r"'ablations.x.train.steps'"),
    ({"grpo": {"method": "tarpo"}}, r"'ablations.grpo': 'grpo' is a method's name; an arm needs a name of its own"),
    ({"cot": {"method": "tarpo"}}, r"'ablations.cot': 'cot' is a method's name"),
    ({"tune": {"method": "tarpo"}}, r"'ablations.tune': 'tune' is taken"),
    ({"a/b": {"method": "tarpo"}}, r"'ablations.a/b': an arm's name may hold only letters"),
])
def test_a_bad_arm_is_refused_naming_it(arms, says):
    with pytest.raises(ConfigError, match=says):
        load_config(config(ablations=arms))


def test_the_schema_knows_the_section():
    import jsonschema

    from tarpo.config import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    assert not list(validator.iter_errors(config()))
    for bad in ({"grpo": {"method": "tarpo"}}, {"x": {"method": "ppo"}}, {"x": {"train": {}}},
                {"x": {"method": "tarpo", "train": {"learning_rat": 1.0}}}):
        assert list(validator.iter_errors(config(ablations=bad))), bad


# ------------------------------------------------------------------ the ablation table


def write_eval(results: Path, method: str, seed: int, bench: str, correct: list[int]) -> None:
    write_eval_json(results, "tiny", method, seed, bench, BENCHMARKS[bench], correct, K)


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results" / "smoke"
    for (arm, bench), shifts in SHIFT.items():
        parent = ARMS[arm]["method"]
        for seed, shift in zip(SEEDS, shifts, strict=True):
            write_eval(root, parent, seed, bench, PARENT)
            write_eval(root, arm, seed, bench, [c + shift for c in PARENT])
    return root


def expected(shifts: list[int]) -> dict[str, float]:
    """The paired t interval over seeds of the per-seed differences (by hand: mean, sd / sqrt(S), t with S - 1 df)."""
    d = np.array(shifts) / K
    se = d.std(ddof=1) / np.sqrt(len(d))
    t = sps.t.ppf(0.975, len(d) - 1)
    return {"delta": d.mean(), "ci_low": d.mean() - t * se, "ci_high": d.mean() + t * se, "se": se, "df": len(d) - 1,
            "p_value": 2 * sps.t.sf(abs(d.mean()) / se, len(d) - 1)}


def test_the_table_gives_each_arm_minus_its_method_with_seed_level_intervals_and_holm(results):
    cfg = load_config(config())
    frame, notes = ablation_frame(cfg, results, "tiny")
    assert not notes
    rows = {(r.method, r.benchmark, r.split): r for r in frame.itertuples()}
    # every benchmark, and each split's average (with one benchmark a split's average is that benchmark's test)
    assert set(rows) == {(a, b, s) for a in ("tarpo_x", "grpo_y") for b, s in
                         [*BENCHMARKS.items(), ("average", "id"), ("average", "ood")]}
    for (arm, bench), shifts in SHIFT.items():
        row, want = rows[(arm, bench, BENCHMARKS[bench])], expected(shifts)
        assert row.comparison == "ablation" and row.baseline == ARMS[arm]["method"] and row.metric == "pass@1"
        assert row.n_seeds == 3 and row.n_problems == 3
        for key, value in want.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-9, abs=1e-12), (arm, bench, key)
        average = rows[(arm, "average", BENCHMARKS[bench])]
        assert (average.delta, average.p_value, average.p_holm) == (row.delta, row.p_value, row.p_holm)
    # by hand: tarpo_x on ID moves +2, +4, 0 of 8 samples per problem: +0.25, se 0.25 / sqrt 3, t 1.73, df 2
    tarpo_id = rows[("tarpo_x", "synthetic_test_id", "id")]
    assert tarpo_id.delta == pytest.approx(0.25) and tarpo_id.se == pytest.approx(0.25 / np.sqrt(3))
    assert tarpo_id.ci_low == pytest.approx(0.25 - 4.302653 * 0.25 / np.sqrt(3), abs=1e-6)
    # Holm over the backbone's 4 distinct tests: sorted p times 4, 3, 2, 1, kept monotone
    p = {key: rows[(*key, BENCHMARKS[key[1]])].p_value for key in SHIFT}
    order = sorted(p, key=p.get)
    running, holm = 0.0, {}
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * p[key]))
        holm[key] = running
    for key in SHIFT:
        assert rows[(*key, BENCHMARKS[key[1]])].p_holm == pytest.approx(holm[key])
    # grpo_y on ID (+4, +4, +5 of 8: t = 13) is established after Holm; nothing else is
    significant = {key for key in SHIFT if rows[(*key, BENCHMARKS[key[1]])].significant}
    assert significant == {("grpo_y", "synthetic_test_id")}
    smallest = holm[("grpo_y", "synthetic_test_id")]
    assert smallest == pytest.approx(4 * expected([4, 4, 5])["p_value"]) and smallest < 0.05


def test_with_one_seed_nothing_is_established(results):
    cfg = load_config(config(seeds=[0]))
    frame, _ = ablation_frame(cfg, results, "tiny")
    assert len(frame) == 8 and not frame.significant.any() and (frame.n_seeds == 1).all()


def test_a_missing_evaluation_is_named_and_its_rows_left_out(results):
    (results / "tiny" / "grpo_y" / "seed1" / "eval" / "synthetic_test_ood.json").unlink()
    frame, notes = ablation_frame(load_config(config()), results, "tiny")
    assert "tiny/grpo_y: no evaluation on synthetic_test_ood (seed 1)" in notes
    # grpo_y on OOD pairs the seeds both sides have (0 and 2)
    row = frame[(frame.method == "grpo_y") & (frame.benchmark == "synthetic_test_ood")].iloc[0]
    assert row.n_seeds == 2 and row.delta == pytest.approx(-0.25)


def test_cli_writes_the_table_and_the_page_has_an_ablations_section(results, tmp_path):
    cfg = config()
    tables_dir = tmp_path / "tables"
    argv = ["ablations", "--config-json", json.dumps(cfg), "--backbone", "tiny", "--results", str(results),
            "--out-csv", str(results / "tiny" / "ablations.csv"), "--out-dir", str(tables_dir)]
    assert main(argv) == 0
    md = (tables_dir / "ablations.md").read_text()
    assert "**tiny: ablation arm − its method, Pass@1 (points)**" in md
    row = next(line for line in md.splitlines() if line.startswith("| grpo_y"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["grpo_y", "GRPO", "beta=0.0"]
    assert cells[3].startswith("**+54.2 [") and "Holm 0.0" in cells[3]  # established: bold
    tarpo = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| tarpo_x")).strip("|").split("|")]
    assert tarpo[:3] == ["tarpo_x", "TARPO", "action_loss_weight=0.0"] and tarpo[3].startswith("+25.0 [")
    assert "<table" in (tables_dir / "ablations.html").read_text()
    assert "\\toprule" in (tables_dir / "ablations.tex").read_text()

    from tarpo.tables import results_page

    text = results_page(load_config(cfg), results, tmp_path / "page.md")
    section = text.split("## Ablations", 1)[1]
    assert "### tiny: ablation arm − its method" in section and "| grpo_y" in section
    without = results_page(load_config(config(ablations={})), results, tmp_path / "page2.md")
    assert "## Ablations" not in without


def test_cli_arm_must_be_an_arm_of_the_method(tmp_path, capsys):
    cfg = json.dumps(config())
    base = ["train", "--config-json", cfg, "--backbone", "tiny", "--backbone-dir", "x", "--data", "y", "--out", "z"]
    assert main([*base, "--method", "grpo", "--arm", "tarpo_x"]) == 2
    assert "--arm tarpo_x is an arm of 'tarpo', not of --method grpo" in capsys.readouterr().err
    assert main([*base, "--method", "tarpo", "--arm", "nope"]) == 2
    assert "--arm nope: the config's `ablations` has no such arm (tarpo_x, grpo_y)" in capsys.readouterr().err


# ------------------------------------------------------------------ a real run


@pytest.mark.slow
@pytest.mark.workflow
def test_an_arm_trains_and_evaluates_as_its_method_under_its_own_name(tmp_path):
    """`snakemake ablations` on the smoke config with one arm of tarpo: the arm's policy is a tarpo policy with the
    arm's settings, its evaluations and MLflow runs carry the arm's name, and the table pairs it with tarpo."""
    import os
    import shutil
    import subprocess
    import sys

    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    cfg = copy.deepcopy(SMOKE)
    cfg["name"] = "arm"
    cfg["methods"] = {"tarpo": {}}
    cfg["evaluate"]["benchmarks"] = ["synthetic_test_id"]
    cfg["ablations"] = {"tarpo_flat": {"method": "tarpo", "train": {"action_loss_weight": 0.0}}}
    (wd / "config" / "arm.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, TARPO_TRACKING="on")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "ablations", "--configfile",
                           "config/arm.yaml"], cwd=wd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    root = wd / "results" / "arm" / "tiny"
    policy = json.loads((root / "tarpo_flat" / "seed0" / "checkpoint" / "policy.json").read_text())
    assert policy["method"] == "tarpo" and policy["train"]["action_loss_weight"] == 0.0  # a tarpo policy, changed
    run = json.loads((root / "tarpo_flat" / "seed0" / "checkpoint" / "run.json").read_text())
    assert run["method"] == "tarpo_flat"  # its own fingerprint: never resumes from, or as, tarpo's training
    ev = json.loads((root / "tarpo_flat" / "seed0" / "eval" / "synthetic_test_id.json").read_text())
    assert ev["method"] == "tarpo_flat" and ev["ablation_of"] == "tarpo" and "soft_ratio" in ev  # tarpo's metrics
    table = (root / "ablations.csv").read_text().splitlines()
    assert len(table) == 1 + 2 and all(",ablation,tarpo_flat,tarpo," in line for line in table[1:])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{wd / 'results' / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("arm").experiment_id])}
    assert runs["tiny/tarpo_flat/seed0/train"].data.tags["ablation_of"] == "tarpo"
    assert "tiny/tarpo_flat/seed0/evaluate/synthetic_test_id" in runs and "tiny/tarpo/seed0/train" in runs
