"""LEPO-style stochastic latent reasoning with a Gumbel-Softmax relaxation.

Our reading of the LEPO abstract ("unified gradient estimation for latent
representations and discrete tokens"), as METHODS.md specifies it: in the
thinking phase the input is a relaxed sample over the top-K tokens,
w = softmax((log p~ + g) / tau_g), and the recorded token is
argmax(log p~ + g), an exact sample from p~ (p restricted to its top-K and
renormalised). A latent step's policy-gradient term uses the exact log-density
of the stored w under the Concrete distribution with the current locations
log p~ (top-K ids fixed from the rollout); answer-phase steps are ordinary
tokens.

The step that ends the thinking phase, an approximation, stated: `sample`
sees the phase *before* the step's token, so the step whose token completes
`####`, or is an EOS drawn while thinking, is drawn like every thinking step
(the Gumbel argmax over the top-K, an exact sample from p~) and a relaxed w
is stored. But the rollout's `thinking` flag of that step (the phase *after*
its token) is off, so its next input is the hard E[y] (after EOS there is
none), the stored w is never used, and `logprobs` scores it as an ordinary
token under the full p: log p(y), neither the Concrete density of w nor
log p~(y) = log p(y) - log(top-K mass of p). Its ratio and KL are GRPO's;
its policy gradient is that of log p(y) where the exact one is that of
log p~(y): an extra grad log(top-K mass of p), small when the top-K holds
nearly all of p. (tests/test_rollout.py pins this behaviour.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tarpo.modes.base import Mode, StepDraw, gumbel_like, sample_categorical, token_logprobs
from tarpo.modes.tarpo import mix_where, soft_embeddings, soft_rollout_stats


def concrete_log_density(log_w: Tensor, locations: Tensor, tau: float) -> Tensor:
    """log q(w) of the Concrete (Gumbel-Softmax) distribution over the last dim.

    log q(w) = log((K-1)!) + (K-1) log tau + sum_i (l_i - (tau+1) log w_i) - K logsumexp_i(l_i - tau log w_i)
    Takes log w (exact, no underflow) and locations l = log p~.
    """
    k = log_w.shape[-1]
    log_w = log_w.float()
    locations = locations.float()
    return (
        math.lgamma(k) + (k - 1) * math.log(tau)
        + (locations - (tau + 1.0) * log_w).sum(-1)
        - k * torch.logsumexp(locations - tau * log_w, -1)
    )


class LepoMode(Mode):
    name = "lepo"
    meta_keys = ("topk_ids", "relaxed_log_w")

    def sample(self, logits, hidden, thinking, embed, noise, greedy, state=None) -> StepDraw:
        top_logits, top_ids = logits.float().topk(self.cfg.lepo_top_k, dim=-1)
        locations = torch.log_softmax(top_logits, -1)
        noisy = locations if greedy else locations + gumbel_like(locations, noise)
        log_w = torch.log_softmax(noisy / self.cfg.lepo_tau_g, -1)
        relaxed_token = top_ids.gather(-1, noisy.argmax(-1, keepdim=True)).squeeze(-1)
        token = torch.where(thinking, relaxed_token, sample_categorical(logits, noise, greedy))
        return StepDraw(token, {"topk_ids": top_ids, "relaxed_log_w": log_w})

    def next_inputs(self, embed, tokens, meta, thinking) -> Tensor:
        ids, log_w = meta["topk_ids"], meta["relaxed_log_w"]
        return mix_where(thinking, embed(tokens), lambda i: soft_embeddings(embed, ids[i], log_w[i].exp()))

    def logprobs(self, logits, hidden, tokens, meta, thinking) -> dict[str, Tensor]:
        token_logp = token_logprobs(logits, tokens)
        locations = torch.log_softmax(logits.float().gather(-1, meta["topk_ids"]), -1)
        latent_logp = concrete_log_density(meta["relaxed_log_w"], locations, self.cfg.lepo_tau_g)
        return {"token": torch.where(thinking, latent_logp, token_logp)}

    def step_stats(self, meta, thinking) -> dict[str, Tensor]:
        return {"soft": thinking.float()}

    def rollout_stats(self, embed, tokens, meta, thinking) -> dict[str, float]:
        return soft_rollout_stats(embed, tokens, meta["topk_ids"], meta["relaxed_log_w"].exp(), thinking, thinking)
