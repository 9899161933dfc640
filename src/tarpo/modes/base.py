"""The interface every reasoning mode implements.

A mode decides three things and nothing else:

* `sample`: which token (and which mode-specific random choices, e.g. an
  action or a relaxed sample) one rollout step draws;
* `next_inputs`: the input embedding that follows a step, rebuilt from the
  stored per-step metadata. The rollout and the training forward both call
  it, which is what makes them see exactly the same inputs;
* `logprobs`: the log-probabilities the loss needs at each step (the token's,
  a latent step's Concrete density, the action's).

Shapes: a rollout step works on (B, ...) tensors, the training forward on
(B, L, ...) ones; the methods below are written for a leading (B, L) and the
rollout passes L = 1. `thinking` marks steps whose *next* input may be latent:
the answer marker has not been emitted yet (this token included) and the
sequence has not ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tarpo.config import TrainConfig


@dataclass
class StepDraw:
    """What one rollout step sampled: the recorded token and mode metadata, each (B, ...)."""

    token: Tensor
    meta: dict[str, Tensor] = field(default_factory=dict)


def sample_categorical(logits: Tensor, generator: torch.Generator | None, greedy: bool) -> Tensor:
    """Sample from softmax(logits) over the last dim (argmax when greedy); logits are (B, V)."""
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float(), -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def gumbel_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    exponential = -torch.log(u.clamp_min(1e-20))  # Exp(1); Gumbel = -log(Exp(1))
    return -torch.log(exponential.clamp_min(1e-20))


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under softmax(logits); logits (..., V) already temperature-scaled."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class Mode(nn.Module):
    """Explicit reasoning (GRPO): every step feeds back the sampled token's embedding."""

    name = "explicit"
    #: metadata tensors a rollout stores per step (and their trailing shape is mode-defined)
    meta_keys: tuple[str, ...] = ()
    #: text appended to every prompt (ATP-Latent opens its latent block with `<bol>`)
    prompt_suffix: str = ""

    def __init__(self, cfg: TrainConfig, hidden_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_size = hidden_size

    def bind(self, tokenizer: Any) -> None:
        """Look up the mode's special tokens, if it has any (called once the tokenizer is known)."""

    def new_state(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """Per-sequence state a rollout carries from step to step (e.g. ATP's latent count); most modes need none."""
        return {}

    def sample(
        self,
        logits: Tensor,
        hidden: Tensor,
        thinking: Tensor,
        embed: nn.Embedding,
        generator: torch.Generator | None,
        greedy: bool,
        state: dict[str, Tensor] | None = None,
    ) -> StepDraw:
        """Draw one step. `logits` (B, V) are temperature-scaled; `thinking` (B,) is the phase before this token;
        `state` is `new_state`'s dict, which the mode may update in place."""
        return StepDraw(sample_categorical(logits, generator, greedy))

    def next_inputs(self, embed: nn.Embedding, tokens: Tensor, meta: dict[str, Tensor], thinking: Tensor) -> Tensor:
        """Input embeddings (B, L, d) that follow steps (B, L)."""
        return embed(tokens)

    def logprobs(
        self, logits: Tensor, hidden: Tensor, tokens: Tensor, meta: dict[str, Tensor], thinking: Tensor
    ) -> dict[str, Tensor]:
        """Per-step log-probs (B, L): always 'token'; modes add e.g. 'action'."""
        return {"token": token_logprobs(logits, tokens)}

    def loss_masks(self, meta: dict[str, Tensor], valid: Tensor) -> dict[str, Tensor] | None:
        """Positions of each log-prob stream when the loss averages streams separately (ATP-Latent);
        None: the token stream over every valid position, plus TARPO's action term (see grpo_loss)."""
        return None

    def step_stats(self, meta: dict[str, Tensor], thinking: Tensor) -> dict[str, Tensor]:
        """Per-step floats (B, L) worth logging / rendering, e.g. 'soft' flags."""
        return {}

    def rollout_stats(self, embed: nn.Embedding, tokens: Tensor, meta: dict[str, Tensor], thinking: Tensor) -> dict[str, float]:
        """Scalar summaries of a rollout (B, L) for logging: soft ratio, mean gate, ..."""
        return {}
