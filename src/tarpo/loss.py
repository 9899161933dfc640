"""The one GRPO loss every method uses (METHODS.md, "Shared").

Per completion position t:

    token term   ratio_t * A - beta * KL_t
    action term  w_a * ratio^a_t * A - beta * KL^a_t      (TARPO, on its positions)

with ratio = exp(logp - old_logp) (old = logp.detach() for a single update;
PPO clipping when old log-probs come from an earlier update) and the k3
estimator KL = exp(ref - logp) - (ref - logp) - 1. The loss is minus the mean
over completions of each completion's mean over its valid positions.

ATP-Latent passes `stream_masks` instead: each stream (its latent and answer
log-probs) is a masked mean per completion, the streams are summed, and its
log-ratios are clamped (METHODS.md); with beta = 0 and no reference there is
no KL term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: Tensor, group_size: int, eps: float = ADVANTAGE_EPS) -> Tensor:
    """A = (r - mean_group(r)) / (std_group(r) + eps); rewards (N,) ordered group by group."""
    groups = rewards.float().view(-1, group_size)
    std = groups.std(-1, unbiased=True, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return ((groups - groups.mean(-1, keepdim=True)) / (std + eps)).view(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi || ref) under samples of pi)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1.0


def policy_term(
    logp: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None, advantages: Tensor, beta: float,
    clip_eps: float | None = None, log_ratio_clamp: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(ratio * A - beta * KL, KL) per position; advantages broadcast over positions."""
    old = logp.detach() if old_logp is None else old_logp
    log_ratio = logp - old
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
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
    stream_masks: dict[str, Tensor] | None = None,
    log_ratio_clamp: float | None = None,
) -> LossOutput:
    """Loss of a batch of completions (B, L); 'action' terms enter where `action_mask` is set.

    With `stream_masks` ({logps key: (B, L) mask}), each stream is a masked mean per completion and the
    streams are summed (ATP-Latent); the action arguments are then unused.
    """
    valid_f = valid.float()
    old = old_logps or {}
    ref = ref_logps or {}
    if stream_masks is not None:
        return _stream_loss(logps, ref, old, advantages, valid_f, beta, stream_masks, clip_eps, log_ratio_clamp)
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


def _stream_loss(
    logps: dict[str, Tensor], ref: dict[str, Tensor], old: dict[str, Tensor], advantages: Tensor, valid_f: Tensor,
    beta: float, stream_masks: dict[str, Tensor], clip_eps: float | None, log_ratio_clamp: float | None,
) -> LossOutput:
    per_completion = torch.zeros_like(advantages, dtype=torch.float32)
    kl_sum, kl_count, clipped_sum = 0.0, 0.0, 0.0
    for key, mask in stream_masks.items():
        mask_f = mask.float() * valid_f
        term, kl = policy_term(logps[key], old.get(key), ref.get(key), advantages, beta, clip_eps, log_ratio_clamp)
        per_completion = per_completion + (term * mask_f).sum(-1) / mask_f.sum(-1).clamp_min(1.0)
        with torch.no_grad():
            kl_sum += float((kl * mask_f).sum())
            kl_count += float(mask_f.sum())
            if clip_eps is not None and key in old:
                clipped_sum += float((((logps[key] - old[key]).exp() - 1.0).abs() > clip_eps).float().mul(mask_f).sum())
    loss = -per_completion.mean()
    return LossOutput(loss, kl_sum / max(kl_count, 1.0), 0.0, clipped_sum / max(kl_count, 1.0))
