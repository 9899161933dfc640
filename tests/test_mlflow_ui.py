"""MLflow: runs are grouped and named so a reader finds them, and `mlflow ui` lists them.

* Runs made through tarpo.tracking the way the jobs make them (warm start,
  training with step metrics, its evaluations as nested runs, a `cot`
  evaluation parent with its nested run) are served by `mlflow ui` on
  localhost and listed by its REST API.
* After the smoke pipeline (a short chain: data, backbone, one trained
  method, its evaluation and the `cot` baseline's), the default store
  results/mlflow.db holds one top-level run per (backbone, method, seed,
  stage), the evaluations nested under them, and `mlflow ui` serves them too.
* In a real browser (headless Chromium, skipped where none is installed),
  the address `tarpo.tracking.ui_url` gives opens the runs table with every
  top-level run listed (tools/mlflow_screenshot.py, the manual check).

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

pytestmark = [pytest.mark.workflow]  # an MLflow server, a browser

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
    """The experiment's runs as the server lists them: run name -> {id, status, start, end, parent, metrics, tags}."""
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
            "start": int(run["info"]["start_time"]),
            "end": int(run["info"]["end_time"]),
            "metrics": {m["key"]: m["value"] for m in run["data"].get("metrics", [])},
            "tags": {t["key"]: t["value"] for t in run["data"].get("tags", [])},
        }
        out[name]["parent"] = out[name]["tags"].get(tracking.PARENT_TAG)
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TARPO_TRACKING", "on")
    return tmp_path / "results"


def log_runs_as_the_jobs_do(store: Path, experiment: str = "ui-test") -> dict[str, str]:
    """Warm start, training with step metrics, its evaluation on two benchmarks (nested under it), the
    cot baseline's evaluation; returns run ids by name, and the time the training ended (ms) as 'trained'."""
    name = tracking.run_name
    ids = {}
    with tracking.start_run(experiment, name("tiny", "sft", "warm_start"), params={"steps": 3},
                            results_dir=store) as run:
        run.log_metrics({"loss": 2.0}, step=3)
    with tracking.start_run(experiment, name("tiny", "tarpo", "train", seed=0),
                            params={"train": {"learning_rate": 1e-4}}, tags={"stage": "train"},
                            results_dir=store) as run:
        for step in range(3):
            run.log_metrics({"reward_mean": 0.1 * step, "soft_ratio": 0.01 * step}, step=step)
        ids["tiny/tarpo/seed0/train"] = run.run_id
    ids["trained"] = str(int(time.time() * 1000))
    time.sleep(0.05)
    for benchmark in ("synthetic_test_id", "synthetic_test_ood"):  # tarpo.evaluate, with the checkpoint's run id
        ids[f"tiny/tarpo/seed0/evaluate/{benchmark}"] = tracking.log_evaluation(
            experiment, backbone="tiny", method="tarpo", seed=0, benchmark=benchmark, metrics={"pass@1": 0.5},
            training_run_id=ids["tiny/tarpo/seed0/train"], started=time.time(), results_dir=store)
    ids["tiny/cot/seed0/evaluate/synthetic_test_id"] = tracking.log_evaluation(
        experiment, backbone="tiny", method="cot", seed=0, benchmark="synthetic_test_id", metrics={"pass@1": 0.25},
        started=time.time(), results_dir=store)
    return ids


@pytest.mark.slow  # starts a server (~15 s)
def test_mlflow_ui_lists_runs_logged_through_tarpo_tracking(store, tmp_path):
    ids = log_runs_as_the_jobs_do(store)
    with tracking.start_run("other-config", tracking.run_name("tiny", "grpo", "train"), results_dir=store):
        pass

    with mlflow_ui(store / "mlflow.db", tmp_path / "ui.log") as base:
        runs = served_runs(base, "ui-test")
        top = {n for n, r in runs.items() if r["parent"] is None}
        assert top == {"tiny/sft/warm_start", "tiny/tarpo/seed0/train", "tiny/cot/seed0/evaluate"}
        assert all(r["status"] == "FINISHED" for r in runs.values())
        train = runs["tiny/tarpo/seed0/train"]
        train_id = ids["tiny/tarpo/seed0/train"]
        assert train["id"] == train_id and train["tags"]["stage"] == "train"
        assert train["end"] <= int(ids["trained"])  # the evaluations left the training's time alone
        assert train["metrics"]["reward_mean"] == pytest.approx(0.2)  # the latest step
        assert train["metrics"]["eval/synthetic_test_id/pass_at_1"] == pytest.approx(0.5)  # a copy, for the table
        for benchmark in ("synthetic_test_id", "synthetic_test_ood"):
            child = runs[f"tiny/tarpo/seed0/evaluate/{benchmark}"]
            assert child["parent"] == train_id and child["start"] > train["end"]
            assert child["metrics"]["pass_at_1"] == pytest.approx(0.5)
        cot = runs["tiny/cot/seed0/evaluate"]
        assert runs["tiny/cot/seed0/evaluate/synthetic_test_id"]["parent"] == cot["id"]
        assert cot["metrics"]["eval/synthetic_test_id/pass_at_1"] == pytest.approx(0.25)
        history = api(base, f"metrics/get-history?run_id={train_id}&metric_key=reward_mean")["metrics"]
        assert [(m["step"], round(m["value"], 6)) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]
        assert set(served_runs(base, "other-config")) == {"tiny/grpo/train"}  # one experiment per config
        exp = api(base, "experiments/get-by-name?experiment_name=ui-test")["experiment"]
        assert {t["key"]: t["value"] for t in exp["tags"]}[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


@pytest.mark.slow  # a server and a browser (~30 s)
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None
                    and shutil.which("google-chrome") is None and not os.environ.get("CHROMIUM"),
                    reason="no Chromium (apt-get install chromium)")
def test_browser_opens_the_runs_table(store, tmp_path):
    """The manual check (tools/mlflow_screenshot.py) against runs logged as the jobs log them: the page
    behind tracking.ui_url is the runs table, listing every top-level run and counting the nested ones."""
    ids = log_runs_as_the_jobs_do(store, experiment="smoke")
    png, dom = tmp_path / "runs.png", tmp_path / "runs.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "mlflow_screenshot.py"), "--results-dir", str(store),
                           "--experiment", "smoke", "--out", str(png), "--dom", str(dom)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000  # a rendered page
    page = dom.read_text()
    for name in ("tiny/sft/warm_start", "tiny/tarpo/seed0/train", "tiny/cot/seed0/evaluate"):
        assert f">{name}<" in page, name
    assert len(ids) == 5  # train, its two evaluations, the cot evaluation (+ 'trained')
    assert "<strong>6</strong> matching runs" in page  # + the warm start and the cot parent
    assert ">Model training<" in page


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
    targets = ["results/smoke/tiny/tarpo/seed0/eval/synthetic_test_id.json",
               "results/smoke/tiny/cot/seed0/eval/synthetic_test_id.json"]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets,
                           "--configfile", "config/smoke.yaml"], cwd=wd, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    db = wd / "results" / "mlflow.db"  # beside the configs' roots, shared by them
    assert db.exists() and not (wd / "mlflow.db").exists() and not (wd / "results" / "smoke" / "mlflow.db").exists()
    with mlflow_ui(db, tmp_path / "ui.log") as base:
        runs = served_runs(base, "smoke")  # experiment = the config's `name`
    # the trainer names its run (tarpo.trainer): `tiny/tarpo/train`, or with the seed, `tiny/tarpo/seed0/train`
    train_name = next(n for n in runs if n in ("tiny/tarpo/train", "tiny/tarpo/seed0/train"))
    top = {n for n, r in runs.items() if r["parent"] is None}
    assert top == {"tiny/sft/warm_start", train_name, "tiny/cot/seed0/evaluate"}, sorted(runs)
    assert all(r["status"] == "FINISHED" for r in runs.values()), runs
    train = runs[train_name]
    assert {"reward_mean", "kl", "soft_ratio"} <= set(train["metrics"]), sorted(train["metrics"])
    # the evaluation of the trained checkpoint is a run nested under the run that trained it
    assert (wd / "results" / "smoke" / "tiny" / "tarpo" / "seed0" / "checkpoint" / "run_id.txt").read_text().strip() == \
        train["id"]
    evaluation = runs["tiny/tarpo/seed0/evaluate/synthetic_test_id"]
    assert evaluation["parent"] == train["id"]
    assert evaluation["start"] >= train["end"], "the evaluation ran after the training: it does not stretch it"
    assert {"pass_at_1", "pass_at_1_ci95_low"} <= set(evaluation["metrics"]), sorted(evaluation["metrics"])
    assert {"eval/synthetic_test_id/pass_at_1", "eval/synthetic_test_id/pass_at_1_ci95_low"} <= set(train["metrics"])
    cot = runs["tiny/cot/seed0/evaluate"]
    assert runs["tiny/cot/seed0/evaluate/synthetic_test_id"]["parent"] == cot["id"]
    assert "eval/synthetic_test_id/pass_at_1" in cot["metrics"]
    assert runs["tiny/sft/warm_start"]["metrics"], "the warm start logs its loss curve"
