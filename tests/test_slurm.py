"""`snakemake --profile slurm` against a fake SLURM.

Fake `sbatch`, `squeue`, `sacct`, `scancel`, `sinfo`, `srun`, `sacctmgr` and
`scontrol` executables go first on PATH. `sbatch` records every submission
(its argv, parsed options and the job command) and runs the job locally in
the background; `sacct`/`squeue` report the job states in the format the
executor plugin parses (`JobIdRaw|State`); `srun` (called by the jobstep
executor inside the job) records its options and runs the command. So the
real plugin builds the real `sbatch` calls, and the jobs run the real rules.

* The smoke config's data + backbone chain runs to completion through the
  profile, with the resources of every submission checked.
* The paper config (hub models, GPUs) runs a few jobs with the ML replaced by
  stubs (`tarpo` and `accelerate` on PATH that write placeholder outputs and
  record how they were called): every train job asks for its GPUs, and the
  7B's training goes through `accelerate launch` with one process per GPU.

Snakemake runs in a temporary copy of the workflow files, as in test_workflow.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import slurm_workdir

REPO = Path(__file__).resolve().parents[1]
PARTITION, ACCOUNT = "gpu-test", "tarpo-lab"

pytestmark = [pytest.mark.workflow]  # runs Snakemake through the SLURM profile (a fake SLURM)

# One script, dispatching on the name it is called by (argv[1], see _install).
FAKE_SLURM = r'''
import fcntl, json, os, signal, subprocess, sys

STATE = os.environ["FAKE_SLURM_DIR"]
JOBS = os.path.join(STATE, "jobs")
NO_VALUE = {"--parsable", "--requeue", "--no-requeue"}


def log(name, record):
    with open(os.path.join(STATE, name), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(record) + "\n")


def write_job(job):
    path = os.path.join(JOBS, job["id"] + ".json")
    with open(path + ".tmp", "w") as fh:
        json.dump(job, fh)
    os.replace(path + ".tmp", path)


def read_jobs():
    jobs = []
    for name in sorted(os.listdir(JOBS)):
        if name.endswith(".json"):
            with open(os.path.join(JOBS, name)) as fh:
                jobs.append(json.load(fh))
    return jobs


def next_id():
    with open(os.path.join(STATE, "counter"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read().strip() or 1000) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n))
    return str(n)


def parse(argv):
    opts, positional, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            opts[key] = value
        elif arg in NO_VALUE:
            opts[arg] = True
        elif arg.startswith("-") and i + 1 < len(argv):
            opts[arg] = argv[i + 1]
            i += 1
        else:
            positional.append(arg)
        i += 1
    return opts, positional


def sbatch(argv):
    opts, positional = parse(argv)
    script = sys.stdin.read() if positional == ["/dev/stdin"] else None
    command = opts.get("--wrap") or script
    if not command:
        print("sbatch: error: no --wrap and no script", file=sys.stderr)
        return 1
    job_id = next_id()
    log("sbatch.jsonl", {"id": job_id, "argv": argv, "options": opts, "command": command})
    write_job({"id": job_id, "name": opts.get("--job-name", ""), "state": "PENDING", "options": opts,
               "command": command, "pid": None})
    subprocess.Popen([sys.executable, __file__, "_run", job_id], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id)  # --parsable
    return 0


def run_job(job_id):
    """The job itself: run its command in -D with the SLURM variables a job sees."""
    with open(os.path.join(JOBS, job_id + ".json")) as fh:
        job = json.load(fh)
    opts = job["options"]
    out = opts.get("--output", os.path.join(STATE, "slurm-%j.out")).replace("%j", job_id)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NAME=job["name"],
               SLURM_CPUS_PER_TASK=opts.get("--cpus-per-task", "1"), SLURM_JOB_PARTITION=opts.get("-p", ""),
               SLURM_JOB_ACCOUNT=opts.get("-A", ""), SLURM_SUBMIT_DIR=opts.get("-D", os.getcwd()))
    if opts.get("--gpus"):
        env["SLURM_GPUS"] = opts["--gpus"]
    job.update(state="RUNNING", pid=os.getpid())
    write_job(job)
    with open(out, "w") as fh:
        rc = subprocess.call(["/bin/sh", "-c", job["command"]], cwd=opts.get("-D"), env=env,
                             stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    with open(os.path.join(JOBS, job_id + ".json")) as fh:
        job = json.load(fh)
    if job["state"] != "CANCELLED":
        job.update(state="COMPLETED" if rc == 0 else "FAILED", exit_code=rc)
        write_job(job)
    return 0


def status(argv, fmt):
    opts, _ = parse(argv)
    name = opts.get("--name")
    for job in read_jobs():
        if name is None or job["name"] == name:
            print(fmt(job))
    return 0


def sacct(argv):
    if "--name" in argv:  # the plugin's status query: sacct -X --parsable2 ... --format=JobIdRaw,State --name RUNID
        return status(argv, lambda j: f"{j['id']}|{j['state']}")
    if "Account%256" in " ".join(argv):  # account guess from recent jobs
        print(os.environ.get("FAKE_SLURM_ACCOUNTS", "").split()[0] if os.environ.get("FAKE_SLURM_ACCOUNTS") else "")
        return 0
    return 0  # failure reasons per job step: none recorded


def squeue(argv):
    return status(argv, lambda j: f"{j['id']}|{j['state']}")


def scancel(argv):
    for job_id in [a for a in argv if a.split("_")[0].isdigit()]:
        path = os.path.join(JOBS, job_id + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            job = json.load(fh)
        if job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        job["state"] = "CANCELLED"
        write_job(job)
    log("scancel.jsonl", {"argv": argv})
    return 0


def srun(argv):
    log("srun.jsonl", {"argv": argv, "job": os.environ.get("SLURM_JOB_ID")})
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    command = argv[i:]
    gpus = [a.split("=", 1)[1] for a in argv[:i] if a.startswith("--gpus=")]
    if gpus:  # the step's GPUs, as slurmd exposes them
        os.environ["SLURM_GPUS"] = gpus[0]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(int(gpus[0]))))
    if command[:2] == ["sh", "-s"]:
        return subprocess.call(["/bin/sh", "-s"])
    os.execvp(command[0], command)


def sinfo(argv):
    print("PARTITION")
    print("cpu*")
    print("gpu-test")
    return 0


def sacctmgr(argv):
    for account in os.environ.get("FAKE_SLURM_ACCOUNTS", "").split():
        print(account)
    return 0


def scontrol(argv):
    print("MaxArraySize            = 1001")
    print("MinJobAge               = 300 sec")
    return 0


if __name__ == "__main__":
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "_run":
        sys.exit(run_job(argv[0]))
    sys.exit({"sbatch": sbatch, "sacct": sacct, "squeue": squeue, "scancel": scancel, "srun": srun,
              "sinfo": sinfo, "sacctmgr": sacctmgr, "scontrol": scontrol}[cmd](argv))
'''

SLURM_COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "srun", "sinfo", "sacctmgr", "scontrol")

# Stand-ins for the ML of a paper-scale job (hub models, GPUs): each records how
# it was called and writes placeholder outputs where the rule expects them.
FAKE_TARPO = r'''
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "tarpo.jsonl"), "a") as fh:
    fh.write(json.dumps({"argv": argv, "job": os.environ.get("SLURM_JOB_ID"),
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                         "rank": os.environ.get("FAKE_RANK")}) + "\n")
out = Path(argv[argv.index("--out") + 1])
if argv[0] == "evaluate":
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("{}\n")
    out.with_name(out.stem + ".samples.jsonl").write_text("")
    out.with_name(out.stem + ".html").write_text("<html></html>\n")
else:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stub.txt").write_text(" ".join(argv) + "\n")
'''

FAKE_ACCELERATE = r'''
import json, os, subprocess, sys

argv = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "accelerate.jsonl"), "a") as fh:
    fh.write(json.dumps({"argv": argv, "job": os.environ.get("SLURM_JOB_ID"),
                         "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
assert argv[0] == "launch" and "-m" in argv and argv[argv.index("-m") + 1] == "tarpo.cli", argv
args = argv[argv.index("-m") + 2:]
n = int(argv[argv.index("--num_processes") + 1])
procs = [subprocess.Popen(["tarpo", *args], env=dict(os.environ, FAKE_RANK=str(r))) for r in range(n)]
sys.exit(max(p.wait() for p in procs))
'''


def _install(bin_dir: Path, name: str, script: Path, *args: str) -> None:
    exe = bin_dir / name
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} {' '.join(args)} \"$@\"\n")
    exe.chmod(0o755)


class FakeSlurm:
    def __init__(self, root: Path, stub_ml: bool = False):
        self.dir = root / "slurm-state"
        (self.dir / "jobs").mkdir(parents=True)
        self.bin = root / "fake-bin"
        self.bin.mkdir()
        script = root / "fake_slurm.py"
        script.write_text(FAKE_SLURM)
        for name in SLURM_COMMANDS:
            _install(self.bin, name, script, name)
        if stub_ml:
            (root / "fake_tarpo.py").write_text(FAKE_TARPO)
            (root / "fake_accelerate.py").write_text(FAKE_ACCELERATE)
            _install(self.bin, "tarpo", root / "fake_tarpo.py")
            _install(self.bin, "accelerate", root / "fake_accelerate.py")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.bin), str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(FAKE_SLURM_DIR=str(self.dir), FAKE_SLURM_ACCOUNTS=f"other {ACCOUNT}",
                   SBATCH_PARTITION=PARTITION, SBATCH_ACCOUNT=ACCOUNT, TARPO_TRACKING="off")
        env.pop("MLFLOW_TRACKING_URI", None)
        for var in [v for v in env if v.startswith("SLURM_")]:
            env.pop(var)
        return env

    def records(self, name: str) -> list[dict]:
        path = self.dir / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def submissions(self) -> list[dict]:
        """One dict per sbatch call: the rule and wildcards (from --comment), options, command."""
        subs = []
        for rec in self.records("sbatch.jsonl"):
            comment = rec["options"]["--comment"]  # rule_{name}[_wildcards_{w1_w2}]
            rule, _, wildcards = comment[len("rule_"):].partition("_wildcards_")
            subs.append({**rec, "rule": rule, "wildcards": wildcards})
        return subs

    def kill_leftovers(self) -> None:
        for path in (self.dir / "jobs").glob("*.json"):
            job = json.loads(path.read_text())
            if job.get("pid") and job["state"] == "RUNNING":
                try:
                    os.killpg(job["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _workdir(tmp_path: Path) -> Path:
    return slurm_workdir(tmp_path)


def _snakemake(wd: Path, env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    fast = [  # poll the fake queue every second instead of the plugin's 40 s start-up wait
        "--seconds-between-status-checks", "1", "--slurm-init-seconds-before-status-checks", "1",
        "--latency-wait", "5",
    ]
    return subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", *fast, *args], cwd=wd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture
def fake(tmp_path):
    slurm = FakeSlurm(tmp_path)
    yield slurm
    slurm.kill_leftovers()


@pytest.fixture
def fake_stub_ml(tmp_path):
    slurm = FakeSlurm(tmp_path, stub_ml=True)
    yield slurm
    slurm.kill_leftovers()


# ------------------------------------------------------------------ profile


def test_profile_is_found_from_the_repository_root():
    """`--profile slurm` resolves to the repository's profile (Snakemake looks the name up in the cwd first)."""
    from snakemake.cli import get_profile_dir

    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        found = get_profile_dir("slurm")
    finally:
        os.chdir(cwd)
    assert found is not None
    assert found[1].resolve() == (REPO / "profiles" / "slurm" / "config.yaml").resolve()


def test_profile_takes_partition_and_account_from_the_environment(monkeypatch):
    from snakemake.profiles import ProfileConfigFileParser

    def parse() -> dict:
        with open(REPO / "profiles" / "slurm" / "config.yaml") as fh:
            return dict(ProfileConfigFileParser().parse(fh))

    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    bare = parse()
    assert bare["executor"] == "slurm"
    assert not any(r.startswith(("slurm_partition", "slurm_account")) for r in bare["default-resources"])

    monkeypatch.setenv("SBATCH_PARTITION", "gpu")
    monkeypatch.setenv("SBATCH_ACCOUNT", "123456")  # a numeric account stays a string
    resources = parse()["default-resources"]
    assert "slurm_partition=gpu" in resources and "slurm_account='123456'" in resources


def test_paper_config_dry_run_with_the_profile_requests_gpus(tmp_path, fake):
    wd = _workdir(tmp_path)
    proc = _snakemake(wd, fake.env(), "-n", "all", "--configfile", "config/paper.yaml", timeout=300)
    out = _out(proc)
    assert proc.returncode == 0, out[-5000:]
    assert not fake.records("sbatch.jsonl")  # a dry run submits nothing
    jobs = {}
    for block in out.split("rule ")[1:]:
        name = block.split(":", 1)[0]
        wildcards = next((ln.split(":", 1)[1].strip() for ln in block.splitlines() if "wildcards:" in ln), "")
        resources = next((ln.split(":", 1)[1].strip() for ln in block.splitlines() if "resources:" in ln), "")
        jobs[(name, wildcards)] = dict(kv.split("=", 1) for kv in resources.split(", ") if "=" in kv)
    train = {w: r for (n, w), r in jobs.items() if n == "train"}
    assert len(train) == 6 * 5 * 3  # six backbones x five methods x three seeds
    for wildcards, res in train.items():
        big = "qwen2.5-7b" in wildcards or "llama3.1-8b" in wildcards
        assert res["gpu"] == ("2" if big else "1"), (wildcards, res)
        assert res["slurm_partition"] == PARTITION and res["slurm_account"] == ACCOUNT and res["nodes"] == "1"
    evaluate = [r for (n, _), r in jobs.items() if n == "evaluate"]
    assert len(evaluate) == 6 * 6 * 3 * 8 and all(r["gpu"] == "1" for r in evaluate)
    assert all(r["gpu"] == "0" for (n, _), r in jobs.items() if n in ("prepare", "backbone"))
    assert sum(n == "atp_sft" for n, _ in jobs) == 6 and all(r["gpu"] == "1" for (n, _), r in jobs.items() if n == "atp_sft")


# ------------------------------------------------------------------ real runs through the fake queue


@pytest.mark.slow
def test_smoke_data_and_backbone_run_through_the_slurm_profile(tmp_path, fake):
    wd = _workdir(tmp_path)
    targets = ["results/smoke/data/synthetic", "results/smoke/backbones/tiny"]
    proc = _snakemake(wd, fake.env(), *targets, "--configfile", "config/smoke.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out[-6000:]

    # the outputs are there, written by the jobs the fake queue ran
    root = wd / "results" / "smoke"
    data = root / "data" / "synthetic"
    assert len((data / "train.jsonl").read_text().splitlines()) == 200
    assert (root / "backbones" / "tiny" / "config.json").exists()
    assert (root / "logs" / "backbone" / "tiny.log").stat().st_size > 0

    subs = fake.submissions()
    assert sorted(s["rule"] for s in subs) == ["backbone", "prepare"], subs
    expected = {"prepare": {"cpus": "1", "mem": "1000", "time": "10"},  # config/smoke.yaml resources
                "backbone": {"cpus": "1", "mem": "2000", "time": "10"}}
    for sub in subs:
        opts, want = sub["options"], expected[sub["rule"]]
        assert opts["--parsable"] is True and opts["--export"] == "ALL"
        assert opts["-p"] == PARTITION and opts["-A"] == ACCOUNT
        assert opts["--cpus-per-task"] == want["cpus"] and opts["--mem"] == want["mem"] and opts["-t"] == want["time"]
        assert opts["--nodes"] == "1" and opts["--ntasks"] == "1"
        assert "--gpus" not in opts and "--gres" not in opts  # gpus: 0 -> a CPU job
        assert Path(opts["-D"]).resolve() == wd.resolve()
        assert "--executor slurm-jobstep" in sub["command"] and f"--target-jobs '{sub['rule']}:" in sub["command"]
    # inside each job the jobstep executor ran the rule through srun with the same CPUs
    sruns = fake.records("srun.jsonl")
    assert len(sruns) == 2 and all("--cpus-per-task=1" in r["argv"] for r in sruns)
    states = {j["state"] for j in map(json.loads, (p.read_text() for p in (fake.dir / "jobs").glob("*.json")))}
    assert states == {"COMPLETED"}

    # nothing left to do: a second run submits nothing
    proc = _snakemake(wd, fake.env(), *targets, "--configfile", "config/smoke.yaml")
    assert proc.returncode == 0 and "Nothing to be done" in _out(proc), _out(proc)[-3000:]
    assert len(fake.submissions()) == 2


@pytest.mark.slow
def test_paper_config_jobs_ask_for_gpus_and_multi_gpu_training_uses_accelerate(tmp_path, fake_stub_ml):
    """Paper-scale jobs through the fake queue with the ML stubbed out: what each sbatch asked for."""
    fake = fake_stub_ml
    wd = _workdir(tmp_path)
    targets = ["results/paper/qwen2.5-1.5b/tarpo/seed0/checkpoint", "results/paper/qwen2.5-7b/tarpo/seed0/checkpoint",
               "results/paper/qwen2.5-7b/tarpo/seed0/eval/gsm8k.json"]
    proc = _snakemake(wd, fake.env(), *targets, "--configfile", "config/paper.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out[-6000:]
    for target in targets:
        assert (wd / target).exists(), target

    subs = {(s["rule"], s["wildcards"]): s["options"] for s in fake.submissions()}
    assert sorted(subs) == [
        ("backbone", "qwen2.5-1.5b"), ("backbone", "qwen2.5-7b"), ("evaluate", "qwen2.5-7b_tarpo_0_gsm8k"),
        ("prepare", "gsm8k_train"), ("train", "qwen2.5-1.5b_tarpo_0"), ("train", "qwen2.5-7b_tarpo_0"),
    ], sorted(subs)
    for opts in subs.values():
        assert opts["-p"] == PARTITION and opts["-A"] == ACCOUNT and opts["--nodes"] == "1"
    # config/paper.yaml: train 8 threads / 1 GPU / 64 GB / 48 h; the 7B: 16 threads / 2 GPUs / 128 GB
    want = {
        ("prepare", "gsm8k_train"): (None, "1", "8000", "30"),
        ("backbone", "qwen2.5-1.5b"): (None, "2", "16000", "120"),
        ("train", "qwen2.5-1.5b_tarpo_0"): ("1", "8", "64000", "2880"),
        ("train", "qwen2.5-7b_tarpo_0"): ("2", "16", "128000", "2880"),
        ("evaluate", "qwen2.5-7b_tarpo_0_gsm8k"): ("1", "8", "64000", "720"),
    }
    for key, (gpus, cpus, mem, time) in want.items():
        opts = subs[key]
        assert opts.get("--gpus") == gpus, (key, opts)
        assert opts["--cpus-per-task"] == cpus and opts["--mem"] == mem and opts["-t"] == time, (key, opts)
        assert ("--ntasks" in opts) == (gpus is None), (key, opts)  # the plugin leaves task geometry to GPU jobs

    # the 7B trains through `accelerate launch` with one process per GPU; the 1.5B runs `tarpo` directly
    launches = fake.records("accelerate.jsonl")
    assert len(launches) == 1
    argv = launches[0]["argv"]
    assert argv[:6] == ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    assert "--backbone" in argv and argv[argv.index("--backbone") + 1] == "qwen2.5-7b"
    assert launches[0]["CUDA_VISIBLE_DEVICES"] == "0,1"  # the job step (srun --gpus=2) holds both GPUs
    calls = fake.records("tarpo.jsonl")
    train_7b = [c for c in calls if c["argv"][0] == "train" and "qwen2.5-7b" in c["argv"]]
    assert sorted(c["rank"] for c in train_7b) == ["0", "1"]
    train_15 = [c for c in calls if c["argv"][0] == "train" and "qwen2.5-1.5b" in c["argv"]]
    assert len(train_15) == 1 and train_15[0]["rank"] is None
    # rule threads -> the job's CPUs; inside the job snakemake caps them at the CPUs it may use
    # (8 on a node that allocated --cpus-per-task=8, fewer on this test machine)
    from snakemake.utils import available_cpu_count

    assert train_15[0]["OMP_NUM_THREADS"] == str(min(8, available_cpu_count()))
    # and the training job read the exported registry training set
    assert any(c["argv"][:1] == ["prepare"] and "gsm8k_train" in c["argv"] for c in calls)
