"""The GPU path, measured in one go: rollouts and one RL step for every mode on a random-weight model.

Not a test: it prints a table (and --json). Per mode, on a random-weight Qwen2 of the preset's shape (default:
Qwen2.5-1.5B's, bf16 on a GPU): the rollout eager and compiled (static cache + torch.compile, 'reduce-overhead'
= CUDA graphs on a GPU), each as decode steps/s and tokens/s, and the share of the memory-bandwidth limit a
decode step reaches: (bytes of weights + KV cache read per step) / step time / the card's bandwidth. Then one
RL step (rollout scored, GRPO loss, backward, AdamW) and the peak memory. EOS is disabled so every row decodes
--new-tokens steps. perf/gpu_check.sh runs it on a one-GPU machine within 5 minutes.

    python perf/gpu_check.py                                    # 1.5b, cuda, bf16
    python perf/gpu_check.py --preset tiny --device cpu --new-tokens 8 --batch 4     # the logic, on a CPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from tarpo.loss import group_advantages, grpo_loss
from tarpo.rollout import AnswerMarker, generate, score

from common import METHODS, PRESETS, CharTokenizer, preset_mode, random_model, seconds

# Peak memory bandwidth of common cards, GB/s (vendor figures); --bandwidth-gbs for others.
BANDWIDTH_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
                 "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
                 "L40S": 864, "A10G": 600, "L4": 300}


def card_bandwidth(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(GB/s, where it came from) for the device: --bandwidth-gbs, else the card's name in BANDWIDTH_GBS."""
    if override:
        return override, "--bandwidth-gbs"
    if device.type != "cuda":
        return None, "unknown for a CPU (pass --bandwidth-gbs)"
    name = torch.cuda.get_device_name(device)
    for key, value in sorted(BANDWIDTH_GBS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return float(value), name
    return None, f"{name}: not in the table (pass --bandwidth-gbs)"


def step_bytes(model, batch: int, prompt: int, new_tokens: int) -> float:
    """Mean bytes a decode step reads: every weight once, plus the KV cache of every row so far."""
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize
    mean_positions = prompt + (new_tokens - 1) / 2
    return weights + batch * mean_positions * per_position


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident set


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--batch", type=int, default=32, help="rows decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per mode and path (median)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--compile-mode", help="torch.compile mode (default: reduce-overhead on cuda)")
    parser.add_argument("--no-compiled", action="store_true", help="time the eager path only")
    parser.add_argument("--bandwidth-gbs", type=float, help="the card's peak memory bandwidth")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    bandwidth, bandwidth_source = card_bandwidth(device, args.bandwidth_gbs)
    started = time.perf_counter()
    model = random_model(args.preset, device, dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    marker = AnswerMarker(CharTokenizer(model.config.vocab_size), model.config.vocab_size).to(device)
    generator = torch.Generator(device=device)
    prompt = torch.randint(100, model.config.vocab_size - 3, (args.batch, args.prompt_tokens), device=device,
                           generator=generator.manual_seed(0))
    mask = torch.ones_like(prompt)
    moved = step_bytes(model, args.batch, args.prompt_tokens, args.new_tokens)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset}: {n_params / 1e9:.3f}B params, {device_name}, {str(dtype).removeprefix('torch.')}, "
          f"batch {args.batch}, prompt {args.prompt_tokens}, new tokens {args.new_tokens}; bandwidth "
          f"{f'{bandwidth:.0f} GB/s' if bandwidth else '?'} ({bandwidth_source}); {moved / 1e9:.2f} GB read per step")
    print(f"{'mode':>10} {'path':>8} {'steps/s':>9} {'tokens/s':>10} {'bw share':>9} {'compile s':>10} "
          f"{'RL step s':>10} {'peak MiB':>9}")
    rows = []
    for method in args.methods:
        mode = preset_mode(method, model, device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def rollout(compiled: bool):
            return generate(model, mode, prompt, mask, max_new_tokens=args.new_tokens, temperature=0.7, eos_ids=[],
                            pad_id=0, marker=marker, compiled=compiled, compile_mode=args.compile_mode,
                            generator=generator.manual_seed(1))

        for path in ("eager",) if args.no_compiled else ("eager", "compiled"):
            compiled = path == "compiled"
            first = seconds(lambda: rollout(compiled), device)  # compiles on the compiled path
            step_s = statistics.median(seconds(lambda: rollout(compiled), device)
                                       for _ in range(args.repeats)) / args.new_tokens
            row = {"method": method, "path": path, "decode_steps_per_s": 1 / step_s,
                   "tokens_per_s": args.batch / step_s, "bytes_per_step": moved,
                   "bandwidth_share": moved / step_s / (bandwidth * 1e9) if bandwidth else None,
                   "compile_s": max(first - step_s * args.new_tokens, 0.0) if compiled else None}
            rows.append(row)

        # one RL step on the eager rollout: score, loss, backward, optimiser
        model.train()
        params = [p for p in [*model.parameters(), *mode.parameters()] if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        sample = rollout(False)

        def rl_step():
            logps = score(model, mode, sample, 0.7)
            rewards = (torch.arange(args.batch, device=device) % 2).float()
            out = grpo_loss(logps, None, None, group_advantages(rewards, 2 if args.batch % 2 == 0 else 1),
                            sample.valid, 0.0, action_mask=sample.thinking if "action" in logps else None,
                            action_weight=0.1, stream_masks=mode.loss_masks(sample.meta, sample.valid))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rl_step()  # warm-up (allocates the optimiser's state)
        rl_s = statistics.median(seconds(rl_step, device) for _ in range(max(1, args.repeats - 1)))
        model.eval()
        peak = peak_memory_mib(device)
        for row in rows[-(1 if args.no_compiled else 2):]:
            row.update(rl_step_s=rl_s, peak_memory_mib=peak)
            share = f"{row['bandwidth_share']:.1%}" if row["bandwidth_share"] is not None else "?"
            compile_s = f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "-"
            print(f"{method:>10} {row['path']:>8} {row['decode_steps_per_s']:>9.1f} {row['tokens_per_s']:>10.0f} "
                  f"{share:>9} {compile_s:>10} {rl_s:>10.2f} {peak:>9.0f}", flush=True)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "device": device_name, "dtype": str(dtype), "n_params": n_params, "bandwidth_gbs": bandwidth,
              "bandwidth_source": bandwidth_source, "rows": rows, "seconds": time.perf_counter() - started}
    print(f"done in {result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
