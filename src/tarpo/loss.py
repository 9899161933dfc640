"""The one GRPO loss every method uses (METHODS.md, "Shared" and "RL objectives users expect").

Per completion position t:

    token term   ratio_t * A - beta * KL_t
    action term  w_a * ratio^a_t * A - beta * KL^a_t      (TARPO, on its positions)

with ratio = exp(logp - old_logp) (old = logp.detach() for a single update;
PPO clipping min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) when old log-probs
come from an earlier update) and the k3 estimator KL = exp(ref - logp) - (ref - logp) - 1.

How the terms become one number (`loss_type`, TRL's names):

    grpo     minus the mean over completions of each completion's mean over its valid positions (the default)
    dr_grpo  minus the sum over every position / (completions x the completion length limit) (Dr. GRPO)
    dapo     minus the sum over every position / the valid positions of the whole step (DAPO); the trainer
             passes that count as `normalizer`, so micro-batches and pieces add up to one big batch
    bnpo     minus the sum over every position / the valid positions of the local (micro-)batch

`importance_sampling_level="sequence"` (GSPO) replaces each token's ratio by the
completion's s_i = exp(mean_t log r_t), clipped per completion; the term is then
the same at every position of the completion and aggregates as above (as TRL does).

ATP-Latent passes `stream_masks` instead: each stream (its latent and answer
log-probs) is a masked mean per completion under `grpo`, the streams are summed,
and its log-ratios are clamped (METHODS.md); with beta = 0 and no reference there
is no KL term. Under the token-sum loss types the streams' positions are summed
together over the same normaliser. TARPO's action term is added at its positions
to the token term of the same position, so it aggregates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ADVANTAGE_EPS = 1e-4
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


def group_advantages(rewards: Tensor, group_size: int, eps: float = ADVANTAGE_EPS, scale: str = "group",
                     batch_std: Tensor | None = None) -> Tensor:
    """A = (r - mean_group(r)) / (std + eps); rewards (N,) ordered group by group.

    `scale`: 'group' (std within the group, the papers'), 'batch' (one std over the batch: `batch_std`, or the
    std of `rewards` when not given) or 'none' (centre only; Dr. GRPO).
    """
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale == "none":
        return centred.view(-1)
    if scale == "batch":
        if batch_std is None:
            batch_std = rewards.float().std() if rewards.numel() > 1 else torch.zeros(())
        return (centred / (batch_std + eps)).view(-1)
    std = groups.std(-1, unbiased=True, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    return (centred / (std + eps)).view(-1)


def uniform_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(N / G,) True where every reward of the group is the same: its advantages are 0, it carries no signal."""
    groups = rewards.view(-1, group_size)
    return (groups == groups[:, :1]).all(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi || ref) under samples of pi)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1.0


def policy_term(
    logp: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None, advantages: Tensor, beta: float,
    clip_eps: float | None = None, log_ratio_clamp: float | None = None, clip_eps_high: float | None = None,
    sequence_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(ratio * A - beta * KL, KL) per position; advantages broadcast over positions.

    `clip_eps_high`: the upper clip range (DAPO's clip-higher; None: `clip_eps`, symmetric). `sequence_mask`
    (B, L): GSPO, one ratio per completion, exp of the mean log-ratio over the mask's positions.
    """
    old = logp.detach() if old_logp is None else old_logp
    log_ratio = logp - old
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    if sequence_mask is not None:
        mask = sequence_mask.float()
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)).unsqueeze(-1)  # (B, 1)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    gain = ratio * adv
    if clip_eps is not None:
        high = clip_eps if clip_eps_high is None else clip_eps_high
        gain = torch.minimum(gain, ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    return gain - beta * kl, kl


def loss_tokens(valid: Tensor, stream_masks: dict[str, Tensor] | None = None) -> Tensor:
    """The positions a loss sums over (valid ones; with streams, those of any stream): the token count
    `dapo` and `bnpo` divide by. The trainer adds it up over a step for `dapo`'s `normalizer`."""
    if stream_masks is None:
        return valid.float().sum()
    return sum(((m & valid).float().sum() for m in stream_masks.values()), torch.zeros((), device=valid.device))


def _clipped(ratio: Tensor, clip_eps: float, clip_eps_high: float | None) -> Tensor:
    if clip_eps_high is None:
        return ((ratio - 1.0).abs() > clip_eps).float()
    return ((ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps_high)).float()


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
    loss_type: LossType = "grpo",
    clip_eps_high: float | None = None,
    importance_sampling_level: Literal["token", "sequence"] = "token",
    normalizer: float | Tensor | None = None,
    max_length: int | None = None,
) -> LossOutput:
    """Loss of a batch of completions (B, L); 'action' terms enter where `action_mask` is set.

    With `stream_masks` ({logps key: (B, L) mask}), each stream is a masked mean per completion and the
    streams are summed (ATP-Latent); the action arguments are then unused.

    `loss_type`, `clip_eps_high`, `importance_sampling_level`: see the module docstring. `normalizer`: the
    denominator of the token-sum loss types; None: this batch's own (dapo / bnpo: its `loss_tokens`;
    dr_grpo: B x `max_length`, the completion length limit, L when not given). Ignored under `grpo`.
    """
    valid_f = valid.float()
    old = old_logps or {}
    ref = ref_logps or {}
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if normalizer is None and loss_type != "grpo":
        normalizer = (valid.shape[0] * (max_length or valid.shape[-1]) if loss_type == "dr_grpo"
                      else loss_tokens(valid, stream_masks).clamp_min(1.0))
    sequence = importance_sampling_level == "sequence"
    clip = {"clip_eps": clip_eps, "clip_eps_high": clip_eps_high}
    if stream_masks is not None:
        return _stream_loss(logps, ref, old, advantages, valid_f, beta, stream_masks, clip, log_ratio_clamp,
                            loss_type, normalizer, sequence)
    token, kl = policy_term(logps["token"], old.get("token"), ref.get("token"), advantages, beta, **clip,
                            sequence_mask=valid if sequence else None)
    per_position = token * valid_f
    action_kl = torch.zeros(())
    if action_mask is not None and "action" in logps and action_weight > 0:
        mask = (action_mask & valid).float()
        action, a_kl = policy_term(logps["action"], old.get("action"), ref.get("action"), advantages, 0.0, **clip,
                                   sequence_mask=mask if sequence else None)
        # beta applies to the action KL unweighted, w_a only to the policy-gradient part (METHODS.md).
        per_position = per_position + (action_weight * action - beta * a_kl) * mask
        action_kl = (a_kl.detach() * mask).sum() / mask.sum().clamp_min(1.0)
    if loss_type == "grpo":
        per_completion = per_position.sum(-1) / valid_f.sum(-1).clamp_min(1.0)
        loss = -per_completion.mean()
    else:
        loss = -per_position.sum() / normalizer
    with torch.no_grad():
        mean_kl = float((kl * valid_f).sum() / valid_f.sum().clamp_min(1.0))
        ratio = torch.exp(logps["token"] - old["token"]) if "token" in old else torch.ones_like(valid_f)
        clipped = _clipped(ratio, clip_eps, clip_eps_high) if clip_eps is not None else torch.zeros_like(valid_f)
        clip_fraction = float((clipped * valid_f).sum() / valid_f.sum().clamp_min(1.0))
    return LossOutput(loss, mean_kl, float(action_kl), clip_fraction)


def _stream_loss(
    logps: dict[str, Tensor], ref: dict[str, Tensor], old: dict[str, Tensor], advantages: Tensor, valid_f: Tensor,
    beta: float, stream_masks: dict[str, Tensor], clip: dict[str, float | None], log_ratio_clamp: float | None,
    loss_type: str, normalizer: float | Tensor | None, sequence: bool,
) -> LossOutput:
    per_completion = torch.zeros_like(advantages, dtype=torch.float32)
    total = torch.zeros((), device=valid_f.device)
    kl_sum, kl_count, clipped_sum = 0.0, 0.0, 0.0
    clip_eps = clip["clip_eps"]
    for key, mask in stream_masks.items():
        mask_f = mask.float() * valid_f
        term, kl = policy_term(logps[key], old.get(key), ref.get(key), advantages, beta, log_ratio_clamp=log_ratio_clamp,
                               sequence_mask=mask_f if sequence else None, **clip)
        if loss_type == "grpo":
            per_completion = per_completion + (term * mask_f).sum(-1) / mask_f.sum(-1).clamp_min(1.0)
        else:
            total = total + (term * mask_f).sum()
        with torch.no_grad():
            kl_sum += float((kl * mask_f).sum())
            kl_count += float(mask_f.sum())
            if clip_eps is not None and key in old:
                ratio = (logps[key] - old[key]).exp()
                clipped_sum += float(_clipped(ratio, clip_eps, clip["clip_eps_high"]).mul(mask_f).sum())
    loss = -per_completion.mean() if loss_type == "grpo" else -total / normalizer
    return LossOutput(loss, kl_sum / max(kl_count, 1.0), 0.0, clipped_sum / max(kl_count, 1.0))
