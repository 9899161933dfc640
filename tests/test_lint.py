"""The linter sees every Python file of the project (configured in pyproject.toml, [tool.ruff])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_reports_no_problems():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "All checks passed" in proc.stdout


def test_ruff_checks_the_perf_scripts_and_the_tests_too():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    files = {Path(line).relative_to(REPO).as_posix() for line in proc.stdout.splitlines() if line.endswith(".py")}
    assert {"src/tarpo/rollout.py", "tests/test_lint.py", "perf/gpu_check.py", "tools/results.py",
            "src/tarpo/sandbox_programs/runner.py", "src/tarpo/sandbox_programs/checker.py"} <= files


def test_the_package_has_no_import_circles():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from import_graph import circles, import_graph
    finally:
        sys.path.remove(str(REPO / "tools"))
    graph, lines = import_graph()
    assert "tarpo.rollout" in graph and "tarpo.modes" in graph["tarpo.rollout"] and len(graph) > 30
    assert circles(graph) == []
    # the check can fail: a circle by hand is found
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
