"""TARPO: a tiny action head routes each thinking step to a hard or a soft input.

pi_t = softmax(W h_t / tau_a); a_t ~ pi_t; the token y_t ~ p_t is always
sampled and recorded. Hard: next input E[y_t]. Soft: sum over the top-K of
p_t of the renormalised probabilities times their embeddings. We renormalise
in the rollout too (the authors mix un-normalised weights there), so rollout
and training see the same inputs.

The action term's gradient flows into the backbone through h_t (see
`action_logits`; `action_detach_hidden` stops it there); the head trains at
`head_learning_rate`. `action_router: random` replaces the router by a coin
of fixed bias (the control that asks whether the router's choices matter).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tarpo.modes.base import Mode, StepDraw, sample_categorical, token_logprobs

if TYPE_CHECKING:  # types only: the config reads the method registry, which builds modes
    from tarpo.config import TrainConfig

HARD, SOFT = 0, 1


def soft_embeddings(embed: nn.Embedding, ids: Tensor, weights: Tensor) -> Tensor:
    """sum_k weights[..., k] * E[ids[..., k]] -> (..., d)."""
    vectors = embed(ids)
    return (vectors * weights.to(vectors.dtype).unsqueeze(-1)).sum(-2)


def mix_where(mask: Tensor, base: Tensor, build: callable) -> Tensor:
    """`base` with the rows under `mask` replaced by `build(index)`; builds only what is needed.

    Under torch.compile (the compiled decode step) it builds every row and selects with `torch.where`: no
    data-dependent shape or host sync, so the step stays one graph. `build` then gets full slices as its index.
    """
    if torch.compiler.is_compiling():
        built = build((slice(None),) * mask.ndim)
        return torch.where(mask.unsqueeze(-1), built.to(base.dtype), base)
    if not bool(mask.any()):
        return base
    index = mask.nonzero(as_tuple=True)
    out = base.clone()
    out[index] = build(index).to(base.dtype)
    return out


class TarpoMode(Mode):
    name = "tarpo"
    meta_keys = ("action", "topk_ids", "topk_weights")

    def __init__(self, cfg: TrainConfig, hidden_size: int) -> None:
        super().__init__(cfg, hidden_size)
        self.action_head = nn.Linear(hidden_size, 2)
        with torch.no_grad():
            self.action_head.weight.normal_(0.0, cfg.action_init_std)
            self.action_head.bias.copy_(torch.tensor([cfg.action_bias_hard, 0.0]))
        if cfg.action_router == "random":  # the control: no learned routing, nothing for the head to learn
            self.action_head.requires_grad_(False)

    def action_logits(self, hidden: Tensor) -> Tensor:
        if self.cfg.action_router == "random":
            # the same (hard, soft) probabilities at every step, independent of h_t: log-probs are constants,
            # so the action term has no gradient; sampling still makes one draw per step (RowNoise)
            p = self.cfg.random_soft_ratio
            logits = torch.tensor([math.log1p(-p), math.log(p)], device=hidden.device)
            return logits.expand(*hidden.shape[:-1], 2)
        # By default `hidden` is not detached: in training, the action term's gradient (policy gradient and
        # action KL) reaches the backbone through h_t, not only the head. METHODS.md does not say which;
        # `action_detach_hidden` is the other choice (an ablation).
        if self.cfg.action_detach_hidden:
            hidden = hidden.detach()
        head = self.action_head
        return head(hidden.to(head.weight.dtype)).float() / self.cfg.tau_a

    def sample(self, logits, hidden, thinking, embed, noise, greedy, state=None) -> StepDraw:
        token = sample_categorical(logits, noise, greedy)
        top_logits, top_ids = logits.float().topk(self.cfg.soft_top_k, dim=-1)
        action = sample_categorical(self.action_logits(hidden), noise, greedy)
        # softmax over the top-K scaled logits = top-K probabilities renormalised.
        return StepDraw(token, {"action": action, "topk_ids": top_ids, "topk_weights": torch.softmax(top_logits, -1)})

    def soft_mask(self, meta: dict[str, Tensor], thinking: Tensor) -> Tensor:
        return (meta["action"] == SOFT) & thinking

    def next_inputs(self, embed, tokens, meta, thinking) -> Tensor:
        ids, weights = meta["topk_ids"], meta["topk_weights"]
        return mix_where(
            self.soft_mask(meta, thinking), embed(tokens), lambda i: soft_embeddings(embed, ids[i], weights[i])
        )

    def logprobs(self, logits, hidden, tokens, meta, thinking) -> dict[str, Tensor]:
        # Outside the thinking phase no action was sampled: the step is labelled hard
        # (what the authors' `action_loss_positions: all` variant scores there).
        action = torch.where(thinking, meta["action"], torch.full_like(meta["action"], HARD))
        action_logps = torch.log_softmax(self.action_logits(hidden), -1)
        return {
            "token": token_logprobs(logits, tokens),
            "action": action_logps.gather(-1, action.unsqueeze(-1)).squeeze(-1),
            "action_entropy": -(action_logps.exp() * action_logps).sum(-1).detach(),
        }

    def step_stats(self, meta, thinking) -> dict[str, Tensor]:
        return {"soft": self.soft_mask(meta, thinking).float()}

    def rollout_stats(self, embed, tokens, meta, thinking) -> dict[str, float]:
        return soft_rollout_stats(embed, tokens, meta["topk_ids"], meta["topk_weights"], thinking,
                                  self.soft_mask(meta, thinking))


@torch.no_grad()
def soft_rollout_stats(
    embed: nn.Embedding, tokens: Tensor, ids: Tensor, weights: Tensor, thinking: Tensor, soft: Tensor
) -> dict[str, float]:
    """Soft ratio (soft / thinking steps), top-K entropy and soft-to-hard embedding distance on soft steps."""
    n_thinking = int(thinking.sum())
    stats = {"soft_ratio": float(soft.sum()) / n_thinking if n_thinking else 0.0}
    if bool(soft.any()):
        w = weights[soft].float()
        stats["topk_entropy"] = float(-(w * w.clamp_min(1e-30).log()).sum(-1).mean())
        distance = soft_embeddings(embed, ids[soft], weights[soft]).float() - embed(tokens[soft]).float()
        stats["soft_hard_distance"] = float(distance.norm(dim=-1).mean())
    return stats
