"""Sample, decode, score: the one path from problems to scored completions.

Training (a step's groups), evaluation (k samples a problem), ATP-Latent's SFT checks and the warm start's
quick check all call `sample_and_score`: prompts through `encode_prompts`, completions through the rollout
engine (`rollout.generate`, every mode), texts decoded from the valid tokens, and each text scored by the
one answer checker (`rewards.reward`, the record's `kind`). What a caller adds (training's reward hooks, the
evaluation's per-sample rows, ATP's decoded latents) it builds from the returned rollout and texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from tarpo.data.batching import encode_prompts
from tarpo.modes import Mode
from tarpo.rewards import reward
from tarpo.rollout import AnswerMarker, Rollout, eos_token_ids, generate


@dataclass
class ScoredSamples:
    """`repeats` completions of each record, rows contiguous per record (row i is record i // repeats)."""

    rollout: Rollout  # on the model's device
    texts: list[str]  # each row's valid tokens, decoded without special tokens
    rewards: list[float]  # the answer checker's score of each text (1.0 correct, else 0.0)

    @property
    def correct(self) -> list[bool]:
        return [r > 0 for r in self.rewards]


def reward_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    """What the checker needs beyond the gold answer: a code problem's prompt, entry point and tests."""
    if record.get("kind") == "code":
        return {"prompt": record["prompt"], "entry_point": record["entry_point"], "test": record["test"]}
    return {}


def score_texts(texts: Sequence[str], records: Sequence[dict[str, Any]]) -> list[float]:
    """The answer checker's score of each text against its record's gold answer."""
    return [reward(text, str(r["answer"]), r.get("kind", "math"), **reward_kwargs(r))
            for text, r in zip(texts, records, strict=True)]


def decode_rows(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Each row's valid tokens as text (special tokens dropped)."""
    return [tokenizer.decode(tok[v], skip_special_tokens=True)
            for tok, v in zip(rollout.tokens.cpu(), rollout.valid.cpu())]


def engine_defaults(model: nn.Module, tokenizer: Any) -> tuple[list[int], AnswerMarker, int]:
    """(end-of-sequence ids, answer marker, pad id) for `model` and `tokenizer`, on the model's device."""
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(tokenizer, model)
    marker = AnswerMarker(tokenizer, model.config.vocab_size).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    return eos_ids, marker, pad_id


@torch.no_grad()
def sample_and_score(model: nn.Module, tokenizer: Any, mode: Mode, records: Sequence[dict[str, Any]], *,
                     repeats: int, temperature: float, max_new_tokens: int, max_prompt_tokens: int,
                     generator: torch.Generator | None, greedy: bool = False, compiled: bool = False,
                     eos_ids: list[int] | None = None, marker: AnswerMarker | None = None,
                     pad_id: int | None = None) -> ScoredSamples:
    """`repeats` completions of each record from `mode`'s policy, decoded and scored.

    Each prompt's forward runs once for its `repeats` completions (`generate`'s `repeats`). `greedy` (or
    `temperature <= 0`) takes the most likely token; sampling otherwise draws from `generator`. The end ids,
    answer marker and pad id default to `engine_defaults`; a caller that samples often passes them once built.
    """
    device = next(model.parameters()).device
    if eos_ids is None or marker is None or pad_id is None:
        default_eos, default_marker, default_pad = engine_defaults(model, tokenizer)
        eos_ids = default_eos if eos_ids is None else eos_ids
        marker = default_marker if marker is None else marker
        pad_id = default_pad if pad_id is None else pad_id
    greedy = greedy or temperature <= 0
    ids, mask = encode_prompts(tokenizer, [r["question"] for r in records], max_prompt_tokens, device,
                               mode.prompt_suffix)
    rollout = generate(model, mode, ids, mask, max_new_tokens=max_new_tokens,
                       temperature=1.0 if temperature <= 0 else temperature, eos_ids=eos_ids, pad_id=pad_id,
                       marker=marker, greedy=greedy, generator=generator, compiled=compiled, repeats=repeats)
    texts = decode_rows(tokenizer, rollout)
    return ScoredSamples(rollout, texts, score_texts(texts, [r for r in records for _ in range(repeats)]))

