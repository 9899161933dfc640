"""One GRPO step of this project's trainer against TRL's GRPOTrainer: same backbone, prompts and lengths.

Not a test: it prints figures. TRL is an optional extra (`pip install -e .[perf]`), never a dependency of the
pipeline. Both trainers start from the same warm-started backbone, take the same prompts (the training split,
in order), sample `--group` completions of at most `--max-new-tokens` tokens for each of `--prompts` prompts
at the config's temperature, score them with the same reward (`tarpo.rewards.reward`), and take one AdamW step
with the same learning rate and KL coefficient (a reference forward on both sides). Each side runs `--warmup`
untimed steps and then `--steps` timed ones; the table shows the median step time, the mean completion length
(the sampled lengths decide most of the cost) and the ratio.

    python perf/trl_step.py --backbone-dir results/default/backbones/tiny --data results/default/data/synthetic
    python perf/trl_step.py ... --prompts 8 --group 8 --steps 5 --threads 2 --json /tmp/trl_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from tarpo.config import load_config
from tarpo.console import setup_logging
from tarpo.io import read_jsonl
from tarpo.rewards import reward


def tarpo_step_times(cfg, backbone: str, backbone_dir: Path, data: Path, warmup: int, steps: int
                     ) -> tuple[list[float], float]:
    """Seconds per timed step of this project's GRPO trainer, and its mean completion length."""
    from tarpo.trainer import GrpoTrainer

    times, lengths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GrpoTrainer(cfg, backbone, "grpo", backbone_dir, data, Path(tmp) / "checkpoint")
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            metrics = trainer.train_step().metrics
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                lengths.append(metrics["completion_length"])
    return times, statistics.mean(lengths)


def trl_step_times(cfg, backbone_dir: Path, data: Path, warmup: int, steps: int) -> tuple[list[float], float]:
    """Seconds per timed step of TRL's GRPOTrainer on the same backbone, prompts and settings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tarpo.data.template import build_prompt

    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(backbone_dir, dtype=torch.float32)
    n = t.prompts_per_step * (warmup + steps)
    records = read_jsonl(data / "train.jsonl")[:n]
    dataset = Dataset.from_list([{"prompt": build_prompt(tokenizer, r["question"]), "answer": str(r["answer"])}
                                 for r in records])

    def accuracy(completions: list[str], answer: list[str], **_) -> list[float]:
        return [reward(c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    lengths: list[float] = []

    class Lengths(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=t.prompts_per_step * t.group_size,
            num_generations=t.group_size, max_completion_length=t.max_new_tokens, temperature=t.temperature,
            learning_rate=t.learning_rate, beta=t.beta, max_steps=warmup + steps, logging_steps=1,
            report_to="none", save_strategy="no", use_cpu=True, bf16=False, shuffle_dataset=False,
            disable_dropout=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer, Lengths()])
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts would bury the table
        trainer.train()
    return timer.times[warmup:], statistics.mean(lengths[warmup:]) if lengths[warmup:] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example:\n  python perf/trl_step.py --backbone-dir results/default/backbones/tiny "
                                            "--data results/default/data/synthetic",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--backbone-dir", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (what tarpo did before tarpo.allocator)")
    args = parser.parse_args()
    if not args.default_malloc:
        from tarpo.allocator import keep_freed_memory

        keep_freed_memory()  # as the tarpo command does
    setup_logging()  # also turns off transformers' weight-loading bars
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = yaml.safe_load(Path(args.config).read_text())
    raw.setdefault("train", {}).update(prompts_per_step=args.prompts, group_size=args.group, grad_accum=1,
                                       max_new_tokens=args.max_new_tokens, checkpoint_every=0,
                                       steps=args.warmup + args.steps)
    cfg = load_config(raw)
    ours, our_len = tarpo_step_times(cfg, args.backbone, args.backbone_dir, args.data, args.warmup, args.steps)
    theirs, their_len = trl_step_times(cfg, args.backbone_dir, args.data, args.warmup, args.steps)
    t = cfg.train
    rows = {"tarpo GrpoTrainer": (ours, our_len), "trl GRPOTrainer": (theirs, their_len)}
    print(f"GRPO step, {t.prompts_per_step} prompts x {t.group_size} completions, <= {t.max_new_tokens} new tokens, "
          f"T {t.temperature}, beta {t.beta}, threads {torch.get_num_threads()}; median of {args.steps} steps "
          f"after {args.warmup} warm-up")
    print(f"{'trainer':20s} {'s/step':>8s} {'min':>7s} {'max':>7s} {'mean completion':>16s} {'ms/token':>9s}")
    n = t.prompts_per_step * t.group_size
    for name, (times, length) in rows.items():
        print(f"{name:20s} {statistics.median(times):8.3f} {min(times):7.3f} {max(times):7.3f} {length:16.1f} "
              f"{1000 * statistics.median(times) / (n * length):9.3f}")
    ratio = statistics.median(ours) / statistics.median(theirs)
    per_token = (statistics.median(ours) / our_len) / (statistics.median(theirs) / their_len)
    print(f"ratio tarpo / trl: {ratio:.2f} per step, {per_token:.2f} per generated token (target <= 0.6)")
    if args.json:
        Path(args.json).write_text(json.dumps({"tarpo_s": ours, "trl_s": theirs, "tarpo_len": our_len,
                                               "trl_len": their_len, "ratio": ratio, "ratio_per_token": per_token,
                                               "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
