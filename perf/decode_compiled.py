"""Rollout throughput of every mode: eager (dynamic cache) vs static cache + compiled step vs `model.generate`.

Not a test: it prints a table. Same model, prompts and number of new tokens for all (EOS disabled, so every
row generates exactly --new-tokens); each repeat runs model.generate, the eager and the compiled rollout in
turn (interleaved, so load from other processes hits all three alike) and the table shows the median
tokens/s. The first compiled call of a (mode, batch) compiles; its time is the "compile s" column.

    python perf/decode_compiled.py                                   # ~3M-param Qwen2, CPU, batch 16 and 64
    python perf/decode_compiled.py --device cuda --preset 1.5b --dtype bfloat16 --batch 64 --new-tokens 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tarpo import decode
from tarpo.config import TrainConfig
from tarpo.methods import build_mode
from tarpo.rollout import AnswerMarker, generate

from common import METHODS, PRESETS, CharTokenizer, seconds, sync


def phases(fn, mode, device, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per step of the compiled rollout's phases: the prefill (spread over the steps), the eager
    sampling, the compiled steps and the rest of the loop."""
    timers = {"prefill": [decode.StaticDecoder, "prefill"], "step": [decode.StaticDecoder, "step"],
              "sample": [mode, "sample"]}
    spent: dict[str, float] = {}

    def timed(name, original):
        def wrapper(*a, **kw):
            sync(device)
            t0 = time.perf_counter()
            out = original(*a, **kw)
            sync(device)
            spent[name] += time.perf_counter() - t0
            return out
        return wrapper

    originals = {name: getattr(owner, attr) for name, (owner, attr) in timers.items()}
    for name, (owner, attr) in timers.items():
        setattr(owner, attr, timed(name, originals[name]))
    try:
        runs = []
        for _ in range(repeats):
            spent.update({name: 0.0 for name in timers})
            total = seconds(fn, device)
            runs.append({**spent, "rest": total - sum(spent.values()), "total": total})
    finally:
        for name, (owner, attr) in timers.items():
            if owner is mode:
                del mode.sample  # back to the class's method
            else:
                setattr(owner, attr, originals[name])
    return {k: 1000 * statistics.median(r[k] for r in runs) / steps for k in runs[0]}


def bare_linears(model, batch: int, device, dtype, repeats: int) -> float:
    """ms for one pass of (batch, in) inputs through every linear layer of the model: the decode step's GEMMs."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, m.in_features, device=device, dtype=dtype) for m in linears]

    def run():
        with torch.no_grad():
            for m, x in zip(linears, inputs):
                m(x)

    run()
    return 1000 * statistics.median(seconds(run, device) for _ in range(max(repeats, 5) * 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="3m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: reduce-overhead on cuda, "
                                                            "default elsewhere)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the compiled rollout's phases (ms per step) and the model's bare linear layers")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = Qwen2Config(**PRESETS[args.preset], max_position_embeddings=4096, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    marker = AnswerMarker(CharTokenizer(config.vocab_size), config.vocab_size).to(device)
    cfg = TrainConfig(action_bias_hard=0.0)  # TARPO at ~50% soft steps: its most expensive regime
    print(f"model {args.preset}: {n_params / 1e6:.1f}M params, {device} {args.dtype}, threads "
          f"{torch.get_num_threads()}, prompt {args.prompt_tokens}, new tokens {args.new_tokens}, "
          f"median of {args.repeats} interleaved repeats")
    header = (f"{'mode':>10} {'batch':>5} {'generate':>10} {'eager':>10} {'compiled':>10} {'compiled/':>10} "
              f"{'compiled/':>10} {'eager/':>8} {'compile':>8}")
    print(header)
    print(f"{'':>10} {'':>5} {'tok/s':>10} {'tok/s':>10} {'tok/s':>10} {'generate':>10} {'eager':>10} "
          f"{'generate':>8} {'s':>8}")
    rows = []
    for batch in args.batch:
        prompt = torch.randint(100, config.vocab_size, (batch, args.prompt_tokens), device=device)
        mask = torch.ones_like(prompt)
        n_tokens = batch * args.new_tokens

        def hf_generate():
            with torch.no_grad():
                model.generate(prompt, attention_mask=mask, do_sample=True, temperature=0.5, top_k=0, top_p=1.0,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

        for method in args.methods:
            mode_cfg = cfg
            if method == "atp_latent":  # a latent block of up to 6 steps, then the answer
                mode_cfg = TrainConfig()
                mode_cfg.atp_latents_per_step, mode_cfg.atp_max_steps = 2, 3
            mode = build_mode(method, mode_cfg, config.hidden_size).to(device=device, dtype=dtype)
            if method == "atp_latent":  # <bol>, <eol>, <lat>: the last ids of the vocabulary
                mode.special_ids = {"<bol>": config.vocab_size - 3, "<eol>": config.vocab_size - 2,
                                    "<lat>": config.vocab_size - 1}

            def ours(compiled: bool):
                return generate(model, mode, prompt, mask, max_new_tokens=args.new_tokens, temperature=0.5,
                                eos_ids=[], pad_id=0, marker=marker, compiled=compiled,
                                compile_mode=args.compile_mode,
                                generator=torch.Generator(device=device).manual_seed(0))

            compile_s = seconds(lambda: ours(True), device)  # compiles (once per mode and shape)
            hf_generate(), ours(False), ours(True)  # warm-up
            times = {"generate": [], "eager": [], "compiled": []}
            for _ in range(args.repeats):
                times["generate"].append(seconds(hf_generate, device))
                times["eager"].append(seconds(lambda: ours(False), device))
                times["compiled"].append(seconds(lambda: ours(True), device))
            rate = {k: n_tokens / statistics.median(v) for k, v in times.items()}
            row = {"method": method, "batch": batch, **{f"{k}_tokens_per_s": v for k, v in rate.items()},
                   "compiled_vs_generate": rate["compiled"] / rate["generate"],
                   "compiled_vs_eager": rate["compiled"] / rate["eager"],
                   "eager_vs_generate": rate["eager"] / rate["generate"], "compile_s": compile_s}
            rows.append(row)
            print(f"{method:>10} {batch:>5} {rate['generate']:>10.0f} {rate['eager']:>10.0f} {rate['compiled']:>10.0f} "
                  f"{row['compiled_vs_generate']:>9.2f}x {row['compiled_vs_eager']:>9.2f}x "
                  f"{row['eager_vs_generate']:>7.2f}x {compile_s:>8.1f}", flush=True)
            if args.breakdown:
                row["breakdown_ms_per_step"] = phases(lambda: ours(True), mode, device, args.new_tokens, args.repeats)
                print(f"{'':>17}compiled, ms per step: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in row["breakdown_ms_per_step"].items()), flush=True)
        if args.breakdown:
            linear_ms = bare_linears(model, batch, device, dtype, args.repeats)
            print(f"{'':>17}the model's {sum(isinstance(m, torch.nn.Linear) for m in model.modules())} linear layers "
                  f"on {batch} rows, bare: {linear_ms:.2f} ms", flush=True)
            decode.clear_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "n_params": n_params, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
