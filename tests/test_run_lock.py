"""One run per results root: a second pipeline on the same root started while one runs is refused before it plans;
a pipeline of another config (another root) runs beside it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tarpo.io import hold_lock

pytestmark = [pytest.mark.workflow]  # runs Snakemake

REPO = Path(__file__).resolve().parents[1]


def test_a_lock_is_held_once_and_names_its_holder(tmp_path):
    lock = tmp_path / "run.lock"
    assert hold_lock(lock, {"pid": 1}) is None and hold_lock(lock, {"pid": 2}) is None  # this process holds it
    probe = "import sys; from tarpo.io import hold_lock; print(hold_lock(sys.argv[1], {'pid': 3}))"
    other = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "{'pid': 1}", other.stderr


def test_a_second_pipeline_on_the_same_tree_is_refused_naming_the_running_one(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    slow = tmp_path / "bin" / "tarpo"  # the first run's only job takes its time (FAKE_SLEEP seconds), then writes --out
    slow.parent.mkdir()
    slow.write_text('#!/bin/sh\nout=; prev=\nfor a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done\n'
                    'sleep "${FAKE_SLEEP:-60}"\nmkdir -p "$out"\n')
    slow.chmod(0o755)
    env = dict(os.environ, TARPO_TRACKING="off")
    env["PATH"] = f"{slow.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = [sys.executable, "-m", "snakemake", "--cores", "1", "results/smoke/data/synthetic", "--configfile",
            "config/smoke.yaml"]
    first = subprocess.Popen(argv, cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        lock = wd / "results" / "smoke" / ".tarpo-run.lock"  # the config's root
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.5)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid

        second = subprocess.run(argv, cwd=wd, env=env, capture_output=True, text=True, timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert (f"another run is using {wd / 'results' / 'smoke'}: pid {first.pid} on {holder['host']}, started "
                f"{holder['started']}, command `snakemake --cores 1 results/smoke/data/synthetic --configfile "
                f"config/smoke.yaml` in {wd}; wait for it to finish (or stop it), then rerun; a dry run (-n) is "
                "allowed meanwhile") in out, out
        assert "rule prepare" not in out  # refused before planning

        dry = subprocess.run([*argv, "-n"], cwd=wd, env=env, capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0 and f"note: a run is in progress on {wd / 'results' / 'smoke'} (pid {first.pid}" \
            in dry.stderr

        # another config (its own root, results/other/) runs meanwhile, to the end
        other = [sys.executable, "-m", "snakemake", "--cores", "1", "results/other/data/synthetic", "--configfile",
                 "config/smoke.yaml", "--config", "name=other"]
        beside = subprocess.run(other, cwd=wd, env=dict(env, FAKE_SLEEP="0"), capture_output=True, text=True,
                                timeout=120)
        assert beside.returncode == 0, beside.stdout + beside.stderr
        assert (wd / "results" / "other" / "data" / "synthetic").is_dir() and first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=60)
    # once it is gone (however it ended) the tree is free again
    again = subprocess.run([*argv, "-n"], cwd=wd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "a run is in progress" not in again.stderr
