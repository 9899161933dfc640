"""tarpo.loss.grpo_loss against TRL's GRPOTrainer._compute_loss on identical tensors, per loss type.

Not a test: it prints a table (tests/test_loss.py asserts the same figures). TRL's own `_compute_loss` is called,
unbound, on a stub `self` that holds only the attributes it reads (loss type, clip ranges, beta, importance
sampling level, gradient-accumulation and process counts, a metrics dict), and whose
`_get_per_token_logps_and_entropies` hands back the given per-token log-probs instead of running a model. So
what is compared is TRL's real aggregation, clipping and KL code, not a transcription. Both sides get the same
log-probs, old log-probs (ratios away from 1, so clipping acts), reference log-probs, advantages and masks
(completions of unequal lengths); the table shows max |loss difference| and max |gradient difference|
(d loss / d log-probs) per case.

    python perf/trl_loss_parity.py                 # needs TRL (pip install -e .[perf])
"""

from __future__ import annotations

import collections
import types

import torch

from tarpo.loss import grpo_loss

# (name, loss_type, importance_sampling_level, epsilon_high; None: symmetric)
CASES = [
    ("grpo", "grpo", "token", None),
    ("dr_grpo", "dr_grpo", "token", None),
    ("dapo", "dapo", "token", None),
    ("bnpo", "bnpo", "token", None),
    ("grpo + clip-higher 0.28", "grpo", "token", 0.28),
    ("dapo + clip-higher 0.28", "dapo", "token", 0.28),
    ("grpo, GSPO (sequence)", "grpo", "sequence", None),
    ("dapo, GSPO (sequence)", "dapo", "sequence", None),
]
EPS_LOW, BETA = 0.2, 0.04


def inputs(seed: int = 0, batch: int = 6, length: int = 7) -> dict[str, torch.Tensor]:
    """Random log-probs (old ones off by up to +-0.4, so some ratios leave [0.8, 1.28]), advantages, masks."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=gen) * 3
    old = logp + (torch.rand(batch, length, generator=gen) - 0.5) * 0.8
    ref = logp + (torch.rand(batch, length, generator=gen) - 0.5) * 0.6
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length  # one completion reaches the limit
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    adv = torch.randn(batch, generator=gen)
    return {"logp": logp, "old": old, "ref": ref, "mask": mask, "adv": adv}


def trl_loss(x: dict[str, torch.Tensor], loss_type: str, level: str, eps_high: float | None, max_length: int
             ) -> tuple[float, torch.Tensor]:
    """TRL's GRPOTrainer._compute_loss on a stub trainer; (loss, d loss / d logp)."""
    from trl import GRPOTrainer

    logp = x["logp"].clone().requires_grad_(True)
    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda t: t, gather_for_metrics=lambda t: t,
                                        reduce=lambda t, reduction="sum": t, sync_gradients=True)
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level,
        beta=BETA, args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=EPS_LOW, epsilon_high=EPS_LOW if eps_high is None else eps_high,
        use_vllm=False, vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, accelerator=accelerator, max_completion_length=max_length,
        _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
    )
    batch, length = logp.shape
    mask = x["mask"].long()
    trl_inputs = {"prompt_ids": torch.zeros(batch, 1, dtype=torch.long), "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(batch, length, dtype=torch.long), "completion_mask": mask,
                  "advantages": x["adv"], "old_per_token_logps": x["old"], "ref_per_token_logps": x["ref"],
                  "num_items_in_batch": mask.sum()}
    loss = GRPOTrainer._compute_loss(stub, None, trl_inputs)
    loss.backward()
    return float(loss.detach()), logp.grad


def tarpo_loss(x: dict[str, torch.Tensor], loss_type: str, level: str, eps_high: float | None, max_length: int
               ) -> tuple[float, torch.Tensor]:
    logp = x["logp"].clone().requires_grad_(True)
    out = grpo_loss({"token": logp}, {"token": x["ref"]}, {"token": x["old"]}, x["adv"], x["mask"], BETA,
                    clip_eps=EPS_LOW, clip_eps_high=eps_high, loss_type=loss_type, importance_sampling_level=level,
                    max_length=max_length)
    out.loss.backward()
    return float(out.loss.detach()), logp.grad


def parity(seeds: int = 3) -> list[tuple[str, float, float]]:
    """(case, max |loss difference|, max |gradient difference|) over `seeds` random inputs."""
    rows = []
    for name, loss_type, level, eps_high in CASES:
        loss_diff = grad_diff = 0.0
        for seed in range(seeds):
            x = inputs(seed)
            max_length = x["mask"].shape[1] + 3  # dr_grpo's constant: the length limit, not the longest completion
            ours, our_grad = tarpo_loss(x, loss_type, level, eps_high, max_length)
            theirs, their_grad = trl_loss(x, loss_type, level, eps_high, max_length)
            loss_diff = max(loss_diff, abs(ours - theirs))
            grad_diff = max(grad_diff, float((our_grad - their_grad).abs().max()))
        rows.append((name, loss_diff, grad_diff))
    return rows


def main() -> None:
    import trl

    print(f"tarpo.loss.grpo_loss vs trl {trl.__version__} GRPOTrainer._compute_loss (beta {BETA}, eps_low {EPS_LOW})")
    print(f"| {'case':<26} | {'max abs loss diff':>17} | {'max abs grad diff':>17} |")
    print(f"|{'-' * 28}|{'-' * 19}|{'-' * 19}|")
    for name, loss_diff, grad_diff in parity():
        print(f"| {name:<26} | {loss_diff:>17.3e} | {grad_diff:>17.3e} |")


if __name__ == "__main__":
    main()
