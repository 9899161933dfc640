"""MLflow tracking writes params, metrics and artifacts that read back through MlflowClient."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from tarpo import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TARPO_TRACKING", raising=False)
    return tmp_path / "results"


def test_run_logs_params_metrics_and_artifacts(store, tmp_path):
    from mlflow.tracking import MlflowClient

    artifact = tmp_path / "curve.csv"
    artifact.write_text("step,loss\n0,2.5\n1,1.25\n")
    params = {"train": {"learning_rate": 1e-4, "lora": {"r": 32}}, "long": "x" * 2000, "mods": ["q", "k"]}
    with tracking.start_run("exp-a", "tiny/tarpo/train", params=params, tags={"method": "tarpo"}, results_dir=store) as run:
        run.log_metrics({"loss": 2.5, "reward_mean": 0.25}, step=0)
        run.log_metrics({"loss": 1.25, "reward_mean": 0.5}, step=1)
        run.log_artifact(artifact)
        run.log_text("hello", "notes/hello.txt")
        run_id = run.run_id

    assert (store / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "tiny/tarpo/train"
    assert client.get_experiment(got.info.experiment_id).name == "exp-a"
    assert got.data.params["train.learning_rate"] == "0.0001"
    assert got.data.params["train.lora.r"] == "32"
    assert got.data.params["mods"] == '["q", "k"]'
    assert len(got.data.params["long"]) == tracking.MAX_PARAM_CHARS
    assert got.data.tags["method"] == "tarpo"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 2.5), (1, 1.25)]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"curve.csv", "notes"} <= names
    local = client.download_artifacts(run_id, "curve.csv", str(tmp_path / "dl"))
    assert open(local).read().startswith("step,loss")
    # artifacts live under results/mlruns, not in the working directory
    assert any((store / "mlruns").rglob("curve.csv"))


def test_failed_block_marks_run_failed_and_reopen_appends(store):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError):
        with tracking.start_run("exp-b", "tiny/grpo/train", results_dir=store) as run:
            run_id = run.run_id
            run.log_metrics({"loss": 1.0}, step=0)
            raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=tracking.tracking_uri(store))
    assert client.get_run(run_id).info.status == "FAILED"

    with tracking.start_run("exp-b", "ignored", run_id=run_id, results_dir=store) as run:
        run.log_metrics({"pass@1": 0.5}, step=0)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.metrics["pass_at_1"] == 0.5  # '@' is not allowed in MLflow names
    assert got.data.metrics["loss"] == 1.0


def test_fluent_mlflow_calls_log_into_the_run(store):
    import mlflow
    from mlflow.tracking import MlflowClient

    with tracking.start_run("exp-e", tracking.run_name("tiny", "sft", "warm_start"), results_dir=store) as run:
        mlflow.log_metric("loss", 0.5, step=2)  # what a library integration would do
        mlflow.log_param("lib_param", "x")
    assert mlflow.active_run() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri exports it; start_run puts it back
    got = MlflowClient(tracking_uri=tracking.tracking_uri(store)).get_run(run.run_id)
    assert got.info.run_name == "tiny/sft/warm_start"
    assert tracking.run_name("tiny", "tarpo", "train", seed=2) == "tiny/tarpo/seed2/train"
    assert got.info.status == "FINISHED"
    assert got.data.metrics["loss"] == 0.5
    assert got.data.params["lib_param"] == "x"


def test_env_uri_overrides_default_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TARPO_TRACKING", raising=False)
    assert tracking.tracking_uri(tmp_path / "results") == uri
    with tracking.start_run("exp-c", "tiny/cot/eval", results_dir=tmp_path / "results") as run:
        run.log_metrics({"x": 1.0}, step=0)
    assert (tmp_path / "elsewhere.db").exists()
    assert not (tmp_path / "results" / "mlflow.db").exists()


def test_tracking_off_is_a_noop(tmp_path, monkeypatch):
    monkeypatch.setenv("TARPO_TRACKING", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking.start_run("exp-d", "tiny/tarpo/train", params={"a": 1}, results_dir=tmp_path / "results") as run:
        run.log_params({"b": 2})
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_artifact(tmp_path)
        run.log_text("t", "t.txt")
        assert run.run_id is None
    assert not (tmp_path / "results").exists()


def test_flatten_params():
    flat = tracking.flatten_params({"a": {"b": {"c": 1}, "d": []}, "e": None, "f": {}}, max_chars=10)
    assert flat == {"a.b.c": "1", "a.d": "[]", "e": "None", "f": "{}"}
    assert tracking.flatten_params({"s": "y" * 50}, max_chars=10)["s"] == "yyyyyyy..."


# ---------------------------------------------------------------- runs as the jobs make them


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking.tracking_uri(store))


def _runs(store, experiment):
    client = _client(store)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _evaluate_as_the_job_does(store, monkeypatch, method, benchmark, checkpoint=None, pass_at_1=0.5):
    """What tarpo.evaluate does after an evaluation: its `_log_to_mlflow`, with the checkpoint's run_id.txt."""
    from types import SimpleNamespace

    from tarpo import evaluate

    monkeypatch.chdir(store.parent)  # the job's default store is results/ under its working directory
    started = time.time()
    time.sleep(0.02)
    metrics = {"pass@1": pass_at_1, "mean_tokens": 12.0, "n_problems": 8, "ci95": {"pass@1": (0.25, 0.75)},
               "per_problem": [1, 0]}
    return evaluate._log_to_mlflow(SimpleNamespace(name="jobs", seed=0), backbone="tiny", method=method,
                                   benchmark=benchmark, checkpoint=checkpoint, metrics=metrics,
                                   params={"benchmark": benchmark}, artifacts=[], started=started)


def test_one_top_level_run_per_stage_evaluations_nested_and_training_time_kept(store, tmp_path, monkeypatch):
    assert store == tmp_path / "results"
    with tracking.start_run("jobs", tracking.run_name("tiny", "sft", "warm_start"), results_dir=store) as run:
        run.log_metrics({"loss": 2.0}, step=1)
    # the trainer: its run, then the checkpoint's run_id.txt
    with tracking.start_run("jobs", tracking.run_name("tiny", "tarpo", "train", seed=0),
                            tags={"backbone": "tiny", "method": "tarpo", "stage": "train"}, results_dir=store) as run:
        for step in range(3):
            run.log_metrics({"reward_mean": 0.1 * step}, step=step)
        train_id = run.run_id
    trained_ms = int(time.time() * 1000)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "run_id.txt").write_text(f"{train_id}\n")
    time.sleep(0.05)
    # its evaluation on two benchmarks, then the cot baseline's on the same two
    ids = {("tarpo", b): _evaluate_as_the_job_does(store, monkeypatch, "tarpo", b, checkpoint)
           for b in ("synthetic_test_id", "synthetic_test_ood")}
    ids.update({("cot", b): _evaluate_as_the_job_does(store, monkeypatch, "cot", b, pass_at_1=0.25)
                for b in ("synthetic_test_id", "synthetic_test_ood")})

    runs = _runs(store, "jobs")
    top = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    names = sorted(r.info.run_name for r in top)
    assert names == ["tiny/cot/seed0/evaluate", "tiny/sft/warm_start", "tiny/tarpo/seed0/train"], names
    by_name = {r.info.run_name: r for r in top}
    cot_id = by_name["tiny/cot/seed0/evaluate"].info.run_id
    children = {r.info.run_id: r for r in runs if tracking.PARENT_TAG in r.data.tags}
    assert set(children) == set(ids.values())
    for (method, benchmark), child_id in ids.items():
        child = children[child_id]
        assert child.data.tags[tracking.PARENT_TAG] == (train_id if method == "tarpo" else cot_id)
        assert child.info.run_name == f"tiny/{method}/seed0/evaluate/{benchmark}"
        assert child.data.tags["benchmark"] == benchmark and child.data.tags["stage"] == "evaluate"
        assert child.info.status == "FINISHED"
        assert trained_ms < child.info.start_time < child.info.end_time  # its own span, after the training
        assert child.data.metrics["pass_at_1"] == (0.5 if method == "tarpo" else 0.25)
        assert child.data.metrics["pass_at_1_ci95_low"] == 0.25
        assert child.data.params["benchmark"] == benchmark

    train = _client(store).get_run(train_id)
    assert train.info.status == "FINISHED"
    assert train.info.end_time <= trained_ms, "evaluations moved the training run's end time"
    # the headline numbers are on the parent too, for the runs table
    assert train.data.metrics["eval/synthetic_test_ood/pass_at_1"] == 0.5
    assert train.data.metrics["reward_mean"] == pytest.approx(0.2)
    cot = _client(store).get_run(cot_id)
    assert cot.data.metrics["eval/synthetic_test_id/pass_at_1"] == 0.25
    assert cot.info.status == "FINISHED"
    cot_children = [c for c in children.values() if c.data.tags[tracking.PARENT_TAG] == cot_id]
    assert cot.info.start_time <= min(c.info.start_time for c in cot_children)
    assert cot.info.end_time >= max(c.info.end_time for c in cot_children)  # it spans its evaluations

    # a re-run of one evaluation replaces the earlier child (deleted, not listed)
    again = _evaluate_as_the_job_does(store, monkeypatch, "cot", "synthetic_test_id", pass_at_1=0.75)
    runs = _runs(store, "jobs")
    assert len(runs) == len(top) + len(children)
    listed = {r.info.run_id for r in runs}
    assert again in listed and ids[("cot", "synthetic_test_id")] not in listed
    assert _client(store).get_run(cot_id).data.metrics["eval/synthetic_test_id/pass_at_1"] == 0.75


def test_evaluation_of_a_checkpoint_from_elsewhere_gets_its_own_parent(store, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "run_id.txt").write_text("0123456789abcdef0123456789abcdef\n")  # not in this store
    child = _evaluate_as_the_job_does(store, monkeypatch, "grpo", "synthetic_test_id", checkpoint)
    runs = {r.info.run_name: r for r in _runs(store, "jobs")}
    assert set(runs) == {"tiny/grpo/seed0/evaluate", "tiny/grpo/seed0/evaluate/synthetic_test_id"}
    assert runs["tiny/grpo/seed0/evaluate/synthetic_test_id"].info.run_id == child
    assert runs["tiny/grpo/seed0/evaluate/synthetic_test_id"].data.tags[tracking.PARENT_TAG] == \
        runs["tiny/grpo/seed0/evaluate"].info.run_id


_PARALLEL_EVAL = """
import sys
from tarpo import tracking
store, benchmark = sys.argv[1], sys.argv[2]
tracking._client(tracking.tracking_uri(store)).search_runs(["0"])  # imports and the store's connection done
print("ready", flush=True)
tracking.log_evaluation("jobs", backbone="tiny", method="cot", seed=0, benchmark=benchmark,
                        metrics={"pass@1": 0.5}, results_dir=store)
"""


@pytest.mark.slow
def test_parallel_evaluations_share_one_parent(store):
    """Evaluation jobs of one baseline start together; the store lock makes one of them create the
    parent run and the others find it. The test holds that lock first: no job may write meanwhile."""
    import subprocess
    import sys

    from filelock import FileLock

    with tracking.start_run("jobs", "tiny/sft/warm_start", results_dir=store):
        pass  # the store and the experiment exist, as after the upstream jobs
    benchmarks = ["b0", "b1", "b2"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with FileLock(store / "mlflow.db.lock", timeout=60):
        procs = [subprocess.Popen([sys.executable, "-c", _PARALLEL_EVAL, str(store), b], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for b in benchmarks]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)[0][-3000:]
        time.sleep(1.0)
        assert [r.info.run_name for r in _runs(store, "jobs")] == ["tiny/sft/warm_start"], "a job wrote unlocked"
        assert all(proc.poll() is None for proc in procs)
    for proc in procs:  # released: all of them go at once
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    runs = _runs(store, "jobs")
    parents = [r for r in runs if r.info.run_name == "tiny/cot/seed0/evaluate"]
    assert len(parents) == 1, [(r.info.run_id, r.info.start_time) for r in parents]
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parents[0].info.run_id]
    assert sorted(r.data.tags["benchmark"] for r in children) == benchmarks
    assert sorted(parents[0].data.metrics) == [f"eval/{b}/pass_at_1" for b in benchmarks]


def test_experiment_is_declared_a_model_training_experiment(store):
    with tracking.start_run("kind", "tiny/sft/warm_start", results_dir=store):
        pass
    client = _client(store)
    exp = client.get_experiment_by_name("kind")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # a store from before the tag: the next job declares it, a kind set by hand is kept
    client.delete_experiment_tag(exp.experiment_id, tracking.EXPERIMENT_KIND_TAG)
    other = client.create_experiment("hand-set", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.log_evaluation("kind", backbone="tiny", method="cot", seed=0, benchmark="b", metrics={"x": 1.0},
                            results_dir=store)
    tracking.log_evaluation("hand-set", backbone="tiny", method="cot", seed=0, benchmark="b", metrics={"x": 1.0},
                            results_dir=store)
    assert client.get_experiment(exp.experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(other).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"
    # the address that opens the runs table in MLflow 3's "Model training" mode
    assert tracking.ui_url(exp.experiment_id) == \
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def test_ui_url_parameter_is_the_one_the_installed_mlflow_ui_reads():
    """The runs-table address relies on the UI's `workflowType` URL parameter: an MLflow upgrade that
    renames it fails here (then check the address in a browser: tools/mlflow_screenshot.py)."""
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="replace") for p in js.glob("main.*.js"))
    assert 'get("workflowType")' in bundle
    assert f'MACHINE_LEARNING="{tracking.UI_WORKFLOW}"' in bundle
    assert '"/experiments/:experimentId/runs"' in "".join(p.read_text(errors="replace") for p in js.glob("*.js"))


def test_cli_prints_each_experiments_runs_table(store, capsys):
    assert tracking.main(["--results-dir", str(store)]) == 1  # no store yet
    with tracking.start_run("smoke", "tiny/sft/warm_start", results_dir=store):
        pass
    capsys.readouterr()
    assert tracking.main(["--results-dir", str(store), "--url", "http://127.0.0.1:5001"]) == 0
    out = capsys.readouterr().out
    exp_id = _client(store).get_experiment_by_name("smoke").experiment_id
    assert f"smoke: http://127.0.0.1:5001/#/experiments/{exp_id}/runs?workflowType=machine_learning" in out
    assert "Default" not in out  # MLflow's empty default experiment is left out


def test_retry_waits_out_a_locked_database():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking._retry(flaky) == "ok" and len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.15  # exponential back-off

    def broken():
        calls.append(None)
        raise ValueError("no such table")

    calls.clear()
    with pytest.raises(ValueError):
        tracking._retry(broken)
    assert len(calls) == 1  # only a lock is worth waiting for

    def always_locked():
        calls.append(None)
        raise RuntimeError("database is locked")

    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):
        tracking._retry(always_locked, attempts=2)
    assert len(calls) == 2


# ------------------------------------------------------------------ an unusable store


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_damaged_store_is_set_aside_the_job_goes_on_and_replay_fills_a_fresh_store(store, tmp_path, caplog):
    from tarpo.cli import main

    store.mkdir(parents=True)
    db = store / "mlflow.db"
    db.write_bytes(b"not a database " * 100)  # what sqlite calls "file is not a database"
    samples = tmp_path / "synthetic_test_id.html"
    samples.write_text("<p>samples</p>")
    with caplog.at_level(logging.WARNING, logger="tarpo.tracking"):
        with tracking.start_run("exp-d", "tiny/tarpo/seed0/train", params={"train": {"lr": 1e-4}},
                                tags={"stage": "train"}, results_dir=store) as run:
            run.log_metrics({"loss": 2.5}, step=1)
            run.log_metrics({"loss": 1.5}, step=2)
            (tmp_path / "policy.json").write_text("{}")  # the job's output
        child = tracking.log_evaluation("exp-d", backbone="tiny", method="cot", seed=0, benchmark="synthetic_test_id",
                                        metrics={"pass_at_1": 0.5}, artifacts=[samples], results_dir=store)
    assert run.run_id is None and child is None and (tmp_path / "policy.json").exists()
    [aside] = store.glob("mlflow.db.damaged-*")
    assert aside.read_bytes().startswith(b"not a database") and not db.exists()  # history kept, never overwritten
    assert _warnings(caplog) == [  # once, for both records
        f"MLflow store {db} is unusable (not an SQLite database (damaged); set aside as {aside}); this job writes "
        f"its outputs as usual and saves its tracking records to {store / tracking.PENDING_FILE}: put a good copy "
        f"back as {db} or leave it out for a fresh store, then run `tarpo track --replay --results {store}`"]
    pending = store / tracking.PENDING_FILE
    assert [json.loads(line)["kind"] for line in pending.read_text().splitlines()] == ["run", "evaluation"]

    assert main(["track", "--replay", "--results", str(store)]) == 0
    assert not pending.exists()
    runs = {r.info.run_name: r for r in _runs(store, "exp-d")}
    train = runs["tiny/tarpo/seed0/train"]
    assert train.info.status == "FINISHED" and train.data.params["train.lr"] == "0.0001"
    assert [m.value for m in _client(store).get_metric_history(train.info.run_id, "loss")] == [2.5, 1.5]
    evaluation = runs["tiny/cot/seed0/evaluate/synthetic_test_id"]
    assert evaluation.data.metrics["pass_at_1"] == 0.5
    assert [a.path for a in _client(store).list_artifacts(evaluation.info.run_id)] == ["synthetic_test_id.html"]
    assert main(["track", "--replay", "--results", str(store)]) == 0  # nothing left: a no-op


def test_an_empty_store_is_said_so_and_used(store, caplog):
    store.mkdir(parents=True)
    (store / "mlflow.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="tarpo.tracking"):
        with tracking.start_run("exp-e", "tiny/grpo/seed0/train", results_dir=store) as run:
            run.log_metrics({"loss": 1.0}, step=1)
    assert run.run_id is not None and not (store / tracking.PENDING_FILE).exists()
    assert _warnings(caplog) == [f"MLflow store {store / 'mlflow.db'} is empty (0 bytes): it holds no runs, so MLflow "
                                 "starts a fresh store in it; if it held runs before, restore it from a backup"]


def test_a_store_that_fails_mid_run_keeps_the_rest_for_replay(store, caplog, monkeypatch):
    from mlflow.tracking import MlflowClient

    with caplog.at_level(logging.WARNING, logger="tarpo.tracking"):
        with tracking.start_run("exp-f", "tiny/hrpo/seed0/train", results_dir=store) as run:
            run.log_metrics({"loss": 3.0}, step=1)

            def full(*args, **kwargs):
                raise OSError(28, "database or disk is full")

            monkeypatch.setattr(MlflowClient, "log_batch", full)
            run.log_metrics({"loss": 2.0}, step=2)
            monkeypatch.undo()
    assert len(_warnings(caplog)) == 1 and "database or disk is full" in _warnings(caplog)[0]
    assert tracking.replay_pending(store) == (1, 0)
    history = _client(store).get_metric_history(run.run_id, "loss")  # the same run, now complete
    assert [m.value for m in history] == [3.0, 2.0]


def test_an_evaluation_finds_a_replayed_training_run_by_its_checkpoint_fingerprint(store, tmp_path, caplog, monkeypatch):
    """A training run logged while the store was down gets its id only at replay, after the checkpoint (and its
    empty run_id.txt) was written: the evaluation finds it by the fingerprint tag and nests under it."""
    store.mkdir(parents=True)
    (store / "mlflow.db").write_bytes(b"not a database " * 100)
    with caplog.at_level(logging.WARNING, logger="tarpo.tracking"):
        with tracking.start_run("jobs", "tiny/tarpo/seed0/train", tags={"stage": "train", "fingerprint": "abc123"},
                                results_dir=store) as run:
            run.log_metrics({"loss": 1.0}, step=1)
    assert run.run_id is None  # what the trainer writes into run_id.txt: nothing
    assert tracking.replay_pending(store) == (1, 0)
    [train] = _runs(store, "jobs")
    # another training run of the same name (e.g. an older configuration) is not taken for it
    with tracking.start_run("jobs", "tiny/tarpo/seed0/train", tags={"stage": "train", "fingerprint": "zzz999"},
                            results_dir=store):
        pass
    # the checkpoint as the trainer wrote it: run_id.txt empty, its run.json naming the fingerprint
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "run_id.txt").write_text("\n")
    (checkpoint / "run.json").write_text(json.dumps({"fingerprint": "abc123", "seed": 0}))
    child = _evaluate_as_the_job_does(store, monkeypatch, "tarpo", "synthetic_test_id", checkpoint, pass_at_1=0.75)
    client = _client(store)
    assert client.get_run(child).data.tags[tracking.PARENT_TAG] == train.info.run_id
    assert client.get_run(train.info.run_id).data.metrics["eval/synthetic_test_id/pass_at_1"] == 0.75
    # no fingerprint match: the evaluation gets its own `.../evaluate` parent, as before
    other = tracking.log_evaluation("jobs", backbone="tiny", method="tarpo", seed=0, benchmark="synthetic_test_ood",
                                    metrics={"pass_at_1": 0.5}, training_fingerprint="nope", results_dir=store)
    parent = client.get_run(client.get_run(other).data.tags[tracking.PARENT_TAG])
    assert parent.info.run_name == "tiny/tarpo/seed0/evaluate"
