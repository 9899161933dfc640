"""ATP-Latent: Gaussian latent steps, a stop head, then an explicit answer (METHODS.md, `atp_latent`).

Sequence: `question <bol> z_0 ... z_{T-1} <eol> #### N <eos>`. While a sequence
is in its latent block, each step draws z_t = mu + sigma * eps from the latent
head on the previous hidden state and feeds z_t itself as the next input; the
recorded token is the placeholder `<lat>` (never fed, skipped when decoding).
At group starts (t a multiple of c) the stop head reads z_t: on "stop" z_t is
not fed, `<eol>` is recorded and fed, and the answer is sampled as text. After
c * K latents the stop is forced (its log-prob is 0).

The rollout stores z, the latent / stop / forced flags and the group starts, so
the training forward recomputes the Gaussian log-densities, stop log-probs and
answer-token log-probs from the same data:

  'latent'  per step: sum_i log N(z_i; mu_i, sigma_i^2) (+ log pi_stop(continue | z) at group starts)
            on latent steps; log pi_stop(stop | z) on a sampled stop; 0 elsewhere
  'token'   the answer tokens' log-probs after `<eol>`; 0 on latent and `<eol>` steps (not sampled)

z is data: gradients reach mu, sigma and the stop head through the likelihood
ratio only.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tarpo.modes.base import Mode, StepDraw, row_noise, sample_categorical, token_logprobs

if TYPE_CHECKING:  # types only: the config reads the method registry, which builds modes
    from tarpo.config import TrainConfig

BEGIN_LATENT, END_LATENT, LATENT_PLACEHOLDER = "<bol>", "<eol>", "<lat>"
SPECIAL_TOKENS = (BEGIN_LATENT, END_LATENT, LATENT_PLACEHOLDER)
CONTINUE, STOP = 0, 1
_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """sum over the last dim of log N(z; mu, exp(logvar))."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


class AtpLatentMode(Mode):
    name = "atp_latent"
    meta_keys = ("z", "latent", "stop", "forced", "group_start")
    prompt_suffix = BEGIN_LATENT

    def __init__(self, cfg: TrainConfig, hidden_size: int) -> None:
        super().__init__(cfg, hidden_size)
        d = hidden_size
        self.latent_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.mu = nn.Linear(d, d)
        self.logvar = nn.Linear(d, d)
        self.stop_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))
        self.per_step = cfg.atp_latents_per_step
        self.max_latents = cfg.atp_latents_per_step * cfg.atp_max_steps
        self.special_ids: dict[str, int] = {}

    # -------------------------------------------------------- tokens

    def bind(self, tokenizer: Any) -> None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the tokenizer lacks ATP-Latent's tokens {missing}: train the policy from the "
                             f"atp_sft stage's checkpoint, which adds them")
        self.special_ids = ids

    def _id(self, token: str) -> int:
        if not self.special_ids:
            raise RuntimeError("AtpLatentMode.bind(tokenizer) must be called before sampling")
        return self.special_ids[token]

    # -------------------------------------------------------- heads

    def gaussian(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log sigma^2) of the next latent, from the previous position's hidden state."""
        h = self.latent_head(hidden.to(self.mu.weight.dtype))
        return self.mu(h).float(), self.logvar(h).float()

    def stop_logits(self, z: Tensor) -> Tensor:
        return self.stop_head(z.to(self.mu.weight.dtype)).float()

    # -------------------------------------------------------- rollout

    def new_state(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        return {"latents": torch.zeros(batch, dtype=torch.long, device=device),
                "in_block": torch.ones(batch, dtype=torch.bool, device=device)}

    def sample(self, logits, hidden, thinking, embed, noise, greedy, state=None) -> StepDraw:
        if state is None:
            raise ValueError("atp_latent needs the rollout state (generate passes it)")
        mu, logvar = self.gaussian(hidden)
        if greedy:
            z = mu
        else:
            eps = row_noise(noise, mu.shape[0], mu.device).randn(*mu.shape[1:])
            z = mu + torch.exp(0.5 * logvar) * eps
        count, in_block = state["latents"], state["in_block"]
        group_start = in_block & (count % self.per_step == 0)
        stop_drawn = sample_categorical(self.stop_logits(z), noise, greedy) == STOP
        forced = in_block & (count >= self.max_latents)
        stop = group_start & stop_drawn & ~forced
        latent = in_block & ~stop & ~forced
        answer_token = sample_categorical(logits, noise, greedy)
        token = torch.where(latent, torch.full_like(answer_token, self._id(LATENT_PLACEHOLDER)), answer_token)
        token = torch.where(stop | forced, torch.full_like(token, self._id(END_LATENT)), token)
        state["latents"] = count + latent.long()
        state["in_block"] = in_block & latent
        return StepDraw(token, {"z": z, "latent": latent, "stop": stop, "forced": forced,
                                "group_start": group_start & ~forced})

    def next_inputs(self, embed, tokens, meta, thinking) -> Tensor:
        inputs = embed(tokens)
        latent = meta["latent"].unsqueeze(-1)
        return torch.where(latent, meta["z"].to(inputs.dtype), inputs)

    # -------------------------------------------------------- scoring

    def logprobs(self, logits, hidden, tokens, meta, thinking) -> dict[str, Tensor]:
        mu, logvar = self.gaussian(hidden)
        z = meta["z"].float()
        stop_logps = torch.log_softmax(self.stop_logits(z), -1)
        latent, stop, group_start = meta["latent"], meta["stop"], meta["group_start"]
        on_latent = gaussian_log_density(z, mu, logvar) + torch.where(
            group_start, stop_logps[..., CONTINUE], torch.zeros_like(stop_logps[..., CONTINUE]))
        zero = torch.zeros_like(on_latent)
        latent_logp = torch.where(latent, on_latent, torch.where(stop, stop_logps[..., STOP], zero))
        answer = ~(latent | stop | meta["forced"])
        return {"token": torch.where(answer, token_logprobs(logits, tokens), zero), "latent": latent_logp}

    def loss_masks(self, meta: dict[str, Tensor], valid: Tensor) -> dict[str, Tensor]:
        """Positions of each loss stream: latent steps and sampled stops; answer tokens after `<eol>`."""
        block = meta["latent"] | meta["stop"] | meta["forced"]
        return {"latent": (meta["latent"] | meta["stop"]) & valid, "token": ~block & valid}

    def step_stats(self, meta, thinking) -> dict[str, Tensor]:
        return {"latent": meta["latent"].float()}

    def rollout_stats(self, embed, tokens, meta, thinking) -> dict[str, float]:
        ended = meta["stop"].any(-1) | meta["forced"].any(-1)
        return {"active_latents": float(meta["latent"].sum(-1).float().mean()),
                "stop_rate": float(meta["stop"].any(-1).float().mean()),  # block ended by the stop head
                "block_ended": float(ended.float().mean())}


# ---------------------------------------------------------------- the coherence reward

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def step_result(text: str) -> str:
    """The number after the last '=' of a decoded step ('8 - 5 = 3.' -> '3'); '' when there is none."""
    _, eq, after = text.rpartition("=")
    match = _NUMBER.search(after) if eq else None
    return match.group(0).replace(",", "") if match else ""


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text or "")}


def coherence(steps: list[str], answer: str | None) -> float:
    """Share of decoded steps whose result appears among the numbers of a later step (the last step's: of the
    final answer). No active step: 1. Unlike the authors' substring check, an empty result matches nothing
    and '8' does not match inside '18'."""
    if not steps:
        return 1.0
    hits = 0
    for s, text in enumerate(steps):
        result = step_result(text)
        later = steps[s + 1:] if s + 1 < len(steps) else [answer or ""]
        hits += bool(result) and any(result in _numbers(t) for t in later)
    return hits / len(steps)
