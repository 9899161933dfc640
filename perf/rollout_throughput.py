"""Rollout throughput of every mode against `model.generate` sampling, and one train step's time.

Not a test: it prints figures. Same model, batch, prompt and number of new
tokens for all (EOS disabled so every row generates exactly --new-tokens).

    python perf/rollout_throughput.py                      # ~3M-param Qwen2, CPU
    python perf/rollout_throughput.py --preset 1.5b --device cuda --dtype bfloat16 --batch 64 --new-tokens 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tarpo.config import TrainConfig
from tarpo.loss import group_advantages, grpo_loss
from tarpo.methods import build_mode
from tarpo.rollout import AnswerMarker, generate, score

from common import PRESETS, CharTokenizer, sync


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="3m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = Qwen2Config(**PRESETS[args.preset], max_position_embeddings=4096, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(100, config.vocab_size, (args.batch, args.prompt_tokens), device=device)
    mask = torch.ones_like(prompt)
    marker = AnswerMarker(CharTokenizer(config.vocab_size), config.vocab_size).to(device)
    new_tokens = args.batch * args.new_tokens
    print(f"model {args.preset}: {n_params / 1e6:.1f}M params, {device} {args.dtype}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, prompt {args.prompt_tokens}, new tokens {args.new_tokens}")

    def hf_generate():
        with torch.no_grad():
            model.generate(prompt, attention_mask=mask, do_sample=True, temperature=0.5, top_k=0, top_p=1.0,
                           max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

    base = timed(hf_generate, device, args.repeats)
    figures = {"generate_tokens_per_s": new_tokens / base}
    print(f"{'model.generate':>16}: {new_tokens / base:10.1f} tokens/s")
    cfg = TrainConfig(action_bias_hard=0.0)  # TARPO at ~50% soft steps: its most expensive regime
    for method in ("grpo", "hrpo", "lepo", "tarpo"):
        mode = build_mode(method, cfg, config.hidden_size).to(device=device, dtype=dtype)

        def ours():
            return generate(model, mode, prompt, mask, max_new_tokens=args.new_tokens, temperature=0.5, eos_ids=[],
                            pad_id=0, marker=marker, generator=torch.Generator(device=device).manual_seed(0))

        seconds = timed(ours, device, args.repeats)
        figures[f"{method}_tokens_per_s"] = new_tokens / seconds
        figures[f"{method}_vs_generate"] = base / seconds
        print(f"{method:>16}: {new_tokens / seconds:10.1f} tokens/s  ({base / seconds:.2f}x generate)")

        rollout = ours()

        def train_step():
            logps = score(model, mode, rollout, 0.5)
            rewards = torch.arange(args.batch, device=device).float() % 2
            out = grpo_loss(logps, None, None, group_advantages(rewards, 2 if args.batch % 2 == 0 else 1),
                            rollout.valid, 0.0, action_mask=rollout.thinking if "action" in logps else None,
                            action_weight=0.1)
            out.loss.backward()
            model.zero_grad(set_to_none=True)

        step = timed(train_step, device, args.repeats)
        figures[f"{method}_train_step_s"] = step
        print(f"{'':>16}  train forward+backward: {step * 1000:.0f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "n_params": n_params, **figures}, fh, indent=2)


if __name__ == "__main__":
    main()
