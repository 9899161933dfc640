"""Where one RL step's time goes: rollout, reward, policy forward, reference forward, backward, optimiser.

Not a test: it prints figures. Builds the trainer exactly as `tarpo train`
does (same config, backbone and data), runs warm-up steps, then times the
phases of the next steps by wrapping the trainer's own functions.

    python perf/profile_step.py --backbone-dir results/default/backbones/tiny --data results/default/data/synthetic
    python perf/profile_step.py ... --method tarpo --steps 5 --config config/config.yaml
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tarpo import trainer as trainer_module
from tarpo.config import load_config


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.active: set[str] = set()

    def wrap(self, owner, name: str, label: str | None = None, label_fn=None) -> None:
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            label = label_fn() if label_fn else timed.label
            if label in timers.active:  # nested call of the same phase: time the outer one only
                return original(*args, **kwargs)
            timers.active.add(label)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[label] += time.perf_counter() - t0
                timers.active.discard(label)

        timed.label = label
        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example:\n  python perf/profile_step.py --backbone-dir "
                                            "results/default/backbones/tiny --data results/default/data/synthetic",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--method", default="grpo")
    parser.add_argument("--backbone-dir", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (what tarpo did before tarpo.allocator)")
    args = parser.parse_args()
    if not args.default_malloc:
        from tarpo.allocator import keep_freed_memory

        keep_freed_memory()  # as the tarpo command does

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_module.GrpoTrainer(cfg, args.backbone, args.method, args.backbone_dir, args.data,
                                             Path(tmp) / "checkpoint")
        for _ in range(args.warmup):
            trainer.train_step()

        timers = Timers()
        cls = type(trainer)
        # The trainer looks these names up at call time, so wrapping the module attributes times its calls.
        timers.wrap(trainer_module, "generate", "rollout (generate)")
        timers.wrap(cls, "rewards", "reward")
        timers.wrap(trainer_module, "completion_inputs", "input embeddings")
        timers.wrap(trainer_module, "score", label_fn=lambda: "policy forward" if torch.is_grad_enabled()
                    else "reference forward")
        timers.wrap(trainer_module, "grpo_loss", "loss")
        timers.wrap(torch.Tensor, "backward", "backward")
        timers.wrap(cls, "_sync_gradients", "gradient sync")
        timers.wrap(trainer.optimizer, "step", "optimiser step")

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        totals = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            trainer.train_step()
            totals.append(time.perf_counter() - t0)

    t = trainer.tcfg
    total = sum(totals)
    print(f"{args.method} on {args.backbone}: {t.prompts_per_step} prompts x {t.group_size} completions x "
          f"{t.grad_accum} accumulation, beta {t.beta}, threads {torch.get_num_threads()}")
    print(f"step: {statistics.mean(totals):.3f} s mean over {args.steps} (min {min(totals):.3f}, "
          f"max {max(totals):.3f})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {rss:.0f} MiB resident (process peak; {rss_before:.0f} MiB before the timed steps)"
          + (f", {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB CUDA allocated in the timed steps"
             if torch.cuda.is_available() else ""))
    print(f"{'phase':34s} {'s/step':>8s} {'share':>7s}")
    accounted = 0.0
    for label, seconds in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
        accounted += seconds
        print(f"{label:34s} {seconds / args.steps:8.3f} {seconds / total:7.1%}")
    print(f"{'other (decode, metrics, logging)':34s} {(total - accounted) / args.steps:8.3f} "
          f"{(total - accounted) / total:7.1%}")


if __name__ == "__main__":
    main()
