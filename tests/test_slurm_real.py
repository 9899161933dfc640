"""`snakemake --profile slurm` against a real single-node SLURM.

`tools/slurm_harness.sh up` installs (apt) and starts munge, MariaDB, slurmdbd,
slurmctld and slurmd on this machine; the tests skip, saying why, where that
cannot be done (not root, no packages, a daemon that does not start). The
daemons the session started are stopped at its end.

* The smoke config runs through the profile: every job went through sbatch and
  COMPLETED (sacct), every output exists, a rerun plans nothing.
* One run of three training jobs, each interrupted its own way while running:
  `scancel` (grpo), a time limit it overruns (hrpo: 1 minute on its first
  attempt), and preemption as SLURM delivers it, SIGTERM to the job's steps
  (`scancel --signal=TERM`, tarpo). Each is reported failed, retried per the
  profile, and resumes from its checkpoint; the preempted one ends with the
  weights of an uninterrupted run.

The paper config's resource requests (GPUs, 64 GB) cannot run on this machine:
tests/test_slurm.py checks them against a fake SLURM.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import slurm_workdir

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tools" / "slurm_harness.sh"
PARTITION, ACCOUNT = "debug", "tarpo-test"
LOCK = Path("/run/tarpo-slurm.lock")  # one session at a time drives the shared cluster
# "Job 3 has been submitted with SLURM jobid 42 (log: .../slurm_logs/rule_train/tiny_grpo_0/42.log)";
# a rule without wildcards has no wildcards directory
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_([^/]+)/(?:(\S+)/)?\d+\.log\)")

pytestmark = [pytest.mark.workflow, pytest.mark.slow]  # a real SLURM: minutes


def _harness(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(HARNESS), cmd], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PARTITION=PARTITION, ACCOUNT=ACCOUNT))


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("real SLURM: needs root to install and start slurmctld/slurmd/slurmdbd")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("real SLURM: no apt-get to install slurm-wlm (Debian/Ubuntu only)")
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip("real SLURM: another test session held the cluster for 15 minutes")
                time.sleep(5)
        before = _harness("status").stdout
        up = _harness("up")
        if up.returncode != 0:
            _harness("down")
            pytest.skip(f"real SLURM could not be started:\n{up.stderr[-2000:]}")
        try:
            yield
        finally:
            if "stopped" in before:  # this session started daemons: stop them (only those)
                _harness("down")


def _workdir(tmp_path: Path) -> Path:
    return slurm_workdir(tmp_path)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "MLFLOW_TRACKING_URI"}
    # jobs run with the submitter's environment (--export=ALL): the venv's `tarpo` on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(SBATCH_PARTITION=PARTITION, SBATCH_ACCOUNT=ACCOUNT, TARPO_TRACKING="off", OMP_NUM_THREADS="1")
    return env


def _snakemake(wd: Path, *args: str, log: Path, timeout: int = 600) -> subprocess.Popen:
    """Start snakemake with the profile and nothing else, writing its output to `log`."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "snakemake", "--profile", "slurm", *args], cwd=wd, env=_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")  # a job killed mid-write may leave half a character


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for snakemake; past `timeout` interrupt it (SIGINT: it scancels its jobs) and fail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(2)
        proc.wait(timeout=120)
        pytest.fail(f"snakemake still running after {timeout:.0f} s (a job state it waits on forever?):\n"
                    + _read(log)[-5000:])
    return _read(log)


def _submissions(out: str) -> list[tuple[str, str, str]]:
    """(SLURM job id, rule, wildcards) of every sbatch, in order."""
    return [(job, rule, wildcards or "") for job, rule, wildcards in SUBMITTED.findall(out)]


def _states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state, from accounting (slurmdbd may take a moment to record the last ones)."""
    for _ in range(30):
        rows = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobIdRaw,State", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
        states = dict(row.split("|", 1) for row in rows)
        if set(states) >= set(job_ids) and not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values()):
            return states
        time.sleep(1)
    return states


def _dry_run(wd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", *args], cwd=wd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------ the smoke config


@pytest.fixture(scope="module")
def smoke(slurm, tmp_path_factory):
    """The smoke config through the profile (its data and backbone also serve the tests below)."""
    tmp = tmp_path_factory.mktemp("smoke")
    wd = _workdir(tmp)
    log = tmp / "snakemake.log"
    t0 = time.monotonic()
    out = _finish(_snakemake(wd, "all", "--configfile", "config/smoke.yaml", log=log), log, timeout=900)
    subs = _submissions(out)
    return {"wd": wd, "out": out, "seconds": time.monotonic() - t0, "subs": subs,
            "states": _states([job for job, _, _ in subs])}


def test_smoke_config_runs_on_real_slurm(smoke):
    wd, out, subs, states = smoke["wd"], smoke["out"], smoke["subs"], smoke["states"]
    assert "steps (100%) done" in out, out[-6000:]
    subs_text = "\n".join(map(str, subs))
    rules = {rule for _, rule, _ in subs}
    assert {"prepare", "backbone", "train", "evaluate"} <= rules, rules
    # every job of the plan went through sbatch (nothing ran locally) and SLURM says it completed
    planned = int(re.search(r"^total\s+(\d+)", out, re.M).group(1))
    localrules = len(re.findall(r"^localrule ", out, re.M))
    assert len(subs) == planned - localrules, (planned, localrules, subs_text)
    assert set(states.values()) == {"COMPLETED"}, states
    print(f"real SLURM smoke run: {len(subs)} jobs in {smoke['seconds']:.0f} s")

    # the outputs: every evaluation, the tables/figures and the results page
    cfg = yaml.safe_load((wd / "config" / "smoke.yaml").read_text())
    for method in [*cfg["methods"], *cfg["baselines"]]:
        for bench in cfg["evaluate"]["benchmarks"]:
            assert (wd / "results" / "smoke" / "tiny" / method / "seed0" / "eval" / f"{bench}.json").is_file(), \
                (method, bench)
    for method in cfg["methods"]:
        assert (wd / "results" / "smoke" / "tiny" / method / "seed0" / "checkpoint" / "model" /
                "model.safetensors").is_file()
    dry = _dry_run(wd, "all", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in dry, dry[-3000:]


# ------------------------------------------------------------------ cancel, time limit, preemption

# hrpo trains for about 2 minutes (~30 steps/s here), past its 1-minute time limit, which SLURM enforces
# within 30 s: the limit must fall in the training itself (at 1800 steps the run once finished in 62 s and
# the limit struck after the final save, leaving nothing to resume)
STEPS = {"grpo": 150, "tarpo": 150, "hrpo": 3600}
CHECKPOINT = "results/smoke/tiny/{}/seed0/checkpoint"


def _checkpointed(wd: Path, method: str) -> bool:
    return any((wd / CHECKPOINT.format(method)).parent.glob("train_state/*/*/step-*/SHA256SUMS"))


def _squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def interrupted(smoke, tmp_path_factory):
    """Train grpo, tarpo and hrpo through the profile; scancel grpo, SIGTERM tarpo, let hrpo overrun 1 minute.

    In the smoke run's directory: its data and backbone are reused, the training reruns (other steps). The
    smoke config file is edited in place: its root, results/smoke/, belongs to that file (tarpo.layout).
    """
    tmp = tmp_path_factory.mktemp("interrupted")
    wd = smoke["wd"]
    cfg = yaml.safe_load((wd / "config" / "smoke.yaml").read_text())
    cfg["methods"] = {m: {"steps": n} for m, n in STEPS.items()}
    cfg["train"]["checkpoint_every"] = 5
    (wd / "config" / "smoke.yaml").write_text(yaml.safe_dump(cfg))
    targets = [CHECKPOINT.format(m) for m in STEPS]
    args = [*targets, "--configfile", "config/smoke.yaml"]
    log = tmp / "snakemake.log"
    # hrpo's first attempt may run 1 minute; its retry (and every other job) the config's 10
    proc = _snakemake(wd, *args, "--set-resources",
                      "train:runtime=1 if wildcards.method == 'hrpo' and attempt == 1 else 10", log=log)

    actions = {"grpo": ["scancel"], "tarpo": ["scancel", "--signal=TERM"]}
    done: dict[str, str] = {}  # method -> the SLURM job it interrupted
    deadline = time.monotonic() + 600
    while proc.poll() is None and len(done) < len(actions) and time.monotonic() < deadline:
        first = {}  # method -> its first training job: the one to interrupt (not a retry)
        for job, rule, wildcards in _submissions(_read(log)):
            if rule == "train":
                first.setdefault(wildcards.split("_")[1], job)
        for method, job in first.items():
            if method in actions and method not in done and _squeue_state(job) == "RUNNING" \
                    and _checkpointed(wd, method):
                subprocess.run([*actions[method], job], check=True)
                done[method] = job
        time.sleep(0.5)
    out = _finish(proc, log, timeout=max(deadline - time.monotonic(), 60))
    assert set(done) == set(actions), f"could not interrupt {set(actions) - set(done)} while running:\n{out[-5000:]}"
    subs = _submissions(out)
    return {"wd": wd, "out": out, "args": args, "interrupted": done, "subs": subs,
            "states": _states([job for job, _, _ in subs])}


def _attempts(run: dict, method: str) -> list[str]:
    """The SLURM states of `method`'s training jobs, in submission order."""
    return [run["states"][job] for job, rule, wildcards in run["subs"] if rule == "train" and f"_{method}_" in wildcards]


def _resumed_from(run: dict, method: str) -> list[int]:
    log = run["wd"] / f"results/smoke/logs/train/tiny/{method}/seed0.log"
    return [int(s) for s in re.findall(rf"resuming tiny/{method} from .* \(step (\d+)/", _read(log))]


def _sigterm_checkpoints(run: dict, method: str) -> list[int]:
    """Steps the trainer checkpointed at on SIGTERM, from the failed jobs' SLURM logs (Snakemake keeps
    those, and clears the rule's own log before the retry)."""
    logs = (run["wd"] / f".snakemake/slurm_logs/rule_train/tiny_{method}_0").glob("*.log")
    return [int(s) for log in logs for s in re.findall(rf"SIGTERM: checkpointed tiny/{method} at step (\d+)",
                                                         _read(log))]



def test_interrupted_training_jobs_are_retried_and_the_run_completes(interrupted):
    out = interrupted["out"]
    assert "steps (100%) done" in out, out[-6000:]
    for method in STEPS:
        assert (interrupted["wd"] / CHECKPOINT.format(method) / "model" / "model.safetensors").is_file(), method
    # only the three trainings ran (data and backbone were up to date), each twice
    assert sorted(rule for _, rule, _ in interrupted["subs"]) == ["train"] * 6, interrupted["subs"]
    dry = _dry_run(interrupted["wd"], *interrupted["args"])
    assert "Nothing to be done" in dry, dry[-3000:]


def test_scancel_of_a_running_training_job_fails_it_and_the_retry_resumes(interrupted):
    states = _attempts(interrupted, "grpo")
    # sacct says "CANCELLED by 0"; the profile's squeue status says CANCELLED, which the plugin fails
    assert len(states) == 2 and states[0].startswith("CANCELLED") and states[1] == "COMPLETED", states
    assert f"SLURM-job '{interrupted['interrupted']['grpo']}' failed, SLURM status is: 'CANCELLED'" in interrupted["out"]
    # scancel sends SIGTERM first (SIGKILL KillWait later): the trainer checkpointed, the retry resumed there
    resumed, stopped = _resumed_from(interrupted, "grpo"), _sigterm_checkpoints(interrupted, "grpo")
    assert len(resumed) == 1 and resumed[0] > 0 and stopped == resumed, (resumed, stopped)


def test_a_job_over_its_time_limit_times_out_and_the_retry_resumes(interrupted):
    states = _attempts(interrupted, "hrpo")
    assert states == ["TIMEOUT", "COMPLETED"], states
    # SLURM sent SIGTERM at the limit (KillWait before SIGKILL): the retry resumed from that checkpoint
    resumed, stopped = _resumed_from(interrupted, "hrpo"), _sigterm_checkpoints(interrupted, "hrpo")
    assert len(resumed) == 1 and 0 < resumed[0] < STEPS["hrpo"] and stopped == resumed, (resumed, stopped)


def test_preempted_training_checkpoints_resumes_and_matches_an_uninterrupted_run(interrupted):
    from safetensors.torch import load_file

    wd = interrupted["wd"]
    states = _attempts(interrupted, "tarpo")
    # SIGTERM: the trainer checkpoints at the end of its step and exits 143, the job FAILED; the retry resumes
    assert states == ["FAILED", "COMPLETED"], states
    # (SIGTERM reaches every process of the job step: the train rule keeps its shell and `tee` alive,
    # or the trainer's next write would fail before it checkpointed)
    stopped = _sigterm_checkpoints(interrupted, "tarpo")
    assert len(stopped) == 1 and _resumed_from(interrupted, "tarpo") == stopped, stopped
    log = _read(wd / "results/smoke/logs/train/tiny/tarpo/seed0.log")

    # the same training without interruption, locally
    ckpt = wd / CHECKPOINT.format("tarpo")
    ckpt.rename(ckpt.with_name("checkpoint.slurm"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *interrupted["args"]], cwd=wd,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "resuming" not in _read(wd / "results/smoke/logs/train/tiny/tarpo/seed0.log").split(log)[-1]
    preempted = load_file(ckpt.with_name("checkpoint.slurm") / "model" / "model.safetensors")
    reference = load_file(ckpt / "model" / "model.safetensors")
    assert preempted.keys() == reference.keys()
    diff = max((preempted[k].double() - reference[k].double()).abs().max().item() for k in reference)
    print(f"preempted vs uninterrupted: max |weight difference| = {diff}")
    assert diff == 0.0
