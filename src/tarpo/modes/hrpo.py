"""HRPO (Yue et al., 2025): hybrid latent reasoning with a learned gate.

In the thinking phase the next input mixes the sampled token's embedding with
a latent built from the whole next-token distribution:

    latent = (p^T E) / ||p||_2
    r = sigmoid(W_r E[y] + b_r),  i = sigmoid(W_i E[y] + b_i)
    a = exp(-c * softplus(-Lambda) * r)
    input = a * E[y] + sqrt(1 - a^2) * (i * latent)

The rollout stores `latent` (detached); the training forward recomputes the
gate from the current parameters so the gate gets gradients. The gate's
parameters (W_r, W_i, their biases, Lambda) are the mode's, so they train at
`head_learning_rate` like TARPO's action head: METHODS.md only says they are
trained with the policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tarpo.modes.base import Mode, StepDraw, sample_categorical
from tarpo.modes.tarpo import mix_where

if TYPE_CHECKING:  # types only: the config reads the method registry, which builds modes
    from tarpo.config import TrainConfig


def init_lambda(size: int, r_min: float, r_max: float, c: float, generator: torch.Generator | None = None) -> Tensor:
    """Lambda such that a(r = 1) = exp(-c softplus(-Lambda)) is uniform in [r_min, r_max]."""
    u = torch.empty(size).uniform_(r_min, r_max, generator=generator)
    return -torch.log(u.pow(-1.0 / c) - 1.0)


class HrpoMode(Mode):
    name = "hrpo"
    meta_keys = ("latent",)

    def __init__(self, cfg: TrainConfig, hidden_size: int) -> None:
        super().__init__(cfg, hidden_size)
        self.gate_r = nn.Linear(hidden_size, hidden_size)
        self.gate_i = nn.Linear(hidden_size, hidden_size)
        self.log_lambda = nn.Parameter(init_lambda(hidden_size, cfg.hrpo_r_min, cfg.hrpo_r_max, cfg.hrpo_c))

    def gate(self, token_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """(a, i) for token embeddings (..., d)."""
        x = token_embeds.to(self.gate_r.weight.dtype)
        r = torch.sigmoid(self.gate_r(x))
        i = torch.sigmoid(self.gate_i(x))
        a = torch.exp(-self.cfg.hrpo_c * F.softplus(-self.log_lambda) * r)
        return a, i

    def sample(self, logits, hidden, thinking, embed, noise, greedy, state=None) -> StepDraw:
        token = sample_categorical(logits, noise, greedy)
        probs = torch.softmax(logits.float(), -1)
        latent = (probs.to(embed.weight.dtype) @ embed.weight).float() / probs.norm(dim=-1, keepdim=True)
        return StepDraw(token, {"latent": latent.to(embed.weight.dtype)})

    def next_inputs(self, embed, tokens, meta, thinking) -> Tensor:
        hard = embed(tokens)

        def mixed(index: tuple[Tensor, ...]) -> Tensor:
            e = hard[index]
            a, i = self.gate(e)
            return a * e.to(a.dtype) + torch.sqrt((1.0 - a * a).clamp_min(1e-12)) * (i * meta["latent"][index].to(a.dtype))

        return mix_where(thinking, hard, mixed)

    @torch.no_grad()
    def rollout_stats(self, embed, tokens, meta, thinking) -> dict[str, float]:
        """Mean gate a over thinking steps (1 = fully explicit)."""
        if not bool(thinking.any()):
            return {}
        a, _ = self.gate(embed(tokens[thinking]))
        return {"mean_gate": float(a.mean())}
