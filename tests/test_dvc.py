"""DVC round trip through tools/results.py: build with Snakemake, share, clone afresh, restore, nothing to rerun.

Works on a temporary git repository holding a copy of the project's files,
with a config other than the default (config/travel.yaml: the smoke config
with its backbone renamed `mini`, one trained method), and a temporary
directory as the DVC remote. dvc.yaml is not written by hand: the stages come
from Snakemake's own list of the config's outputs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.workflow]  # runs Snakemake and DVC

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TARPO_TRACKING"] = "off"  # the MLflow store is not versioned by DVC
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", DVC_NO_ANALYTICS="1")
    return env


def run(cwd: Path, *cmd: str, timeout: int = 300) -> str:
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _copy_project(dst: Path) -> None:
    """The files git would see in a clone of this working tree (tracked + untracked, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        else:
            shutil.copy2(src, target)


def _digest(root: Path) -> dict[str, str]:
    """Content hashes of the files under root, less the periodic training checkpoints
    (`{backbone}/{method}/train_state/`, resume points that are not outputs and not versioned)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "train_state" not in p.parts}


def _rerun_rules(dry_run_output: str) -> set[str]:
    """Rules a `snakemake -n` run would execute (from its job-stats table)."""
    if "Nothing to be done" in dry_run_output:
        return set()
    table = dry_run_output.split("Job stats:", 1)[1].split("total", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {row[0] for row in rows}


# Summary rules (tables and figures from the evaluations) may rerun: they are
# cheap and their outputs are not versioned.
CHEAP = {"all", "summarise", "tables", "figures", "report", "results_page", "runtime", "runtimes"}



def results_tool(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "tools/results.py", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


def _travel_config(root: Path) -> None:
    """A non-default config with other names than the default's: backbone `mini`, experiment `travel`."""
    cfg = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
    cfg["name"] = "travel"
    cfg["backbones"] = {"mini": cfg["backbones"].pop("tiny")}
    cfg["methods"] = {"grpo": {}}
    cfg["evaluate"]["benchmarks"] = ["synthetic_test_id"]
    (root / "config" / "travel.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_dvc_yaml_is_what_snakemake_says_for_the_default_config():
    """The committed dvc.yaml holds the default config's stages exactly as the tool derives them (no drift)."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import results
    finally:
        sys.path.pop(0)
    derived = results.config_stages("config/config.yaml", results.workflow_outputs("config/config.yaml"))
    committed = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    ours = {name: stage for name, stage in committed.items() if stage["meta"]["config"] == "config/config.yaml"}
    assert ours == derived
    names = set(derived)
    # named by the output's path under results/, which starts with the config's root (results/default/)
    assert {"prepare-default-data-synthetic", "backbone-default-backbones-tiny",
            "train-default-tiny-tarpo-seed0-checkpoint", "evaluate-default-tiny-tarpo-seed0-eval",
            "evaluate-default-tiny-cot-seed0-eval"} <= names
    outs = [p for s in derived.values() for p in s["outs"]]
    assert "results/default/tiny/cot/seed0/eval/synthetic_test_id.json" in outs
    assert all(p.startswith("results/default/") for p in outs)
    assert not [p for p in outs if "/logs/" in p or "figures" in p or "mlflow" in p or p.endswith(".tsv")]
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "stage", "list"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train-default-tiny-grpo-seed0-checkpoint" in proc.stdout, proc.stdout + proc.stderr


def _stages(root: Path) -> dict[str, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def test_the_stages_of_two_configs_coexist_in_dvc_yaml(tmp_path):
    """`tools/results.py stages` for the smoke config beside the committed default stages: both stay, keyed by
    config; sharing a config again replaces its stages (a seed it no longer has leaves) and no other's."""
    root = tmp_path / "project"
    _copy_project(root)
    default = {n: s for n, s in _stages(root).items() if s["meta"]["config"] == "config/config.yaml"}
    assert default

    def smoke_stages(seeds: list[int]) -> dict[str, dict]:
        cfg = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
        cfg["seeds"] = seeds
        (root / "config" / "smoke.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        results_tool(root, "stages", "--configfile", "config/smoke.yaml")
        stages = _stages(root)
        assert {n: s for n, s in stages.items() if s["meta"]["config"] == "config/config.yaml"} == default
        return {n: s for n, s in stages.items() if s["meta"]["config"] == "config/smoke.yaml"}

    smoke = smoke_stages([0, 1])
    assert {"prepare-smoke-data-synthetic", "train-smoke-tiny-tarpo-seed1-checkpoint"} <= set(smoke)
    assert not set(smoke) & set(default)
    smoke_outs = {p for s in smoke.values() for p in s["outs"]}
    default_outs = {p for s in default.values() for p in s["outs"]}
    assert all(p.startswith("results/smoke/") for p in smoke_outs) and not smoke_outs & default_outs
    assert smoke["train-smoke-tiny-tarpo-seed1-checkpoint"]["cmd"] == (
        "snakemake --cores all --configfile config/smoke.yaml results/smoke/tiny/tarpo/seed1/checkpoint")
    smoke = smoke_stages([0])  # one seed fewer: its stages leave dvc.yaml, the default config's stay
    assert "train-smoke-tiny-tarpo-seed0-checkpoint" in smoke and not [n for n in smoke if "seed1" in n]


@pytest.mark.slow
def test_share_clone_restore_another_config_leaves_nothing_to_rerun(tmp_path):
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    _copy_project(origin)
    _travel_config(origin)
    run(origin, "git", "init", "-q")
    run(origin, "git", "add", "-A")
    run(origin, "git", "commit", "-q", "-m", "project")
    run(origin, "dvc", "remote", "modify", "--local", "local", "url", str(remote))  # documented override
    travel = ("--configfile", "config/travel.yaml")

    # Sharing before building says what to run and records nothing.
    proc = results_tool(origin, "share", *travel, ok=False)
    assert "not built" in proc.stderr and "snakemake --cores 2 all --configfile config/travel.yaml" in proc.stderr

    # Build, then one command records the outputs, pushes them and commits dvc.yaml + dvc.lock.
    run(origin, "snakemake", "--cores", "2", "all", *travel, timeout=1500)
    proc = results_tool(origin, "share", *travel)
    assert "shared: config/travel.yaml" in proc.stdout, proc.stdout
    stages = yaml.safe_load((origin / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((origin / "dvc.lock").read_text())["stages"]
    travel_stages = {n for n, s in stages.items() if s["meta"]["config"] == "config/travel.yaml"}
    # data, backbone, the grpo checkpoint, and the evaluations of grpo and cot (one directory each)
    assert travel_stages == {"prepare-travel-data-synthetic", "backbone-travel-backbones-mini",
                             "train-travel-mini-grpo-seed0-checkpoint", "evaluate-travel-mini-grpo-seed0-eval",
                             "evaluate-travel-mini-cot-seed0-eval"}
    assert set(lock) == travel_stages  # the default config's stages (never built here) are not in the lock
    # the default config's stages stay beside them: each config writes under its own root
    assert "prepare-default-data-synthetic" in stages and "results/travel/data/synthetic" in \
        stages["prepare-travel-data-synthetic"]["outs"]
    assert "results" in run(origin, "git", "log", "-1", "--format=%s")
    assert not run(origin, "git", "status", "--porcelain", "dvc.yaml", "dvc.lock").strip()
    assert any(remote.rglob("*")), "nothing was pushed"

    # A fresh clone restores the results with one command instead of rebuilding them.
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "results").exists()
    run(clone, "dvc", "remote", "modify", "--local", "local", "url", str(remote))
    proc = results_tool(clone, "restore", *travel)
    assert "restored: config/travel.yaml" in proc.stdout
    for rel in ["results/travel/data", "results/travel/backbones", "results/travel/mini"]:
        # summary.csv / paired.csv are the figures rule's cheap outputs, rebuilt rather than versioned
        origin_files = {k: v for k, v in _digest(origin / rel).items() if k not in ("summary.csv", "paired.csv")}
        assert _digest(clone / rel) == origin_files, rel
    out = run(clone, "snakemake", "--cores", "1", "-n", "all", *travel)
    assert _rerun_rules(out) <= CHEAP, out[-4000:]
    assert "Data and pipelines are up to date" in run(clone, "dvc", "status", *travel_stages)

    # ...and a real change is still noticed: a training setting reruns training and evaluation only.
    cfg = yaml.safe_load((clone / "config" / "travel.yaml").read_text())
    cfg["train"]["steps"] += 1
    (clone / "config" / "travel.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run(clone, "snakemake", "--cores", "1", "-n", "all", *travel)
    rules = _rerun_rules(out)
    assert {"train", "evaluate"} <= rules and not rules & {"prepare", "backbone"}, out[-4000:]

    # Restoring a config that was never shared names the fix.
    proc = results_tool(clone, "restore", ok=False)
    assert "never shared" in proc.stderr and "make share CONFIG=config/config.yaml" in proc.stderr
