"""Results know their code: the package's source digest and git state, and the workflow reruns what older code made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tarpo.provenance import PACKAGE_DIR, code_version, describe, git_state, source_digest

REPO = Path(__file__).resolve().parents[1]


def test_editing_a_source_file_changes_the_digest(tmp_path):
    copy = tmp_path / "tarpo"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest(PACKAGE_DIR)
    (copy / "notes.txt").write_text("not code")
    assert source_digest(copy) == source_digest(PACKAGE_DIR)  # only the .py files count
    with open(copy / "plots.py", "a") as fh:
        fh.write("# an edit\n")
    assert source_digest(copy) != source_digest(PACKAGE_DIR)


def test_the_code_version_has_the_commit_in_a_checkout_and_the_digest_everywhere(tmp_path):
    code = code_version()
    assert code["source_sha256"] == source_digest()
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert code["git_commit"] == head.strip() and isinstance(code["git_dirty"], bool)
        assert describe(code).startswith(f"commit {head.strip()[:10]}")
    assert git_state(tmp_path) is None  # not a checkout
    assert describe({"source_sha256": "ab" * 32}) == f"sources sha256 {'ab' * 6} (not a git checkout)"


def test_the_output_being_written_is_not_an_uncommitted_change(tmp_path):
    """Snakemake removes a job's old output before the job runs: the results page, tracked by git, is then
    "deleted" while the page is being made, which must not mark the code it was made with as uncommitted."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "pkg").mkdir()
    (repo / "docs" / "results.md").write_text("old page\n")
    (repo / "pkg" / "code.py").write_text("x = 1\n")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t"})

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    page = repo / "docs" / "results.md"
    page.unlink()  # what Snakemake does before the page's job
    assert git_state(repo / "pkg")["git_dirty"] is True
    assert git_state(repo / "pkg", ignore=(str(page),))["git_dirty"] is False
    (repo / "pkg" / "code.py").write_text("x = 2\n")  # a real change still counts
    assert git_state(repo / "pkg", ignore=(str(page),))["git_dirty"] is True
    assert git_state(repo / "pkg", ignore=(str(tmp_path / "elsewhere.md"),))["git_dirty"] is True


@pytest.mark.workflow
def test_a_source_change_reruns_the_jobs_the_old_code_made(tmp_path):
    """A real `prepare` job, then dry runs: nothing to do, until a file of the package changes."""
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, wd / sub)
    src = tmp_path / "src"
    shutil.copytree(PACKAGE_DIR, src / "tarpo", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(src), TARPO_TRACKING="off")  # the workflow and its jobs import the copy
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    def snakemake(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "results/smoke/data/synthetic",
                               "--configfile", "config/smoke.yaml", *args], cwd=wd, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    snakemake()
    assert "Nothing to be done" in snakemake("-n")
    with open(src / "tarpo" / "data" / "synthetic.py", "a") as fh:
        fh.write("# an edit\n")
    out = snakemake("-n")
    assert "rule prepare" in out and "Params have changed" in out, out
