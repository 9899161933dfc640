"""MLflow tracking writes params, metrics and artifacts that read back through MlflowClient."""

from __future__ import annotations

import os

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
