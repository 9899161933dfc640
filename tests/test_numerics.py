"""`make run` pins the CPU numerics: the same training steps give the same bits on an emulated older CPU."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "perf" / "cpu_numerics.py"

sys.path.insert(0, str(REPO / "perf"))
import cpu_numerics  # noqa: E402

pytestmark = [pytest.mark.slow]  # trains in subprocesses


def _train(extra: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in {*cpu_numerics.EMULATE_OLDER, *cpu_numerics.PINNED}}
    out = subprocess.run([sys.executable, str(SCRIPT), "--child", "--steps", "3"], check=True, capture_output=True,
                         text=True, env={**base, "OMP_NUM_THREADS": "1", **extra})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_make_run_pins_the_numerics_on_x86_and_native_turns_it_off():
    dry = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    native = subprocess.run(["make", "-n", "run", "NUMERICS=native"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    run_line = [ln for ln in dry.splitlines() if "snakemake" in ln][-1]
    pins = " ".join(f"{k}={v}" for k, v in cpu_numerics.PINNED.items())
    if platform.machine() == "x86_64":
        assert run_line.startswith(pins), run_line  # the Makefile's pins are the ones the script checks
    assert "ATEN_CPU_CAPABILITY" not in [ln for ln in native.splitlines() if "snakemake" in ln][-1]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the pins are x86 instruction sets")
def test_pinned_numerics_give_the_same_weights_on_an_emulated_older_cpu():
    pinned = _train(cpu_numerics.PINNED)
    older = _train({**cpu_numerics.EMULATE_OLDER, **cpu_numerics.PINNED})
    assert pinned["capability"] == older["capability"] == "AVX2"
    assert pinned["hash"] == older["hash"] and pinned["loss"] == older["loss"]
