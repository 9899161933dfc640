"""What code a result was made with: the git commit (and whether the checkout had uncommitted changes)
when the package runs from a git checkout, and always a digest of the package's sources.

    {"source_sha256": "...", "git_commit": "4c414ce...", "git_dirty": false}

`source_sha256` hashes the relative path and bytes of every src/tarpo/**/*.py, so it is there in an
installed copy too, and two runs with the same digest ran the same package code. The workflow passes
the same digest to its rules as a param, so a change to the package's code reruns the jobs it made.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def source_digest(root: str | Path = PACKAGE_DIR) -> str:
    """sha256 over the relative paths and contents of every .py file under `root` (caches skipped)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def git_state(path: str | Path = PACKAGE_DIR, ignore: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """{"git_commit", "git_dirty"} of the checkout holding `path`; None outside one (or without git). Changes
    to the files in `ignore` (e.g. the output being written, which Snakemake removes before its job runs) do
    not count as uncommitted."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        excluded = []
        for name in ignore:
            target = Path(name).resolve()
            if target.is_relative_to(top):
                excluded.append(f":(top,exclude){target.relative_to(top).as_posix()}")
        spec = ["--", ":/", *excluded] if excluded else []
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", *spec))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"git_commit": commit, "git_dirty": dirty}


@functools.lru_cache(maxsize=4)
def code_version(ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """This process's package code: its source digest, and its git commit and dirty flag when in a checkout
    (changes to the files in `ignore` aside, see `git_state`)."""
    return {"source_sha256": source_digest(), **(git_state(ignore=ignore) or {})}


def describe(code: dict[str, Any]) -> str:
    """One phrase for a page: `commit 4c414ce (uncommitted changes), sources sha256 1a2b3c4d5e6f`."""
    sources = f"sources sha256 {code['source_sha256'][:12]}"
    if "git_commit" not in code:
        return f"{sources} (not a git checkout)"
    return f"commit {code['git_commit'][:10]}{' (uncommitted changes)' if code['git_dirty'] else ''}, {sources}"
