#!/usr/bin/env bash
# The GPU path in one command, on a machine with one GPU (about 5 minutes on an H100): bf16 rollouts eager and
# compiled (reduce-overhead) and one RL step per mode on a random-weight Qwen2.5-1.5B-shaped model, with decode
# steps/s, tokens/s, the share of the memory-bandwidth limit and peak memory (perf/gpu_check.py).
#   bash perf/gpu_check.sh [OUT_DIR]      # writes OUT_DIR/gpu_check.json and .log (default: results/perf)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/perf}"
mkdir -p "$out"
python=python
[ -x .venv/bin/python ] && python=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
timeout 290 "$python" perf/gpu_check.py --preset 1.5b --batch 32 --prompt-tokens 128 --new-tokens 128 \
  --repeats 3 --json "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
