"""tarpo.allocator: glibc keeps freed memory, so a repeated large-tensor step stops faulting its pages in."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

STEP = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from tarpo.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
w = torch.randn(128, 512, requires_grad=True)
h = torch.randn(128, 256, 128)
def step():  # 64 MiB of logits and as much gradient, as a training micro-batch makes
    (h @ w).log_softmax(-1).logsumexp(-1).sum().backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").gnu_get_libc_version
        return sys.platform.startswith("linux")
    except (OSError, AttributeError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_a_repeated_step_faults_far_fewer_pages_with_freed_memory_kept():
    faults = {how: int(subprocess.run([sys.executable, "-c", STEP, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("default", "tuned")}
    # 64 MiB is 16384 pages: by default every step maps them afresh; kept, the heap is reused
    assert faults["default"] > 16384
    assert faults["tuned"] < 0.5 * faults["default"], faults


def test_without_glibc_nothing_changes(monkeypatch):
    from tarpo import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
