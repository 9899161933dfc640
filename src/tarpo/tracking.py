"""MLflow tracking: one run per job, named `{backbone}/{method}/{stage}`
(per-seed stages: `{backbone}/{method}/seed{seed}/{stage}`, `run_name`).

Runs are grouped into one experiment per config (its `name`) and named so a
reader finds them:

    {backbone}/sft/warm_start   the embedded backbone's supervised warm start (tarpo.backbone)
    {backbone}/{method}/seed{seed}/train   RL training with one seed, step metrics (tarpo.trainer);
                                the method's evaluations attach `eval/{benchmark}/...` metrics
                                to this same run (its id is in the checkpoint's run_id.txt)
    {backbone}/cot/seed{seed}/evaluate     an untrained baseline's evaluations with one sampling
                                seed (tarpo.evaluate)

The default store is a local SQLite database under the results directory
(`sqlite:///results/mlflow.db`, artifacts in `results/mlruns/`), so runs sit
beside the outputs they describe and need no server. `MLFLOW_TRACKING_URI`
points elsewhere (a server, another database); `TARPO_TRACKING=off` turns
tracking into a no-op, for tests and for processes that must not write a store.

    with start_run(cfg.name, "tiny/tarpo/train", params=to_dict(train_cfg)) as run:
        run.log_metrics({"reward_mean": 0.4}, step=3)
        run.log_artifact(checkpoint / "samples.html")

Browse the default store with
`mlflow ui --backend-store-uri sqlite:///results/mlflow.db`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

RESULTS_DIR = Path("results")
MAX_PARAM_CHARS = 500  # longer values are cut (MLflow's own limit is 6000)
_BATCH = 100  # MLflow accepts at most 100 params/tags and 1000 metrics per batch call
_T = TypeVar("_T")


def tracking_enabled() -> bool:
    return os.environ.get("TARPO_TRACKING", "on").strip().lower() not in {"off", "0", "false", "no"}


def tracking_uri(results_dir: str | Path = RESULTS_DIR) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the SQLite store under `results_dir`."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def metric_key(name: str) -> str:
    """A name MLflow accepts: '@' reads as '_at_' (pass@1 -> pass_at_1), other odd characters as '_'."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def flatten_params(params: Mapping[str, Any], prefix: str = "", max_chars: int = MAX_PARAM_CHARS) -> dict[str, str]:
    """Nested mappings become dotted keys; every value a string of at most `max_chars` characters."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{metric_key(str(key))}" if prefix else metric_key(str(key))
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name, max_chars))
            continue
        if isinstance(value, (list, tuple, dict)):
            text = json.dumps(value, default=str)
        else:
            text = str(value)
        if len(text) > max_chars:
            text = text[: max_chars - 3] + "..."
        out[name] = text
    return out


def _quiet_logs() -> None:
    # MLflow creates the SQLite schema through alembic, which logs every migration at INFO.
    for name in ("alembic", "alembic.runtime.migration", "mlflow", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _retry(fn: Callable[[], _T], attempts: int = 6) -> _T:
    """Retry a store call that failed because another job held the SQLite write lock."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # MLflow wraps sqlite's OperationalError in its own exceptions
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first-time schema creation / experiment creation between jobs sharing one SQLite file."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Tracker:
    """Logs into one MLflow run. Obtain it from `start_run`."""

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id: str | None = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = list(flatten_params(params).items())
        for i in range(0, len(flat), _BATCH):
            chunk = [Param(k, v) for k, v in flat[i : i + _BATCH]]
            _retry(lambda: self._client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            if value is None:
                continue
            value = float(value)
            rows.append(Metric(metric_key(key), value if math.isfinite(value) else float("nan"), now, int(step or 0)))
        for i in range(0, len(rows), 1000):
            chunk = rows[i : i + 1000]
            _retry(lambda: self._client.log_batch(self.run_id, metrics=chunk))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's files) into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """Store `text` as the artifact file `name` (e.g. 'samples.md')."""
        self._client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            _retry(lambda: self._client.set_tag(self.run_id, metric_key(str(key)), str(value)))


class NullTracker(Tracker):
    """What `start_run` yields when tracking is off: every call does nothing."""

    def __init__(self) -> None:
        self._client = None
        self.run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


def _experiment_id(client: Any, name: str, uri: str, results_dir: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        # Default store: artifacts beside the database, not in ./mlruns of whatever the cwd is.
        root = (results_dir / "mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        artifact_location = root.as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        exp = client.get_experiment_by_name(name)  # created by a concurrent job on another host
        if exp is None:
            raise
        return exp.experiment_id


def run_name(backbone: str, method: str, stage: str, seed: int | None = None) -> str:
    """The run name convention: `{backbone}/{method}/{stage}`, e.g. `tiny/sft/warm_start`, and
    `{backbone}/{method}/seed{seed}/{stage}` for a per-seed run, e.g. `tiny/tarpo/seed0/train`."""
    return f"{backbone}/{method}/{stage}" if seed is None else f"{backbone}/{method}/seed{seed}/{stage}"


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    results_dir: str | Path = RESULTS_DIR,
) -> Iterator[Tracker]:
    """Open an MLflow run in `experiment` (created if missing) and yield its `Tracker`.

    The run ends FINISHED when the block succeeds, FAILED when it raises, and
    KILLED on Ctrl-C or SystemExit (a preempted job exiting to be resumed).
    Pass `run_id` to reopen an existing run (a resumed training job, or
    evaluation metrics attached to the run that trained the checkpoint);
    `run_name` is then ignored. Inside the block the run is also MLflow's
    active run (unless one was already active), so library integrations that
    call `mlflow.log_*` themselves log into it too. Prefer the yielded
    tracker in project code: with TARPO_TRACKING=off there is no run, and
    a bare `mlflow.log_*` call would start one in ./mlflow.db.
    """
    if not tracking_enabled():
        yield NullTracker()
        return
    if not isinstance(experiment, str):
        raise TypeError(f"start_run: experiment must be the experiment name (cfg.name), got {type(experiment).__name__}")
    _quiet_logs()
    import mlflow
    from mlflow.tracking import MlflowClient

    _quiet_logs()  # importing mlflow configures its loggers
    uri = tracking_uri(results_dir)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp_id = _experiment_id(client, experiment, uri, Path(results_dir))
            run_tags = {metric_key(str(k)): str(v) for k, v in (tags or {}).items()}
            run_id = _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=run_tags)).info.run_id
        else:
            _retry(lambda: client.update_run(run_id, status="RUNNING"))
            if tags:
                Tracker(client, run_id).set_tags(tags)
    tracker = Tracker(client, run_id)
    if params:
        tracker.log_params(params)

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; both are put back afterwards
    # so that the next start_run in this process still picks its own store.
    from mlflow.tracking._tracking_service import utils as _mlflow_uri

    previous_uri = getattr(_mlflow_uri, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    activated = mlflow.active_run() is None
    if activated:
        mlflow.set_tracking_uri(uri)
        mlflow.start_run(run_id=run_id)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a preempted job exiting to be resumed
        status = "KILLED"
        raise
    finally:
        if activated:
            _retry(lambda: mlflow.end_run(status))
            mlflow.set_tracking_uri(previous_uri)
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env
        else:
            _retry(lambda: client.set_terminated(run_id, status))
