"""MLflow: runs are grouped and named so a reader finds them, and `mlflow ui` lists them.

* Runs made through tarpo.tracking the way the jobs make them (warm start,
  training with step metrics, evaluation metrics attached to the training
  run, a `cot` evaluation run) are served by `mlflow ui` on localhost and
  listed by its REST API.
* After the smoke pipeline (a short chain: data, backbone, one trained
  method, its evaluation and the `cot` baseline's), the default store
  results/mlflow.db holds the expected runs and metrics, and `mlflow ui`
  serves them too.

The server runs in its own process group (it spawns workers that outlive a
plain kill of the parent), which the test kills as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tarpo import tracking

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: Path, log: Path) -> Iterator[str]:
    """`mlflow ui --backend-store-uri sqlite:///<store>` (the README's command) on a free localhost port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # workers left in the group
            os.killpg(proc.pid, signal.SIGKILL)


def api(base: str, path: str, body: dict | None = None) -> dict:
    """GET (body None) or POST a JSON body to the REST API."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def served_runs(base: str, experiment: str) -> dict[str, dict]:
    """The experiment's runs as the server lists them: run name -> {status, metrics, tags}."""
    exps = api(base, "experiments/search", {"max_results": 100})["experiments"]
    assert experiment in {e["name"] for e in exps}, exps
    exp_id = next(e["experiment_id"] for e in exps if e["name"] == experiment)
    runs = api(base, "runs/search", {"experiment_ids": [exp_id], "max_results": 1000}).get("runs", [])
    out = {}
    for run in runs:
        name = run["info"]["run_name"]
        assert name not in out, f"two runs named {name}"
        out[name] = {
            "id": run["info"]["run_id"],
            "status": run["info"]["status"],
            "metrics": {m["key"]: m["value"] for m in run["data"].get("metrics", [])},
            "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])},
        }
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TARPO_TRACKING", "on")
    return tmp_path / "results"


@pytest.mark.slow  # starts a server (~15 s)
def test_mlflow_ui_lists_runs_logged_through_tarpo_tracking(store, tmp_path):
    name = tracking.run_name
    with tracking.start_run("ui-test", name("tiny", "sft", "warm_start"), params={"steps": 3},
                            results_dir=store) as run:
        run.log_metrics({"loss": 2.0}, step=3)
    with tracking.start_run("ui-test", name("tiny", "tarpo", "train", seed=0), params={"train": {"learning_rate": 1e-4}},
                            tags={"stage": "train"}, results_dir=store) as run:
        for step in range(3):
            run.log_metrics({"reward_mean": 0.1 * step, "soft_ratio": 0.01 * step}, step=step)
        train_id = run.run_id
    # evaluation reopens the training run and attaches its metrics (tarpo.evaluate does the same)
    with tracking.start_run("ui-test", "ignored", run_id=train_id, results_dir=store) as run:
        run.log_metrics({"eval/synthetic_test_id/pass@1": 0.5})
    with tracking.start_run("ui-test", name("tiny", "cot", "evaluate", seed=0), results_dir=store) as run:
        run.log_metrics({"eval/synthetic_test_id/pass@1": 0.25})
    with tracking.start_run("other-config", name("tiny", "grpo", "train"), results_dir=store):
        pass

    with mlflow_ui(store / "mlflow.db", tmp_path / "ui.log") as base:
        runs = served_runs(base, "ui-test")
        assert set(runs) == {"tiny/sft/warm_start", "tiny/tarpo/seed0/train", "tiny/cot/seed0/evaluate"}
        assert all(r["status"] == "FINISHED" for r in runs.values())
        train = runs["tiny/tarpo/seed0/train"]
        assert train["id"] == train_id and train["tags"]["stage"] == "train"
        assert train["metrics"]["reward_mean"] == pytest.approx(0.2)  # the latest step
        assert train["metrics"]["eval/synthetic_test_id/pass_at_1"] == pytest.approx(0.5)
        assert runs["tiny/cot/seed0/evaluate"]["metrics"]["eval/synthetic_test_id/pass_at_1"] == pytest.approx(0.25)
        history = api(base, f"metrics/get-history?run_id={train_id}&metric_key=reward_mean")["metrics"]
        assert [(m["step"], round(m["value"], 6)) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]
        assert set(served_runs(base, "other-config")) == {"tiny/grpo/train"}  # one experiment per config


@pytest.mark.slow
def test_smoke_pipeline_runs_are_in_the_store_and_served(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    env = dict(os.environ, TARPO_TRACKING="on")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    targets = ["results/tiny/tarpo/seed0/eval/synthetic_test_id.json",
               "results/tiny/cot/seed0/eval/synthetic_test_id.json"]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets,
                           "--configfile", "config/smoke.yaml"], cwd=wd, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    db = wd / "results" / "mlflow.db"
    assert db.exists() and not (wd / "mlflow.db").exists()
    with mlflow_ui(db, tmp_path / "ui.log") as base:
        runs = served_runs(base, "smoke")  # experiment = the config's `name`
    # the trainer names its run (tarpo.trainer): `tiny/tarpo/train`, or with the seed, `tiny/tarpo/seed0/train`
    train_name = next(n for n in runs if n in ("tiny/tarpo/train", "tiny/tarpo/seed0/train"))
    assert set(runs) == {"tiny/sft/warm_start", train_name, "tiny/cot/seed0/evaluate"}, sorted(runs)
    assert all(r["status"] == "FINISHED" for r in runs.values()), runs
    train = runs[train_name]["metrics"]
    assert {"reward_mean", "kl", "soft_ratio"} <= set(train), sorted(train)
    # the evaluation of the trained checkpoint lands on the run that trained it
    assert "eval/synthetic_test_id/pass_at_1" in train, sorted(train)
    assert (wd / "results" / "tiny" / "tarpo" / "seed0" / "checkpoint" / "run_id.txt").read_text().strip() == \
        runs[train_name]["id"]
    assert "eval/synthetic_test_id/pass_at_1" in runs["tiny/cot/seed0/evaluate"]["metrics"]
    assert "eval/synthetic_test_id/pass_at_1_ci95_low" in train
    assert runs["tiny/sft/warm_start"]["metrics"], "the warm start logs its loss curve"
