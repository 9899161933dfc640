"""DVC round trip: build with Snakemake, commit + push, clone afresh, pull, nothing to rerun.

Works on a temporary git repository holding a copy of the project's files,
with the smoke config as its default config (so `dvc.yaml`, which follows
config/config.yaml, covers a run that takes a couple of minutes), and a
temporary directory as the DVC remote.
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
CHEAP = {"all", "summarise", "tables", "figures", "report", "results_page"}


@pytest.mark.slow
def test_dvc_push_clone_pull_leaves_nothing_to_rerun(tmp_path):
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    _copy_project(origin)
    # The smoke config as the project's default config: dvc.yaml and `snakemake all` follow it.
    # Without atp_latent, as in the real default config: the hand-kept dvc.yaml has no stage for its SFT.
    smoke = yaml.safe_load((origin / "config" / "smoke.yaml").read_text())
    smoke["methods"].pop("atp_latent", None)
    (origin / "config" / "config.yaml").write_text(yaml.safe_dump(smoke))
    run(origin, "git", "init", "-q")
    run(origin, "git", "add", "-A")
    run(origin, "git", "commit", "-q", "-m", "project")
    run(origin, "dvc", "remote", "modify", "--local", "local", "url", str(remote))  # documented override

    # Build everything, record it, push it.
    run(origin, "snakemake", "--cores", "2", "all", timeout=1500)
    stages = run(origin, "dvc", "stage", "list")
    assert "train@tiny-tarpo-0" in stages and "evaluate_baseline@tiny-cot-0-synthetic_test_id" in stages
    run(origin, "dvc", "commit", "-f")
    lock = yaml.safe_load((origin / "dvc.lock").read_text())["stages"]
    smoke = yaml.safe_load((origin / "config" / "config.yaml").read_text())
    seeds = len(smoke["seeds"])
    n_eval = len(smoke["evaluate"]["benchmarks"]) * (len(smoke["methods"]) + len(smoke["baselines"])) * seeds
    assert len(lock) == len(smoke["datasets"]) + 1 + len(smoke["methods"]) * seeds + n_eval  # every output recorded
    assert "Data and pipelines are up to date" in run(origin, "dvc", "status")
    run(origin, "git", "add", "dvc.lock")
    run(origin, "git", "commit", "-q", "-m", "results")
    run(origin, "dvc", "push")
    assert any(remote.rglob("*")), "nothing was pushed"

    # A fresh clone fetches the results instead of rebuilding them.
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "results").exists()
    run(clone, "dvc", "remote", "modify", "--local", "local", "url", str(remote))
    run(clone, "dvc", "pull")
    versioned = ["results/data", "results/backbones", "results/tiny"]
    for rel in versioned:
        # summary.csv / paired.csv are the figures rule's cheap outputs, rebuilt rather than versioned
        origin_files = {k: v for k, v in _digest(origin / rel).items() if k not in ("summary.csv", "paired.csv")}
        assert _digest(clone / rel) == origin_files, rel
    assert "Data and pipelines are up to date" in run(clone, "dvc", "status")

    # Snakemake judges freshness by file times, which a checkout does not keep in
    # dependency order, and by its records in .snakemake/, which a clone lacks:
    # without a step after the pull, jobs whose inputs happen to be checked out
    # after their outputs would rerun. `snakemake --touch --forceall` (README) puts the times in dependency order and
    # records every job's provenance (config slice, code) without running anything.
    run(clone, "snakemake", "--cores", "1", "--touch", "--forceall", "all")
    out = run(clone, "snakemake", "--cores", "1", "-n", "all")
    assert _rerun_rules(out) <= CHEAP, out[-4000:]
    # touching changed no content: DVC still sees exactly what was pushed
    assert "Data and pipelines are up to date" in run(clone, "dvc", "status")

    # ...and a real change is still noticed by both: a training setting
    cfg = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    cfg["train"]["steps"] += 1
    (clone / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run(clone, "snakemake", "--cores", "1", "-n", "all")
    rules = _rerun_rules(out)
    assert {"train", "evaluate"} <= rules and not rules & {"prepare", "backbone"}, out[-4000:]
    assert "train@tiny-tarpo-0" in run(clone, "dvc", "status")
