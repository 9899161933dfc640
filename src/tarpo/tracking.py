"""MLflow tracking: one top-level run per job kind, named `{backbone}/{method}/{stage}`
(per-seed stages: `{backbone}/{method}/seed{seed}/{stage}`, `run_name`).

Runs are grouped into one experiment per config (its `name`) and named so a
reader finds them:

    {backbone}/sft/warm_start   the embedded backbone's supervised warm start (tarpo.backbone)
    {backbone}/{method}/seed{seed}/train   RL training with one seed, step metrics (tarpo.trainer);
                                its id is in the checkpoint's run_id.txt
      {backbone}/{method}/seed{seed}/evaluate/{benchmark}   one nested run per evaluated
                                benchmark of that checkpoint (tarpo.evaluate, `log_evaluation`)
    {backbone}/cot/seed{seed}/evaluate     an untrained baseline's evaluations with one sampling
                                seed: a parent run ...
      {backbone}/cot/seed{seed}/evaluate/{benchmark}   ... with one nested run per benchmark

An evaluation is its own (child) run, with its own start and end time, so the
training run's duration stays the training's. Its headline metrics are also
copied onto the parent as `eval/{benchmark}/{metric}` (a metric write leaves a
run's status and end time alone), so the runs table compares methods
directly. Evaluations run in parallel jobs: the parent of an untrained
baseline is found by name and tags (or created) under a file lock, and a
store call that hits SQLite's write lock is retried.

The default store is a local SQLite database in the results directory
(`sqlite:///results/mlflow.db`, artifacts in `results/mlruns/`), beside the
configs' results roots (`results/{name}/`, tarpo.layout) and shared by them:
one store, one experiment per config, so `mlflow ui` shows every config and
two configs may run at once (their jobs' writes wait for SQLite's lock, as
parallel jobs of one run do). It needs no server. `MLFLOW_TRACKING_URI`
points elsewhere (a server, another database); `TARPO_TRACKING=off` turns
tracking into a no-op, for tests and for processes that must not write a store.

    with start_run(cfg.name, "tiny/tarpo/train", params=to_dict(train_cfg)) as run:
        run.log_metrics({"reward_mean": 0.4}, step=3)
        run.log_artifact(checkpoint / "samples.html")

Tracking is never on the critical path of a result. A store that cannot be
opened or written (a damaged SQLite file is first set aside as
`mlflow.db.damaged-{time}`, never recreated over) gives one warning per job;
the job goes on, and what it would have logged is appended to
`results/mlflow-pending.jsonl`, which `replay_pending` (`tarpo track
--replay`) logs into the store later.

Browse the default store with
`mlflow ui --backend-store-uri sqlite:///results/mlflow.db`. MLflow 3 opens in
its GenAI mode (an experiment lands on Overview/Traces); `ui_url` gives the
address of an experiment's runs table in the "Model training" mode, and
`python -m tarpo.tracking` prints it for every experiment of the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tarpo import layout

RESULTS_DIR = Path(layout.RESULTS_DIR)  # the store of every config, beside their roots
MAX_PARAM_CHARS = 500  # longer values are cut (MLflow's own limit is 6000)
_BATCH = 100  # MLflow accepts at most 100 params/tags and 1000 metrics per batch call
_T = TypeVar("_T")

# The experiment tag MLflow 3's UI reads for an experiment's type. 3.17 decides its mode from the
# "GenAI | Model training" switch (the `workflowType` URL parameter, else the browser's last choice)
# and ignores the tag, but it is the experiment's declared kind: set on every experiment created here.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
UI_WORKFLOW = "machine_learning"  # `workflowType` value of the UI's "Model training" mode
LOCK_TIMEOUT_S = 300
RETRY_ATTEMPTS = 6
PENDING_FILE = "mlflow-pending.jsonl"  # under the results directory: records that missed the store
SQLITE_HEADER = b"SQLite format 3\x00"

log = logging.getLogger(__name__)
_warned: set[str] = set()  # stores this process has warned about (once each)


def tracking_enabled() -> bool:
    return os.environ.get("TARPO_TRACKING", "on").strip().lower() not in {"off", "0", "false", "no"}


def tracking_uri(results_dir: str | Path = RESULTS_DIR) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the SQLite store under `results_dir`."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def ui_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The address of an experiment's runs table in `mlflow ui` (MLflow 3: in its "Model training" mode)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={UI_WORKFLOW}"


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


def _is_locked(err: BaseException) -> bool:
    # MLflow wraps sqlite's OperationalError ("database is locked") in its own exceptions
    return "locked" in str(err).lower()


def _retry(fn: Callable[[], _T], attempts: int = RETRY_ATTEMPTS) -> _T:
    """Call `fn`, again after 0.2, 0.4, 0.8, ... s while it fails because another job holds SQLite's write lock."""
    import tenacity

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_locked),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, min=0.2, max=10),
        reraise=True,
    )
    return retrying(fn)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise schema, experiment and parent-run creation between jobs sharing one SQLite file
    (`<db>.lock` beside it). Other stores (a server) serialise nothing here."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock"), timeout=LOCK_TIMEOUT_S):
        yield


class StoreError(RuntimeError):
    """The tracking store is unusable (e.g. a damaged SQLite file, now set aside)."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_store(uri: str) -> None:
    """Before MLflow opens an SQLite store: a file that is not SQLite (damaged) is set aside as
    `mlflow.db.damaged-{time}` (never recreated over) and StoreError raised; an empty one is said so
    (it holds no runs: MLflow creates its tables in it). Call it under the store lock."""
    if f"failed:{_sqlite_path(uri) or uri}" in _warned:  # a job's records all go to one place
        raise StoreError("it failed earlier in this job")
    db = _sqlite_path(uri)
    if db is None or not db.is_file():
        return
    if db.stat().st_size == 0:
        if str(db) not in _warned:
            _warned.add(str(db))
            log.warning(f"MLflow store {db} is empty (0 bytes): it holds no runs, so MLflow starts a fresh store "
                        f"in it; if it held runs before, restore it from a backup")
        return
    with open(db, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header == SQLITE_HEADER:
        return
    aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(db, aside)
    for suffix in ("-wal", "-shm", "-journal"):  # SQLite's side files belong to the damaged database
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    raise StoreError(f"not an SQLite database (damaged); set aside as {aside}")


def store_failed(uri: str, results_dir: str | Path, err: BaseException) -> None:
    """Warn, once per store and process, that the store is unusable and where its records go instead."""
    store = _sqlite_path(uri) or uri
    if f"failed:{store}" in _warned:
        return
    _warned.add(f"failed:{store}")
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    fix = (f"put a good copy back as {store} or leave it out for a fresh store" if "set aside" in reason
           else "repair or move the store (or leave it out for a fresh one)")
    log.warning(f"MLflow store {store} is unusable ({reason}); this job writes its outputs as usual and saves its "
                f"tracking records to {Path(results_dir) / PENDING_FILE}: {fix}, then run "
                f"`tarpo track --replay --results {results_dir}`")


def save_pending(results_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record that missed the store to `results_dir/mlflow-pending.jsonl` (never raises)."""
    from filelock import FileLock

    path = Path(results_dir) / PENDING_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S), open(path, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except Exception as err:  # noqa: BLE001 - the outputs matter more than their tracking
        log.warning(f"could not save the tracking record of {record.get('run_name') or record.get('benchmark')} "
                    f"to {path} either ({err}); it is lost, the job's outputs are not")


def _replay_run(client: Any, rec: Mapping[str, Any], results_dir: Path) -> str:
    """Log a pending run record into the store: into its run if the store has it, else into a new run."""
    from mlflow.entities import Metric

    run_id = rec.get("run_id")
    if run_id:
        try:
            _retry(lambda: client.get_run(run_id))
        except Exception:  # noqa: BLE001 - e.g. the store it was opened in was set aside
            run_id = None
    if not run_id:
        exp_id = _experiment_id(client, rec["experiment"], results_dir)
        run_id = _retry(lambda: client.create_run(exp_id, run_name=rec["run_name"], tags=rec["tags"],
                                                  start_time=rec.get("start_ms"))).info.run_id
    elif rec["tags"]:
        Tracker(client, run_id).set_tags(rec["tags"])
    tracker = Tracker(client, run_id)
    if rec["params"]:
        tracker.log_params(rec["params"])
    rows = [Metric(key, value, stamp, step) for key, value, stamp, step in rec["metrics"]]
    for i in range(0, len(rows), 1000):
        chunk = rows[i : i + 1000]
        _retry(lambda: client.log_batch(run_id, metrics=chunk))
    for path, artifact_path in rec["artifacts"]:
        if Path(path).exists():
            tracker.log_artifact(path, artifact_path)
        else:
            log.warning(f"replay: artifact {path} of {rec['run_name']} is gone; replayed without it")
    for text, name in rec["texts"]:
        tracker.log_text(text, name)
    if rec.get("status"):
        _retry(lambda: client.set_terminated(run_id, rec["status"], end_time=rec.get("end_ms")))
    return run_id


def replay_pending(results_dir: str | Path = RESULTS_DIR) -> tuple[int, int]:
    """Log the records in `results_dir/mlflow-pending.jsonl` into the store (`tarpo track --replay`);
    returns (replayed, left). Records that fail again stay in the file, the others leave it."""
    from filelock import FileLock

    from tarpo.io import atomic_write_text, read_jsonl

    results_dir = Path(results_dir)
    path = results_dir / PENDING_FILE
    if not path.exists():
        return 0, 0
    uri = tracking_uri(results_dir)
    _warned.discard(f"failed:{_sqlite_path(uri) or uri}")  # a replay tries the store afresh
    with FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S):
        left = []
        records = read_jsonl(path)
        for rec in records:
            try:
                if rec["kind"] == "run":
                    with _store_lock(uri):
                        check_store(uri)
                        client = _client(uri)
                        run_id = _replay_run(client, rec, results_dir)
                    log.info(f"replayed {rec['run_name']} into {uri} (run {run_id})")
                else:
                    fields = {k: v for k, v in rec.items() if k != "kind"}
                    run_id = _log_evaluation(**fields, results_dir=results_dir)
                    log.info(f"replayed the evaluation {rec['backbone']}/{rec['method']}/seed{rec['seed']} on "
                             f"{rec['benchmark']} into {uri} (run {run_id})")
            except Exception as err:  # noqa: BLE001 - kept for the next replay
                log.warning(f"replay: {rec.get('run_name') or rec.get('benchmark')} did not reach {uri} ({err}); "
                            f"kept in {path}")
                left.append(rec)
        if left:
            atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in left))
        else:
            path.unlink()
    return len(records) - len(left), len(left)


class Tracker:
    """Logs into one MLflow run. Obtain it from `start_run`.

    Once the store fails (`pending` is set), every later call goes into the run's pending record instead,
    saved to `results/mlflow-pending.jsonl` when the run ends (see `replay_pending`). A tracker made
    without `fallback` (replay) lets a store error raise.
    """

    def __init__(self, client: Any, run_id: str | None, fallback: dict[str, Any] | None = None) -> None:
        self._client = client
        self.run_id: str | None = run_id
        self._fallback = fallback  # what a pending record needs: experiment, run_name, tags, uri, results_dir
        self.pending: dict[str, Any] | None = None

    def _store(self, call: Callable[[], Any], record: Callable[[dict[str, Any]], None]) -> None:
        """`call` the store; if it fails (or failed before), `record` what it would have written."""
        if self.pending is None:
            try:
                call()
                return
            except Exception as err:  # noqa: BLE001 - tracking is never on the critical path of a result
                if self._fallback is None:
                    raise
                self.fail(err)
        record(self.pending)

    def fail(self, err: BaseException) -> None:
        """Switch to the pending record (warning once that the store is unusable)."""
        fb = self._fallback or {}
        store_failed(fb.get("uri", "?"), fb.get("results_dir", RESULTS_DIR), err)
        self.pending = {"kind": "run", "experiment": fb.get("experiment"), "run_name": fb.get("run_name"),
                        "tags": dict(fb.get("tags") or {}), "run_id": self.run_id,
                        "start_ms": fb.get("start_ms"), "params": {}, "metrics": [], "artifacts": [], "texts": []}

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = list(flatten_params(params).items())

        def call() -> None:
            for i in range(0, len(flat), _BATCH):
                chunk = [Param(k, v) for k, v in flat[i : i + _BATCH]]
                _retry(lambda: self._client.log_batch(self.run_id, params=chunk))

        self._store(call, lambda rec: rec["params"].update(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            if value is None:
                continue
            value = float(value)
            rows.append(Metric(metric_key(key), value if math.isfinite(value) else float("nan"), now, int(step or 0)))

        def call() -> None:
            for i in range(0, len(rows), 1000):
                chunk = rows[i : i + 1000]
                _retry(lambda: self._client.log_batch(self.run_id, metrics=chunk))

        self._store(call, lambda rec: rec["metrics"].extend([m.key, m.value, m.timestamp, m.step] for m in rows))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's files) into the run's artifacts."""
        path = Path(path)

        def call() -> None:
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

        self._store(call, lambda rec: rec["artifacts"].append([str(path.resolve()), artifact_path]))

    def log_text(self, text: str, name: str) -> None:
        """Store `text` as the artifact file `name` (e.g. 'samples.md')."""
        self._store(lambda: self._client.log_text(self.run_id, text, name), lambda rec: rec["texts"].append([text, name]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        def call() -> None:
            for key, value in tags.items():
                _retry(lambda: self._client.set_tag(self.run_id, metric_key(str(key)), str(value)))

        self._store(call, lambda rec: rec["tags"].update({metric_key(str(k)): str(v) for k, v in tags.items()}))


class NullTracker(Tracker):
    """What `start_run` yields when tracking is off: every call does nothing."""

    def __init__(self) -> None:
        self._client = None
        self.run_id = None
        self._fallback = None
        self.pending = None

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


def _experiment_id(client: Any, name: str, results_dir: Path) -> str:
    """The id of experiment `name`, created (tagged as a model-training experiment) if missing."""
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:  # a store from before the tag: declare it once
            _retry(lambda: client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND))
        return exp.experiment_id
    artifact_location = None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        # Default store: artifacts beside the database, not in ./mlruns of whatever the cwd is.
        root = (results_dir / "mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        artifact_location = root.as_uri()
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=artifact_location,
                                                       tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
    except Exception:
        exp = client.get_experiment_by_name(name)  # created by a concurrent job on another host
        if exp is None:
            raise
        return exp.experiment_id


def run_name(backbone: str, method: str, stage: str, seed: int | None = None) -> str:
    """The run name convention: `{backbone}/{method}/{stage}`, e.g. `tiny/sft/warm_start`, and
    `{backbone}/{method}/seed{seed}/{stage}` for a per-seed run, e.g. `tiny/tarpo/seed0/train`."""
    return f"{backbone}/{method}/{stage}" if seed is None else f"{backbone}/{method}/seed{seed}/{stage}"


def _client(uri: str) -> Any:
    _quiet_logs()
    from mlflow.tracking import MlflowClient

    _quiet_logs()  # importing mlflow configures its loggers
    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _running(tracker: Tracker, uri: str) -> Iterator[Tracker]:
    """Yield the run's tracker with the run as MLflow's active run (unless one is); end it FINISHED,
    FAILED (the block raised) or KILLED (Ctrl-C, SystemExit) with the current time as its end time.
    A tracker whose store failed saves its pending record instead."""
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; both are put back afterwards
    # so that the next start_run in this process still picks its own store.
    from mlflow.tracking._tracking_service import utils as _mlflow_uri

    previous_uri = getattr(_mlflow_uri, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    activated = False

    def restore_uri() -> None:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env

    if tracker.pending is None and mlflow.active_run() is None:
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.start_run(run_id=tracker.run_id)
            activated = True
        except Exception as err:  # noqa: BLE001 - the store broke between creating the run and starting it
            restore_uri()
            if tracker._fallback is None:
                raise
            tracker.fail(err)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a preempted job exiting to be resumed
        status = "KILLED"
        raise
    finally:
        if tracker.pending is None:
            try:
                if activated:
                    _retry(lambda: mlflow.end_run(status))
                else:
                    _retry(lambda: tracker._client.set_terminated(tracker.run_id, status))
            except Exception as err:  # noqa: BLE001
                if tracker._fallback is None:
                    raise
                tracker.fail(err)
        if activated:
            restore_uri()
        if tracker.pending is not None:
            save_pending(tracker._fallback["results_dir"],
                         {**tracker.pending, "status": status, "end_ms": int(time.time() * 1000)})


def _open_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, Any] | None, run_id: str | None,
              results_dir: Path) -> tuple[Any, str]:
    """The store's client and the id of the run created (or reopened, `run_id`) in `experiment`."""
    with _store_lock(uri):
        check_store(uri)
        client = _client(uri)
        if run_id is None:
            exp_id = _experiment_id(client, experiment, results_dir)
            run_tags = {metric_key(str(k)): str(v) for k, v in (tags or {}).items()}
            run_id = _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=run_tags)).info.run_id
        else:
            _retry(lambda: client.update_run(run_id, status="RUNNING"))
            if tags:
                Tracker(client, run_id).set_tags(tags)
    return client, run_id


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
    Pass `run_id` to reopen an existing run (a resumed training job);
    `run_name` is then ignored. Evaluations do not reopen the training run
    (that would move its end time): they go through `log_evaluation`.
    Inside the block the run is also MLflow's active run (unless one was
    already active), so library integrations that call `mlflow.log_*`
    themselves log into it too. Prefer the yielded tracker in project code:
    with TARPO_TRACKING=off there is no run, and a bare `mlflow.log_*` call
    would start one in ./mlflow.db.

    A store that cannot be opened or written stops nothing: one warning, the
    tracker's `run_id` is None (or the reopened one), and what the run logs is
    saved for `tarpo track --replay` (`save_pending`).
    """
    if not tracking_enabled():
        yield NullTracker()
        return
    if not isinstance(experiment, str):
        raise TypeError(f"start_run: experiment must be the experiment name (cfg.name), got {type(experiment).__name__}")
    uri = tracking_uri(results_dir)
    fallback = {"experiment": experiment, "run_name": run_name, "tags": dict(tags or {}), "uri": uri,
                "results_dir": str(results_dir), "start_ms": int(time.time() * 1000)}
    try:
        client, run_id = _open_run(uri, experiment, run_name, tags, run_id, Path(results_dir))
        tracker = Tracker(client, run_id, fallback)
    except Exception as err:  # noqa: BLE001 - tracking is never on the critical path of a result
        tracker = Tracker(None, run_id, fallback)
        tracker.fail(err)
    if params:
        tracker.log_params(params)
    with _running(tracker, uri) as tracker:
        yield tracker


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _evaluate_parent(client: Any, exp_id: str, name: str, tags: Mapping[str, str], start_ms: int) -> Any:
    """The top-level `.../evaluate` run of `name` in the experiment, created if missing (call under the store lock)."""
    found = _retry(lambda: client.search_runs(
        [exp_id], filter_string=f"attributes.run_name = {_quote(name)} and tags.stage = 'evaluate'",
        order_by=["attributes.start_time ASC"], max_results=100))
    for run in found:  # not a child, nor a per-benchmark run of an older store
        if PARENT_TAG not in run.data.tags and "benchmark" not in run.data.tags:
            return run
    return _retry(lambda: client.create_run(exp_id, start_time=start_ms, run_name=name,
                                            tags={**tags, "stage": "evaluate"}))


def log_evaluation(
    experiment: str,
    *,
    backbone: str,
    method: str,
    seed: int,
    benchmark: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    artifacts: Iterable[str | Path] = (),
    training_run_id: str | None = None,
    training_fingerprint: str | None = None,
    started: float | None = None,
    results_dir: str | Path = RESULTS_DIR,
) -> str | None:
    """Log one benchmark evaluation as a nested run; returns its id (None with tracking off).

    The child run `{backbone}/{method}/seed{seed}/evaluate/{benchmark}` starts
    at `started` (epoch seconds; now if None), ends now, and holds `metrics`
    (plain keys: `pass_at_1`, ...), `params` and the `artifacts` files. Its
    parent is the training run `training_run_id` (the checkpoint's
    run_id.txt) when the store has it, else the training run tagged with the checkpoint's
    `training_fingerprint` (a run `tarpo track --replay` created after the
    checkpoint was written, so its run_id.txt is empty); otherwise (an untrained baseline such
    as cot, or a checkpoint trained with tracking off or into another store)
    the top-level run `{backbone}/{method}/seed{seed}/evaluate` of
    `experiment`, found by name and tags or created, whose span grows to
    cover its evaluations. The parent also gets `eval/{benchmark}/{metric}`:
    a metric write, which leaves a training run's status and end time alone.
    An earlier child of the same parent and benchmark (a re-run) is deleted
    (MLflow keeps it under the runs table's "State: Deleted").

    Call it once the evaluation's files are written. A store that cannot be
    opened or written stops nothing: one warning, None, and the record is
    saved for `tarpo track --replay` (`save_pending`).
    """
    if not tracking_enabled():
        return None
    record = {"kind": "evaluation", "experiment": experiment, "backbone": backbone, "method": method, "seed": seed,
              "benchmark": benchmark, "metrics": dict(metrics), "params": dict(params or {}),
              "artifacts": [str(Path(a).resolve()) for a in artifacts], "training_run_id": training_run_id,
              "training_fingerprint": training_fingerprint, "started": time.time() if started is None else started}
    try:
        return _log_evaluation(**{k: v for k, v in record.items() if k != "kind"}, results_dir=results_dir)
    except Exception as err:  # noqa: BLE001 - tracking is never on the critical path of a result
        store_failed(tracking_uri(results_dir), results_dir, err)
        save_pending(results_dir, record)
        return None


def _log_evaluation(
    experiment: str,
    *,
    backbone: str,
    method: str,
    seed: int,
    benchmark: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    artifacts: Iterable[str | Path] = (),
    training_run_id: str | None = None,
    training_fingerprint: str | None = None,
    started: float | None = None,
    results_dir: str | Path = RESULTS_DIR,
) -> str | None:
    """`log_evaluation` without its fallback: a store error raises (replay)."""
    uri = tracking_uri(results_dir)
    start_ms = int((time.time() if started is None else started) * 1000)
    base = run_name(backbone, method, "evaluate", seed=seed)
    tags = {"backbone": backbone, "method": method, "seed": str(seed)}
    with _store_lock(uri):
        check_store(uri)
        client = _client(uri)
        parent = None
        if training_run_id:
            try:
                parent = _retry(lambda: client.get_run(training_run_id))
            except Exception as err:  # noqa: BLE001 - e.g. the training run lives in another store
                print(f"training run {training_run_id} is not in {uri} ({type(err).__name__}); "
                      f"logging under {base} instead")
            if parent is not None and parent.info.lifecycle_stage != "active":
                parent = None
        if parent is None and training_fingerprint:
            exp_id = _experiment_id(client, experiment, Path(results_dir))
            found = _retry(lambda: client.search_runs(
                [exp_id], filter_string=f"tags.stage = 'train' and tags.fingerprint = {_quote(training_fingerprint)}",
                order_by=["attributes.start_time DESC"], max_results=1))
            parent = found[0] if found else None
        if parent is None:
            exp_id = _experiment_id(client, experiment, Path(results_dir))
            parent = _evaluate_parent(client, exp_id, base, tags, start_ms)
        parent_id, exp_id = parent.info.run_id, parent.info.experiment_id
        same = f"tags.`{PARENT_TAG}` = {_quote(parent_id)} and tags.benchmark = {_quote(benchmark)}"
        earlier = _retry(lambda: client.search_runs([exp_id], filter_string=same, max_results=100))
        for run in earlier:
            _retry(lambda: client.delete_run(run.info.run_id))
        child_tags = {**tags, "stage": "evaluate", "benchmark": benchmark, PARENT_TAG: parent_id}
        child_id = _retry(lambda: client.create_run(exp_id, start_time=start_ms, run_name=f"{base}/{benchmark}",
                                                    tags=child_tags)).info.run_id
    status = "FAILED"
    try:
        tracker = Tracker(client, child_id)
        if params:
            tracker.log_params(params)
        with _running(Tracker(client, child_id), uri) as tracker:
            tracker.log_metrics(metrics)
            for path in artifacts:
                tracker.log_artifact(path)
        Tracker(client, parent_id).log_metrics({f"eval/{benchmark}/{key}": value for key, value in metrics.items()})
        status = "FINISHED"
    finally:
        if parent.data.tags.get("stage") == "evaluate":  # a parent that only holds evaluations spans them
            with _store_lock(uri):
                info = _retry(lambda: client.get_run(parent_id)).info
                end = max(info.end_time or 0, int(time.time() * 1000))
                _retry(lambda: client.set_terminated(parent_id, status, end_time=end))
    return child_id


def main(argv: list[str] | None = None) -> int:
    """`python -m tarpo.tracking`: print the `mlflow ui` address of each experiment's runs table."""
    parser = argparse.ArgumentParser(prog="python -m tarpo.tracking", description=main.__doc__)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where the default store lies (results)")
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="where `mlflow ui` serves")
    args = parser.parse_args(argv)
    uri = tracking_uri(args.results_dir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        print(f"no MLflow store at {uri} (a job with tracking on creates it)", file=sys.stderr)
        return 1
    client = _client(uri)
    print(f"mlflow ui --backend-store-uri {uri}   # then open:")
    for exp in client.search_experiments(order_by=["creation_time ASC"]):
        if exp.name == "Default" and not client.search_runs([exp.experiment_id], max_results=1):
            continue
        print(f"  {exp.name}: {ui_url(exp.experiment_id, args.url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
