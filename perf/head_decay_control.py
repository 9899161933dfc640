"""Zero-advantage control: how far weight decay alone moves HRPO's gate and TARPO's action head.

Not a test: it prints figures. Builds a tiny backbone and synthetic data with
tarpo's own functions (in a temporary directory), then trains HRPO (head lr
3e-2) and TARPO (head lr 3e-3) for a few steps with every completion rewarded
alike (all advantages 0) and beta = 0, so every gradient is 0 and Adam's step
is 0: whatever moves is moved by AdamW's decay, w <- w (1 - lr_t wd). Each
method runs twice: with the optimiser groups before issue 20 (the mode's
weights and HRPO's Lambda decayed at 0.1, its biases exempt) and as built
(no mode parameter decayed).

    python perf/head_decay_control.py
    python perf/head_decay_control.py --steps 6 --project-steps 100
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from tarpo import trainer as trainer_module
from tarpo.backbone import build_backbone
from tarpo.config import load_config
from tarpo.data.synthetic import prepare_dataset
from tarpo.optim import no_decay_names, optimizer_groups
from tarpo.trainer import GrpoTrainer

CONFIG = {
    "name": "head-decay-control",
    "datasets": {"synthetic": {"n_train": 60, "n_test_id": 8, "n_test_ood": 8}},
    "backbones": {"tiny": {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                                     "intermediate_size": 64, "vocab_size": 300},
                           "warm_start": {"steps": 4, "batch_size": 8, "eval_problems": 2}}},
    # the default run's router settings (config/config.yaml): weight decay 0.1, TARPO's hard bias 2.2
    "train": {"adapter": "full", "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12, "checkpoint_every": 0,
              "learning_rate": 1e-4, "beta": 0.0, "weight_decay": 0.1, "action_bias_hard": 2.2, "soft_top_k": 4,
              "lepo_top_k": 4},
}
HEAD_LR = {"hrpo": 3e-2, "tarpo": 3e-3}


def gate_at_r1(trainer: GrpoTrainer, log_lambda: torch.Tensor) -> torch.Tensor:
    """a(r = 1) = exp(-c softplus(-Lambda)) per dimension: the most latent the gate can go."""
    return torch.exp(-trainer.tcfg.hrpo_c * F.softplus(-log_lambda))


def schedule_shrink(lr: float, wd: float, steps: int, warmup_ratio: float) -> float:
    """prod_t (1 - lr_t wd) under the trainer's cosine schedule with linear warm-up."""
    warm = math.ceil(warmup_ratio * steps)
    total = 1.0
    for t in range(steps):
        factor = t / max(1, warm) if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))
        total *= 1 - lr * factor * wd
    return total


def groups_before_issue_20(model, mode, cfg):
    """The optimiser groups before issue 20: the mode's parameters split by the policy's rule (biases exempt)."""
    groups = [g for g in optimizer_groups(model, mode, cfg) if g["name"].startswith("policy")]
    named = [(n, p) for n, p in mode.named_parameters() if p.requires_grad]
    exempt = no_decay_names(mode)
    for suffix, params, decay in (("", [p for n, p in named if n not in exempt], cfg.weight_decay),
                                  ("_no_decay", [p for n, p in named if n in exempt], 0.0)):
        if params:
            groups.append({"params": params, "lr": cfg.head_learning_rate, "weight_decay": decay,
                           "name": "head" + suffix})
    return groups


def control(root: Path, method: str, old_groups: bool, steps: int):
    """(trainer, mode parameters before, last step) after `steps` zero-advantage steps."""
    raw = {**CONFIG, "train": {**CONFIG["train"], "steps": steps, "head_learning_rate": HEAD_LR[method]}}
    trainer_module.optimizer_groups = groups_before_issue_20 if old_groups else optimizer_groups
    try:
        trainer = GrpoTrainer(load_config(raw), "tiny", method, root / "backbone", root / "data",
                              root / f"{method}-{old_groups}" / "checkpoint")
    finally:
        trainer_module.optimizer_groups = optimizer_groups
    trainer.rewards = lambda rollout, texts, records: (torch.ones(len(texts)), {})  # every advantage 0
    before = {n: p.detach().clone() for n, p in trainer.mode.named_parameters()}
    for _ in range(steps):
        result = trainer.train_step()
        assert result.metrics["grad_norm"] == 0.0, "advantages were not all 0"
    return trainer, before, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--project-steps", type=int, default=100, help="the default run's steps, for the projection")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config(CONFIG)
        prepare_dataset(cfg.datasets["synthetic"], root / "data")
        build_backbone(cfg, "tiny", root / "data", root / "backbone")
        print(f"\n{args.steps} zero-advantage steps, beta 0, weight decay 0.1 on the policy's matrices; "
              f"change = |after - before| per element\n")
        for method in ("hrpo", "tarpo"):
            for old_groups in (True, False):
                trainer, before, result = control(root, method, old_groups, args.steps)
                decays = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
                print(f"{method} head lr {HEAD_LR[method]:g}, "
                      + ("groups before issue 20" if old_groups else "as built"))
                for name, p in trainer.mode.named_parameters():
                    change = (p.detach() - before[name]).abs()
                    print(f"  {name:<18} wd {decays[id(p)]:<4g} max {float(change.max()):.3e}  "
                          f"mean {float(change.mean()):.3e}  (|w| mean {float(before[name].abs().mean()):.3e})")
                if method == "hrpo":
                    mode, ref = trainer.mode, trainer.ref_mode
                    with torch.no_grad():
                        a1 = (gate_at_r1(trainer, ref.log_lambda).mean(), gate_at_r1(trainer, mode.log_lambda).mean())
                        rollout = result.rollout
                        embed = trainer.model.get_input_embeddings()
                        e = embed(rollout.tokens[rollout.thinking])
                        gates = (ref.gate(e)[0].mean(), mode.gate(e)[0].mean())
                    print(f"  a(r=1) mean        {float(a1[0]):.6f} -> {float(a1[1]):.6f}")
                    print(f"  mean gate a, last rollout's thinking steps: "
                          f"{float(gates[0]):.6f} -> {float(gates[1]):.6f}")
                if method == "tarpo":
                    bias = trainer.mode.action_head.bias.detach()
                    b0 = before["action_head.bias"]
                    print(f"  action bias        [{b0[0]:.6f}, {b0[1]:.6f}] -> [{bias[0]:.6f}, {bias[1]:.6f}]")
                wd = trainer.tcfg.weight_decay if old_groups else 0.0
                shrink = schedule_shrink(HEAD_LR[method], wd, args.steps, trainer.tcfg.warmup_ratio)
                print(f"  predicted factor on a decayed tensor, prod(1 - lr_t wd) = {shrink:.6f}")
                if old_groups and method == "hrpo":
                    long = schedule_shrink(HEAD_LR[method], wd, args.project_steps, trainer.tcfg.warmup_ratio)
                    lam = trainer.ref_mode.log_lambda.detach()
                    a_long = gate_at_r1(trainer, lam * long).mean()
                    print(f"  projected over {args.project_steps} steps: Lambda x {long:.4f}, "
                          f"a(r=1) mean {float(gate_at_r1(trainer, lam).mean()):.4f} -> {float(a_long):.4f}")
                if old_groups and method == "tarpo":
                    long = schedule_shrink(HEAD_LR[method], wd, args.project_steps, trainer.tcfg.warmup_ratio)
                    print(f"  projected over {args.project_steps} steps: the weight x {long:.4f} (the bias is exempt)")
                print()


if __name__ == "__main__":
    main()
