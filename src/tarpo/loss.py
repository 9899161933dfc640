"""The one GRPO loss every method uses (METHODS.md, "Shared").

Per completion position t:

    token term   ratio_t * A - beta * KL_t
    action term  w_a * ratio^a_t * A - beta * KL^a_t      (TARPO, on its positions)

with ratio = exp(logp - old_logp) (old = logp.detach() for a single update;
PPO clipping when old log-probs come from an earlier update) and the k3
estimator KL = exp(ref - logp) - (ref - logp) - 1. The loss is minus the mean
over completions of each completion's mean over its valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """A = (r - mean_group(r)) / (std_group(r) + 1e-4); rewards (N,) ordered group by group."""
    groups = rewards.float().view(-1, group_size)
    std = groups.std(-1, unbiased=True, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return ((groups - groups.mean(-1, keepdim=True)) / (std + ADVANTAGE_EPS)).view(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi || ref) under samples of pi)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1.0


def policy_term(
    logp: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None, advantages: Tensor, beta: float,
    clip_eps: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(ratio * A - beta * KL, KL) per position; advantages broadcast over positions."""
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = advantages.unsqueeze(-1)
    gain = ratio * adv
    if clip_eps is not None:
        gain = torch.minimum(gain, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    return gain - beta * kl, kl


@dataclass
class LossOutput:
    loss: Tensor
    kl: float  # mean token KL over valid positions
    action_kl: float
    clip_fraction: float


def grpo_loss(
    logps: dict[str, Tensor],
    ref_logps: dict[str, Tensor] | None,
    old_logps: dict[str, Tensor] | None,
    advantages: Tensor,
    valid: Tensor,
    beta: float,
    action_mask: Tensor | None = None,
    action_weight: float = 0.0,
    clip_eps: float | None = None,
) -> LossOutput:
    """Loss of a batch of completions (B, L); 'action' terms enter where `action_mask` is set."""
    valid_f = valid.float()
    old = old_logps or {}
    ref = ref_logps or {}
    token, kl = policy_term(logps["token"], old.get("token"), ref.get("token"), advantages, beta, clip_eps)
    per_position = token * valid_f
    action_kl = torch.zeros(())
    if action_mask is not None and "action" in logps and action_weight > 0:
        mask = (action_mask & valid).float()
        action, a_kl = policy_term(logps["action"], old.get("action"), ref.get("action"), advantages, 0.0, clip_eps)
        # beta applies to the action KL unweighted, w_a only to the policy-gradient part (METHODS.md).
        per_position = per_position + (action_weight * action - beta * a_kl) * mask
        action_kl = (a_kl.detach() * mask).sum() / mask.sum().clamp_min(1.0)
    per_completion = per_position.sum(-1) / valid_f.sum(-1).clamp_min(1.0)
    loss = -per_completion.mean()
    with torch.no_grad():
        mean_kl = float((kl * valid_f).sum() / valid_f.sum().clamp_min(1.0))
        ratio = torch.exp(logps["token"] - old["token"]) if "token" in old else torch.ones_like(valid_f)
        clipped = ((ratio - 1.0).abs() > clip_eps).float() if clip_eps is not None else torch.zeros_like(valid_f)
        clip_fraction = float((clipped * valid_f).sum() / valid_f.sum().clamp_min(1.0))
    return LossOutput(loss, mean_kl, float(action_kl), clip_fraction)
