"""The perf/ scripts run and report consistent figures (their logic, on a CPU with a tiny preset: the GPU
figures themselves come from running perf/gpu_check.sh on a GPU machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "perf"


@pytest.fixture
def gpu_check():
    sys.path.insert(0, str(PERF))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(PERF))


def test_step_bytes_counts_the_weights_once_and_every_rows_cache(gpu_check):
    import torch

    from common import random_model

    model = random_model("tiny", torch.device("cpu"), torch.float32)
    c = model.config  # 2 layers, 2 KV heads of 64 / 4 = 16 dims
    weights = 4 * sum(p.numel() for p in model.parameters())
    per_position = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert per_position == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 heads, 16 dims, fp32
    # 3 rows, a 10-token prompt, 5 new tokens: the steps read 10, 11, ..., 14 positions, 12 on average
    assert gpu_check.step_bytes(model, 3, 10, 5) == weights + 3 * 12 * per_position


def test_gpu_check_reports_every_mode_on_a_cpu(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(PERF / "gpu_check.py"), "--preset", "tiny", "--device", "cpu",
                           "--batch", "4", "--prompt-tokens", "6", "--new-tokens", "5", "--repeats", "2",
                           "--no-compiled", "--bandwidth-gbs", "100", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["grpo", "hrpo", "lepo", "tarpo", "atp_latent"]
    for row in rows:
        assert row["path"] == "eager" and row["decode_steps_per_s"] > 0 and row["rl_step_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(4 * row["decode_steps_per_s"])
        # the share of the limit: bytes per step x steps per second / bandwidth
        assert row["bandwidth_share"] == pytest.approx(row["bytes_per_step"] * row["decode_steps_per_s"] / 100e9)
        assert row["peak_memory_mib"] > 0
    assert result["bandwidth_source"] == "--bandwidth-gbs"
    assert "atp_latent" in proc.stdout and "done in" in proc.stdout
