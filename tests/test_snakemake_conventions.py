"""Snakemake's conventions: lint, snakefmt, conda environments, benchmark records, runtime table, catalog files.

Snakemake runs as a subprocess in a temporary copy of the workflow files (as in
test_workflow.py), so no test writes into the repository's results/ or .snakemake/.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tarpo import config as tconfig

pytestmark = [pytest.mark.workflow]  # runs Snakemake

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV_FILE = REPO / "envs" / "tarpo.yaml"
# The rules that do real work: each records its runtime and memory, and runs `tarpo` in the conda env.
COSTLY_RULES = ("prepare", "backbone", "atp_sft", "train", "evaluate", "router_probe")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow files (Snakefile, workflow/, config/) to run Snakemake in."""
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    return wd


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TARPO_TRACKING="off")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the rules call the `tarpo` beside this interpreter
    return env


def snakemake(workdir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# The rules as Snakemake parsed them (Workflow API), one JSON line.
RULES_SCRIPT = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=Path("Snakefile"), workdir=Path.cwd())
    rules = {
        r.name: {
            "shell": r.shellcmd,
            "script": r.script,
            "conda": str(r.conda_env) if r.conda_env else None,
            "benchmark": str(r.benchmark) if r.benchmark else None,
            "log": [str(f) for f in r.log],
            "norun": r.norun,
            "snakefile": r.snakefile,
            "params": list(r.params.keys()),
        }
        for r in wf._workflow.rules
    }
    print("RULES " + json.dumps(rules))
"""


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    wd = tmp_path_factory.mktemp("rules") / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    # the smoke config has every method, atp_latent's SFT stage included
    (wd / "config" / "config.yaml").write_text((REPO / "config" / "smoke.yaml").read_text())
    proc = subprocess.run([sys.executable, "-c", RULES_SCRIPT], cwd=wd, env=_env(), capture_output=True, text=True,
                          timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RULES ")), None)
    assert proc.returncode == 0 and line, _out(proc)
    return json.loads(line[len("RULES "):])


# ------------------------------------------------------------------ lint and format


def test_snakemake_lint_reports_no_problems(workdir):
    proc = snakemake(workdir, "--lint")
    out = _out(proc)
    assert proc.returncode == 0 and "Lints for" not in out, out


def test_workflow_files_are_formatted_with_snakefmt():
    snakefmt = BIN / "snakefmt"
    assert snakefmt.exists(), "snakefmt is in the test extra: pip install -c constraints.txt -e '.[test]'"
    # line length from pyproject.toml's [tool.snakefmt]
    proc = subprocess.run([str(snakefmt), "--check", "--diff", "Snakefile", "workflow/"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"run: snakefmt Snakefile workflow/\n{_out(proc)[-6000:]}"


def test_snakefmt_is_pinned_in_the_test_extra_and_the_constraints():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(p.split("==") for p in pyproject["project"]["optional-dependencies"]["test"])
    constraints = dict(ln.split("==") for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln)
    assert pins["snakefmt"] == constraints["snakefmt"]


# ------------------------------------------------------------------ software


def _runs_tarpo(rule: dict) -> bool:
    shell = rule["shell"] or ""
    return "tarpo " in shell or "{params.launcher}" in shell  # train: `tarpo` or `accelerate launch -m tarpo.cli`


def test_every_rule_that_runs_something_declares_the_project_conda_env(rules):
    running = {name: r for name, r in rules.items() if not r["norun"]}
    assert set(COSTLY_RULES) | {"runtime"} <= set(running)
    assert all(_runs_tarpo(rules[name]) for name in COSTLY_RULES)
    missing = [name for name, r in running.items() if not r["conda"]]
    assert not missing, f"rules without `conda:` (lint: specify a conda environment): {missing}"
    for name, r in running.items():
        # relative to the rule's file, as Snakemake resolves it
        env = (Path(r["snakefile"]).parent / r["conda"]).resolve()
        assert env.relative_to(Path(r["snakefile"]).parents[2].resolve()) == Path("envs/tarpo.yaml"), name


def test_every_rule_that_runs_tarpo_has_the_code_digest_as_a_param(rules):
    """A change to src/tarpo reruns what the old code made (a changed param reruns a job)."""
    tarpo = [name for name, r in rules.items() if not r["norun"] and _runs_tarpo(r)]
    assert set(COSTLY_RULES) <= set(tarpo)
    assert [name for name in tarpo if "code" not in rules[name]["params"]] == []


def test_env_file_installs_the_project_with_pyprojects_pins():
    env = yaml.safe_load(ENV_FILE.read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert pyproject["requires-python"] == f">={python.split('=')[1]},<3.14"
    assert "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert set(pyproject["dependencies"]) <= set(pip), set(pyproject["dependencies"]) - set(pip)
    # the project itself, editable, pinned by constraints.txt, from ${TARPO_REPO}: Snakemake copies this file
    # into .snakemake/conda/ before conda reads it, so a path relative to it would miss the repository
    assert pip[-2:] == ["-c ${TARPO_REPO}/constraints.txt", "-e ${TARPO_REPO}"]
    assert not [p for p in pip if p.startswith(("-e .", "-c .", "-r ."))]
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'os.environ.setdefault("TARPO_REPO", workflow.basedir)' in common
    assert (REPO / "constraints.txt").is_file() and (REPO / "Snakefile").is_file()


def test_pip_expands_the_repository_in_the_env_files_pip_section(tmp_path):
    """What conda does with the pip section: a requirements file beside the env file, `pip install -r` there."""
    env = yaml.safe_load(ENV_FILE.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    req = tmp_path / "condaenv.requirements.txt"
    req.write_text("\n".join(pip[-2:]) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                           "--no-index", "-r", str(req)], cwd=tmp_path, env=dict(_env(), TARPO_REPO=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "tarpo" in proc.stdout, _out(proc)[-3000:]


# ------------------------------------------------------------------ benchmark records and the runtime table


def test_every_costly_rule_records_runtime_and_memory_beside_its_log(rules):
    for name in COSTLY_RULES:
        r = rules[name]
        (log,) = r["log"]
        assert log.startswith("results/smoke/logs/") and log.endswith(".log"), log  # the config's root
        expected = "results/smoke/benchmarks/" + log[len("results/smoke/logs/"):-len(".log")] + ".tsv"
        assert r["benchmark"] == expected, (name, r["benchmark"])


def _fake_costly_outputs(workdir: Path, configfile: str) -> list[str]:
    """The outputs of every costly job of `all`, as placeholder files with one old mtime: up to date."""
    proc = snakemake(workdir, "-n", "--forceall", "all", "--configfile", configfile)
    assert proc.returncode == 0, _out(proc)
    assert "\nruntime " in _out(proc).split("Job stats:", 1)[1], "the runtime table is part of `all`"
    records = []
    job = {}
    for line in proc.stdout.splitlines() + ["rule end:"]:
        line = line.strip()
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            if job.get("rule") in COSTLY_RULES:
                for out in job["output"]:
                    path = workdir / out
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if job["rule"] in ("evaluate", "router_probe"):
                        path.write_text("{}")
                    else:
                        path.mkdir(exist_ok=True)
                        (path / "placeholder").write_text("x")
                        os.utime(path / "placeholder", (1e9, 1e9))
                    os.utime(path, (1e9, 1e9))
                records.append(job["benchmark"])
            job = {"rule": line.split()[-1].rstrip(":")}
        elif line.startswith("output: "):
            job["output"] = line[len("output: "):].split(", ")
        elif line.startswith("benchmark: "):
            job["benchmark"] = line[len("benchmark: "):]
    return records


def test_runtime_table_collects_the_records_of_the_configs_jobs(workdir):
    records = _fake_costly_outputs(workdir, "config/smoke.yaml")
    # prepare, backbone, atp_sft, 5 trainings, 6 methods x 2 benchmarks, tarpo's router probe
    assert len(records) == 1 + 1 + 1 + 5 + 6 * 2 + 1
    record = workdir / "results/smoke/benchmarks/train/tiny/tarpo/seed0.tsv"
    record.parent.mkdir(parents=True)
    record.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                      "4000.7\t1:06:40\t812.5\t2000\t700\t710\t1.5\t3.0\t97.1\t3890.2\n")
    evaluation = workdir / "results/smoke/benchmarks/evaluate/tiny/tarpo/seed0/synthetic_test_id.tsv"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(record.read_text().replace("3890.2", "109.8"))
    (workdir / "results/smoke/benchmarks/train/tiny/gone").mkdir()  # a record of no job of this config: not listed
    (workdir / "results/smoke/benchmarks/train/tiny/gone/seed0.tsv").write_text(record.read_text())

    proc = snakemake(workdir, "results/smoke/benchmarks/runtime.html", "--configfile", "config/smoke.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out
    assert "Job stats" in out and "runtime        1" in out and "train " not in out  # nothing else reruns

    table = workdir / "results/smoke/benchmarks/runtime.tsv"
    rows = list(csv.DictReader(table.open(), delimiter="\t"))
    # one row per costly job, exactly the records the rules' benchmark: directives name
    assert sorted(f"results/smoke/benchmarks/{r['rule']}/{r['job']}.tsv" for r in rows) == sorted(records)
    recorded = [r for r in rows if r["seconds"]]
    assert [r["job"] for r in recorded] == ["tiny/tarpo/seed0", "tiny/tarpo/seed0/synthetic_test_id"]
    assert float(recorded[0]["seconds"]) == 4000.7 and float(recorded[0]["max_rss_mb"]) == 812.5
    page = (workdir / "results/smoke/benchmarks/runtime.html").read_text()
    assert "2 of 21 jobs have a record" in page and "1:06:41" in page and "<table" in page
    assert "20 of 21 jobs" not in page
    log = (workdir / "results/smoke/logs/runtime.log").read_text()
    assert "2 of 21 jobs have a runtime record" in log
    # what one more seed of tarpo costs: 3890.2 training + 109.8 evaluation CPU-seconds
    assert "CPU-seconds per (method, seed)" in page and "4,000.00" in page
    assert [line.split() for line in log.splitlines() if line.split()[:3] == ["tiny", "tarpo", "seed0"]] == [
        ["tiny", "tarpo", "seed0", "3890.2", "109.8", "1", "4000.0"]]

    # up to date now; declared for the report
    proc = snakemake(workdir, "-n", "results/smoke/benchmarks/runtime.html", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in _out(proc), _out(proc)
    text = (REPO / "workflow" / "rules" / "runtime.smk").read_text()
    assert "report(" in text and 'f"{BENCHMARKS_DIR}/runtime.html"' in text


def test_a_missing_record_never_reruns_its_job(workdir):
    """Records are not versioned (a DVC restore brings none): a job's outputs, not its record, make it current."""
    _fake_costly_outputs(workdir, "config/smoke.yaml")
    proc = snakemake(workdir, "-n", "all", "--configfile", "config/smoke.yaml")
    out = _out(proc)
    assert proc.returncode == 0, out
    counts = out.split("Job stats:", 1)[1].split("total", 1)[0]
    assert not any(f"\n{rule} " in counts for rule in COSTLY_RULES), counts


# ------------------------------------------------------------------ the workflow catalog's standardised usage


def test_config_readme_describes_every_config_file_and_section():
    readme = (REPO / "config" / "README.md").read_text()
    for path in sorted((REPO / "config").glob("*.yaml")):
        assert f"`{path.name}`" in readme or f"config/{path.name}" in readme, path.name
    for field in dataclasses.fields(tconfig.Config):
        assert f"`{field.name}`" in readme, field.name


def test_catalog_file_names_the_deployment_and_the_report():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["software-stack-deployment"]["conda"] is True
    assert usage["report"] is True
    assert "desc" in usage["mandatory-flags"] and "flags" in usage["mandatory-flags"]
