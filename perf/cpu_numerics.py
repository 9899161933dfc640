"""Do pinned CPU numerics make a training run the same bits on another x86 CPU, and at what cost?

Not a test: it prints figures. The same default run gives other numbers on
another CPU because float reductions differ: ATen's vectorised kernels
dispatch on the CPU's instruction set (ATEN_CPU_CAPABILITY), MKL's BLAS on the
CPU model and vendor (MKL_CBWR pins a code path), oneDNN on its ISA
(ONEDNN_MAX_CPU_ISA). This script cannot borrow another CPU; it emulates an
older one on this machine by capping each library's instruction set
(ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2),
and asks whether a pinned setting (every library at AVX2, MKL in conditional
numerical reproducibility mode) gives the same bits on the native and the
emulated CPU, and what the pinning costs in speed.

Each setting runs in a fresh process (the variables are read at import): a
tiny Qwen2 (the default backbone's shape) trains `--steps` AdamW steps on fixed
random tokens with one thread; the process prints a hash of the final weights
and the time per step.

    python perf/cpu_numerics.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

EMULATE_OLDER = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS = {
    "native": {},
    "emulated older CPU": EMULATE_OLDER,
    "pinned, native": PINNED,
    "pinned, emulated older CPU": {**EMULATE_OLDER, **PINNED},
    "ATen only pinned, native": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen only pinned, emulated older CPU": {**EMULATE_OLDER, "ATEN_CPU_CAPABILITY": "avx2"},
}


def child(steps: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tarpo.config import TinyModelConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = TinyModelConfig()
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=512, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    tokens = torch.randint(0, 512, (16, 96), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = (time.perf_counter() - start) / steps
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]
    print(json.dumps({"hash": digest, "loss": float(loss), "step_s": seconds,
                      "capability": torch.backends.cpu.get_cpu_capability()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps)
        return
    base = {k: v for k, v in os.environ.items() if k not in {*EMULATE_OLDER, *PINNED, "MKL_CBWR"}}
    rows = {}
    for name, extra in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], check=True,
                             capture_output=True, text=True, env={**base, "OMP_NUM_THREADS": "1", **extra})
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[name]
        print(f"{name:38s} weights {r['hash']}  loss {r['loss']:.6f}  {1000 * r['step_s']:6.1f} ms/step  "
              f"(ATen {r['capability']})", flush=True)
    same = rows["native"]["hash"] == rows["emulated older CPU"]["hash"]
    pinned_same = rows["pinned, native"]["hash"] == rows["pinned, emulated older CPU"]["hash"]
    aten_same = rows["ATen only pinned, native"]["hash"] == rows["ATen only pinned, emulated older CPU"]["hash"]
    cost = rows["pinned, native"]["step_s"] / rows["native"]["step_s"]
    print(f"\nunpinned: native and emulated older CPU give {'the same' if same else 'different'} weights")
    print(f"ATen pinned only: {'the same' if aten_same else 'different'} weights")
    print(f"pinned (ATen + MKL CNR + oneDNN at AVX2): {'the same' if pinned_same else 'different'} weights; "
          f"speed cost on this CPU: {cost:.2f}x the native step time")


if __name__ == "__main__":
    main()
