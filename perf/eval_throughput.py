"""Evaluation throughput: `tarpo evaluate`'s sampling against HF `model.generate` on the same work.

Not a test: it prints figures. Same model, problems, k, temperature and max_new_tokens for both; both stop a
row at EOS. Ours is `evaluate.sample_batch` (the shared rollout engine, finished rows leave the batch, plus
the answer checks `tarpo evaluate` does), timed with and without compaction; `generate` is timed on the
same batches of prompts (its samples are decoded, not scored: the comparison favours it). Per mode:
explicit (cot / grpo), hrpo, lepo and tarpo, each from its trained checkpoint when --checkpoints holds one
(`{method}/seed0/checkpoint`), else with the mode's fresh heads on the bare backbone.

    python perf/eval_throughput.py                                   # the default run's backbone and data
    python perf/eval_throughput.py --problems 256 --batch 32 --batch 128 --threads 1

Run after `make run` (or point --backbone-dir / --data-root at a run's results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tarpo import rollout as rollout_engine
from tarpo.config import load_config
from tarpo.data.batching import encode_prompts
from tarpo.data.benchmarks import load_benchmark
from tarpo.evaluate import batch_seed, eval_train_config, sample_batch
from tarpo.policy import load_policy
from tarpo.rollout import AnswerMarker, eos_token_ids

MODES = {"explicit": "grpo", "hrpo": "hrpo", "lepo": "lepo", "tarpo": "tarpo"}


def ours(model, tokenizer, mode, records, args, batch: int, marker, eos_ids, device) -> tuple[float, int]:
    """Seconds and generated tokens of `sample_batch` over the records, `batch` problems at a time."""
    started, tokens = time.perf_counter(), 0
    for b in range(0, len(records), batch):
        rows = sample_batch(model, tokenizer, mode, records[b:b + batch], k=args.k, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, max_prompt_tokens=256,
                            seed=batch_seed(0, "bench", b), eos_ids=eos_ids, marker=marker, device=device)
        tokens += sum(r["n_tokens"] for problem in rows for r in problem)
    return time.perf_counter() - started, tokens


def hf_generate(model, tokenizer, records, args, batch: int, eos_ids, device) -> tuple[float, int]:
    """Seconds and generated tokens of `model.generate` (sampling, EOS stops a row) on the same batches."""
    started, tokens = time.perf_counter(), 0
    torch.manual_seed(0)
    for b in range(0, len(records), batch):
        questions = [r["question"] for r in records[b:b + batch] for _ in range(args.k)]
        ids, mask = encode_prompts(tokenizer, questions, 256, device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=args.temperature, top_k=0,
                                 top_p=1.0, max_new_tokens=args.max_new_tokens, eos_token_id=eos_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        completion = out[:, ids.shape[1]:]
        ended = torch.isin(completion, torch.tensor(eos_ids, device=device))
        # tokens up to and including the first EOS (generate pads after it)
        no_end = torch.full_like(ended[:, 0], completion.shape[1], dtype=torch.long)
        first_end = torch.where(ended.any(-1), ended.float().argmax(-1) + 1, no_end)
        tokens += int(first_end.sum())
        tokenizer.batch_decode(completion, skip_special_tokens=True)
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--backbone-dir", default="results/default/backbones/tiny")
    parser.add_argument("--data-root", default="results/default/data")
    parser.add_argument("--checkpoints", default="results/default/tiny", help="a run's results/{name}/{backbone} directory")
    parser.add_argument("--benchmark", default="synthetic_test_id")
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch", type=int, action="append", help="problems per batch (repeatable; default 32)")
    parser.add_argument("--mode", action="append", choices=sorted(MODES), help="repeatable; default all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = load_config(Path(args.config))
    records = load_benchmark(args.benchmark, Path(args.data_root), cfg.benchmarks, cfg.datasets)[: args.problems]
    n_samples = len(records) * args.k
    print(f"{args.benchmark}: {len(records)} problems x k={args.k}, temperature {args.temperature}, "
          f"max_new_tokens {args.max_new_tokens}, {args.threads} thread(s)")
    print(f"{'mode':>9} {'batch':>6} {'generate':>10} {'ours':>10} {'no compact':>11} {'speed-up':>9} {'tokens/row':>10}")
    figures = []
    for name in args.mode or list(MODES):
        method = MODES[name]
        checkpoint = Path(args.checkpoints) / method / "seed0" / "checkpoint"
        checkpoint = checkpoint if (checkpoint / "policy.json").exists() else None
        tcfg = eval_train_config(cfg, args.backbone, method)
        model, tokenizer, mode = load_policy(Path(args.backbone_dir), method, tcfg, checkpoint, device)
        marker = AnswerMarker(tokenizer, model.config.vocab_size).to(device)
        eos_ids = eos_token_ids(tokenizer, model)
        for batch in args.batch or [32]:
            gen_s, gen_tokens = hf_generate(model, tokenizer, records, args, batch, eos_ids, device)
            our_s, our_tokens = ours(model, tokenizer, mode, records, args, batch, marker, eos_ids, device)
            rollout_engine.COMPACT_FINISHED_SHARE = float("inf")  # never compact
            full_s, _ = ours(model, tokenizer, mode, records, args, batch, marker, eos_ids, device)
            rollout_engine.COMPACT_FINISHED_SHARE = 0.25
            row = {"mode": name, "trained": checkpoint is not None, "batch_problems": batch,
                   "generate_samples_per_s": n_samples / gen_s, "ours_samples_per_s": n_samples / our_s,
                   "ours_no_compaction_samples_per_s": n_samples / full_s, "speedup_vs_generate": gen_s / our_s,
                   "ours_tokens_per_sample": our_tokens / n_samples, "generate_tokens_per_sample": gen_tokens / n_samples}
            figures.append(row)
            print(f"{name:>9} {batch:>6} {n_samples / gen_s:>8.1f}/s {n_samples / our_s:>8.1f}/s "
                  f"{n_samples / full_s:>9.1f}/s {gen_s / our_s:>8.2f}x {our_tokens / n_samples:>10.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
