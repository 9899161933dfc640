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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # types only: the config reads the method registry, which builds modes
    from tarpo.config import TrainConfig



@dataclass
class StepDraw:
    """What one rollout step sampled: the recorded token and mode metadata, each (B, ...)."""

    token: Tensor
    meta: dict[str, Tensor] = field(default_factory=dict)


class RowNoise:
    """The random draws of one batch, made row by row.

    Every draw is made for all `batch` rows of the batch the rollout started with, and only the rows still
    running (`rows`, original indices; None = all) are returned. The generator therefore advances the same
    whichever rows have finished, and a row's samples depend on its own position only: the rollout engine can
    drop finished rows from its batch without changing any sample.
    """

    def __init__(self, generator: torch.Generator | None, batch: int, device: torch.device | str) -> None:
        self.generator, self.batch, self.device = generator, batch, torch.device(device)
        self.rows: Tensor | None = None

    def _keep(self, draw: Tensor) -> Tensor:
        return draw if self.rows is None else draw[self.rows]

    def rand(self, *tail: int) -> Tensor:
        """Uniform [0, 1) draws, (running rows, *tail), float32."""
        return self._keep(torch.rand((self.batch, *tail), generator=self.generator, device=self.device))

    def randn(self, *tail: int) -> Tensor:
        """Standard normal draws, (running rows, *tail), float32."""
        return self._keep(torch.randn((self.batch, *tail), generator=self.generator, device=self.device))


def row_noise(source: RowNoise | torch.Generator | None, batch: int, device: torch.device | str) -> RowNoise:
    """`source` itself if it is a RowNoise, else row-wise draws over a batch of `batch` from the generator."""
    return source if isinstance(source, RowNoise) else RowNoise(source, batch, device)


def sample_categorical(logits: Tensor, noise: RowNoise | torch.Generator | None, greedy: bool) -> Tensor:
    """Sample from softmax(logits) over the last dim (argmax when greedy); logits are (B, V).

    Inverse-CDF sampling with one uniform per row, so that a row's draw is its own (see RowNoise).
    """
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float(), -1)
    cdf = probs.cumsum(-1)
    u = row_noise(noise, logits.shape[0], logits.device).rand() * cdf[:, -1]
    # the first token whose cumulative mass exceeds u; a token of zero mass is never chosen
    token = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
    return token.clamp_max(logits.shape[-1] - 1)


def gumbel_like(x: Tensor, noise: RowNoise | torch.Generator | None) -> Tensor:
    """Gumbel(0, 1) noise of x's shape (B, ...), drawn row by row."""
    u = row_noise(noise, x.shape[0], x.device).rand(*x.shape[1:])
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
        noise: RowNoise | torch.Generator | None,
        greedy: bool,
        state: dict[str, Tensor] | None = None,
    ) -> StepDraw:
        """Draw one step. `logits` (B, V) are temperature-scaled; `thinking` (B,) is the phase before this token;
        `noise` gives the step's random draws (RowNoise: the same number of draws every step, whatever the
        data, so that a row's samples are its own); `state` is `new_state`'s dict, which the mode may update
        in place."""
        return StepDraw(sample_categorical(logits, noise, greedy))

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
