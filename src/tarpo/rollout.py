"""The one rollout engine (training and evaluation) and the training forward.

`generate` is a batched, KV-cached sampling loop over left-padded prompts in
which a reasoning mode forms every next input embedding. `score` rebuilds the
same input embeddings from what the rollout stored and runs one full forward;
with unchanged weights its log-probs equal the rollout's (the invariant the
tests check for every mode).

`generate(compiled=True)` decodes on a preallocated static KV cache with one
torch.compile'd step per token, shared by every mode (`tarpo.decode`); the
eager path on a dynamic cache stays the default and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from tarpo import decode
from tarpo.data.template import ANSWER_MARKER
from tarpo.modes import Mode
from tarpo.modes.base import RowNoise

# ---------------------------------------------------------------- model parts


def model_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Embedding]:
    """(decoder returning final-norm hidden states, LM head, input embedding) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.get_input_embeddings()


def eos_token_ids(tokenizer, model: nn.Module | None = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if extra is not None:
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


# ---------------------------------------------------------------- answer marker


class AnswerMarker:
    """Detects the answer marker on token ids, incrementally and batched.

    Per token id we precompute its number of leading and trailing marker
    characters ('#'), whether it is made only of them and whether it holds the
    whole marker; the per-sequence state is the run of '#' at the end of the
    text so far. Nothing is detokenised during a rollout.
    """

    def __init__(self, tokenizer, vocab_size: int | None = None, marker: str = ANSWER_MARKER) -> None:
        char = marker[0]
        if set(marker) != {char}:
            raise ValueError("the answer marker must repeat a single character")
        self.need = len(marker)
        size = max(vocab_size or 0, len(tokenizer))
        leading = torch.zeros(size, dtype=torch.long)
        trailing = torch.zeros(size, dtype=torch.long)
        only = torch.zeros(size, dtype=torch.bool)
        whole = torch.zeros(size, dtype=torch.bool)
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i])
            if char not in text:
                continue
            leading[i] = len(text) - len(text.lstrip(char))
            trailing[i] = len(text) - len(text.rstrip(char))
            only[i] = text.strip(char) == ""
            whole[i] = marker in text
        self.leading, self.trailing, self.only, self.whole = leading, trailing, only, whole

    def to(self, device: torch.device) -> "AnswerMarker":
        for name in ("leading", "trailing", "only", "whole"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def update(self, run: Tensor, seen: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        """New (trailing '#' run, marker seen) after appending `token` (all (B,))."""
        completes = self.whole[token] | (run + self.leading[token] >= self.need)
        run = torch.where(self.only[token], run + self.leading[token], self.trailing[token])
        return run, seen | completes

    def scan(self, tokens: Tensor) -> Tensor:
        """(B, L) -> whether the marker has been emitted up to and including each position."""
        run = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        seen = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        out = []
        for t in range(tokens.shape[1]):
            run, seen = self.update(run, seen, tokens[:, t])
            out.append(seen)
        return torch.stack(out, 1) if out else torch.zeros_like(tokens, dtype=torch.bool)


# ---------------------------------------------------------------- rollout


@dataclass
class Rollout:
    """Completions of a batch of prompts and everything needed to rebuild their inputs."""

    prompt_ids: Tensor  # (B, P) left-padded
    prompt_mask: Tensor  # (B, P)
    tokens: Tensor  # (B, L) recorded tokens, pad after the end
    valid: Tensor  # (B, L) completion positions, EOS included
    thinking: Tensor  # (B, L) steps whose next input may be latent
    logps: dict[str, Tensor] = field(default_factory=dict)  # (B, L) per mode key
    meta: dict[str, Tensor] = field(default_factory=dict)  # (B, L, ...)
    stats: dict[str, Tensor] = field(default_factory=dict)  # (B, L) floats for logging

    @property
    def lengths(self) -> Tensor:
        return self.valid.sum(-1)

    def _map(self, fn) -> "Rollout":
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = {k: fn(v) for k, v in value.items()} if isinstance(value, dict) else fn(value)
        return Rollout(**out)

    def select(self, index: Tensor | slice) -> "Rollout":
        return self._map(lambda t: t[index])

    def to(self, device: torch.device | str) -> "Rollout":
        return self._map(lambda t: t.to(device))


def truncated(rollout: Rollout, eos_ids: list[int]) -> Tensor:
    """(B,) True for a completion cut by the length limit: a row ends (and stops being valid) only on an EOS
    id (`decode.record_step`), so a row whose last valid token is not one never finished."""
    last = (rollout.lengths - 1).clamp_min(0)
    final = rollout.tokens.gather(1, last.unsqueeze(1)).squeeze(1)
    eos = torch.tensor(eos_ids, device=final.device)
    return ~torch.isin(final, eos) | (rollout.lengths == 0)


class _ReservedLayer(DynamicLayer):
    """A full-attention cache layer that writes each step into a buffer reserved for the whole rollout, where
    `DynamicLayer` concatenates (a copy of the layer's whole cache every step); its keys and values are views of
    the filled part. Same values, so the same attention."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._keys = self._values = None

    def _view(self) -> tuple[Tensor, Tensor]:
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]
        return self.keys, self.values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._keys is None or self.length + n > self._keys.shape[-2]:
            size = max(self.capacity, 2 * (self.length + n))
            keys = key_states.new_empty((*key_states.shape[:2], size, key_states.shape[-1]))
            values = value_states.new_empty((*value_states.shape[:2], size, value_states.shape[-1]))
            if self.length:
                keys[:, :, :self.length], values[:, :, :self.length] = self._view()
            self._keys, self._values = keys, values
        self._keys[:, :, self.length:self.length + n] = key_states
        self._values[:, :, self.length:self.length + n] = value_states
        self.length += n
        return self._view()

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.length:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._keys = self._keys.repeat_interleave(repeats, 0)
            self._values = self._values.repeat_interleave(repeats, 0)
            self._view()


def rollout_cache(config, capacity: int) -> Cache:
    """A cache for `capacity` positions: reserved buffers where every layer is full attention, else HF's own."""
    types = getattr(config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in types):
        return DynamicCache(config=config)
    return Cache(layers=[_ReservedLayer(capacity) for _ in types])


#: the eager loop drops finished rows (and their KV cache) once this share of the rows it runs has finished
COMPACT_FINISHED_SHARE = 0.25


@torch.no_grad()
def generate(
    model: nn.Module,
    mode: Mode,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
    marker: AnswerMarker,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    compiled: bool = False,
    static_cache: bool | None = None,
    compile_mode: str | None = None,
    sync_every: int | None = None,
    compact: bool = True,
    repeats: int = 1,
) -> Rollout:
    """Sample completions for left-padded prompts, one forward per step on a KV cache.

    `repeats`: completions per prompt (a group, or an evaluation's k samples); the rollout's rows are the
    prompts' repeats, contiguous (row i is prompt i // repeats). The eager path runs each prompt's forward once
    and shares its KV cache between the repeats.

    Eager (default): a growing `DynamicCache`, the reference. Rows that have finished leave the batch
    (`compact`): once `COMPACT_FINISHED_SHARE` of the running rows have ended, the loop keeps only the others,
    in its inputs, its KV cache and the mode's state, so a batch no longer pays for its longest completion in
    every row. Random draws are made row by row (`RowNoise`), so compaction changes no sample.

    `compiled=True`: a preallocated `StaticCache` and one `torch.compile`d step (record the step, form the
    mode's next input, decoder + LM head) shared by every mode, on the whole batch (no compaction); sampling
    stays eager (see `tarpo.decode`). `static_cache=True` without `compiled` runs that static-cache step
    eagerly (a debugging reference for the compiled path). `compile_mode`: torch.compile's mode (default
    'reduce-overhead', i.e. CUDA graphs, on CUDA; 'default' elsewhere). `sync_every`: steps between the checks
    whether every sequence has ended, each a host-device sync on an accelerator; default 1 (every step) on CPU
    and for the eager path, `decode.CUDA_SYNC_EVERY` for the static path on CUDA. Checking less often only
    runs (and trims) steps after the end.
    """
    decoder, lm_head, embed = model_parts(model)
    device = prompt_ids.device
    eos = torch.tensor(eos_ids, device=device, dtype=torch.long)
    static = compiled if static_cache is None else static_cache
    if compiled and not static:
        raise ValueError("compiled decoding runs on the static cache (static_cache=False with compiled=True)")
    compact = compact and not static
    unique_ids, unique_mask = prompt_ids, prompt_mask
    if repeats > 1:
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.repeat_interleave(repeats, 0)
    batch = prompt_ids.shape[0]
    if static:
        engine = decode.static_decoder(
            (decoder, lm_head, embed), model.config, mode, marker, batch=batch, prompt_len=prompt_ids.shape[1],
            max_new_tokens=max_new_tokens, temperature=temperature, eos_ids=eos_ids, eos=eos, pad_id=pad_id,
            compiled=compiled, compile_mode=compile_mode or decode.default_compile_mode(device))
        logits, hidden, next_position = engine.prefill(prompt_ids, prompt_mask)
        if sync_every is None:
            sync_every = decode.CUDA_SYNC_EVERY if device.type == "cuda" else 1
    else:
        mask = unique_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = rollout_cache(model.config, unique_ids.shape[1] + max_new_tokens)
        out = decoder(inputs_embeds=embed(unique_ids), attention_mask=mask, position_ids=positions,
                      past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        next_position = positions[:, -1:] + 1
        if repeats > 1:  # the repeats of a prompt share its forward and its cache
            cache.batch_repeat_interleave(repeats)
            hidden, mask = hidden.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
            next_position = next_position.repeat_interleave(repeats, 0)
        logits = lm_head(hidden).float() / temperature
        sync_every = sync_every or 1

    noise = RowNoise(generator, batch, device)
    rows = torch.arange(batch, device=device)  # the original index of every row still in the batch
    run = torch.zeros(batch, dtype=torch.long, device=device)
    seen = torch.zeros(batch, dtype=torch.bool, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    state = mode.new_state(batch, device)
    steps: list[dict] = []
    for t in range(max_new_tokens):
        draw = mode.sample(logits, hidden, ~seen & ~finished, embed, noise, greedy, state)
        last = t == max_new_tokens - 1
        if static and not last:  # record this step and run the next one's forward in one call
            (token, ends, thinking, run, seen, logps, stats), logits, hidden, next_position = engine.step(
                draw.token, draw.meta, finished, run, seen, logits, hidden, next_position)
            meta1 = None
        else:
            token, ends, thinking, run, seen, logps, stats, meta1 = decode.record_step(
                mode, marker, eos, pad_id, draw.token, draw.meta, finished, run, seen, logits, hidden)
        steps.append({"rows": rows, "token": token, "valid": ~finished, "thinking": thinking, "meta": draw.meta,
                      "logps": logps, "stats": stats})
        finished = finished | ends
        if last or (t + 1) % sync_every == 0 and bool(finished.all()):
            break
        if static:
            continue
        if compact and int(finished.sum()) >= max(1.0, COMPACT_FINISHED_SHARE * len(rows)):
            keep = (~finished).nonzero().squeeze(1)
            rows, run, seen, finished = rows[keep], run[keep], seen[keep], finished[keep]
            token, thinking, mask, next_position = token[keep], thinking[keep], mask[keep], next_position[keep]
            meta1 = {k: v[keep] for k, v in meta1.items()}
            state = {k: v[keep] for k, v in state.items()}
            cache.batch_select_indices(keep)
            noise.rows = rows
        inputs = mode.next_inputs(embed, token.unsqueeze(1), meta1, thinking.unsqueeze(1))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=next_position,
                      past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        logits = lm_head(hidden).float() / temperature
        next_position = next_position + 1

    if sync_every > 1:  # steps run after every sequence had ended hold no valid position: drop them
        length = int(torch.stack([s["valid"].any() for s in steps]).nonzero().max()) + 1
        steps = steps[:length]
    return _assemble(steps, batch, prompt_ids, prompt_mask, pad_id)


def _assemble(steps: list[dict], batch: int, prompt_ids: Tensor, prompt_mask: Tensor, pad_id: int) -> Rollout:
    """The rollout's (B, L) tensors from per-step records of the rows that were running at each step.

    A row that had left the batch is padded: pad token, not valid, not thinking, zero metadata and log-probs
    (positions that nothing reads: the loss, the statistics and the training forward's causal attention only
    see valid positions).
    """
    def stack(values: list[Tensor], fill: float | int | bool) -> Tensor:
        first = values[0]
        out = torch.full((batch, len(values), *first.shape[1:]), fill, dtype=first.dtype, device=first.device)
        for t, (value, s) in enumerate(zip(values, steps)):
            if len(s["rows"]) == batch:
                out[:, t] = value
            else:
                out[s["rows"], t] = value
        return out

    def stack_dict(key: str) -> dict[str, Tensor]:
        return {k: stack([s[key][k] for s in steps], 0) for k in steps[0][key]}

    return Rollout(prompt_ids, prompt_mask, stack([s["token"] for s in steps], pad_id),
                   stack([s["valid"] for s in steps], False), stack([s["thinking"] for s in steps], False),
                   stack_dict("logps"), stack_dict("meta"), stack_dict("stats"))


# ---------------------------------------------------------------- training forward


def completion_inputs(model: nn.Module, mode: Mode, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs_embeds, attention_mask, position_ids) of prompt + completion, as the rollout fed them."""
    _, _, embed = model_parts(model)
    tokens = rollout.tokens[:, :-1]
    meta = {k: v[:, :-1] for k, v in rollout.meta.items()}
    follow = mode.next_inputs(embed, tokens, meta, rollout.thinking[:, :-1])
    inputs = torch.cat([embed(rollout.prompt_ids), follow.to(embed.weight.dtype)], 1)
    mask = torch.cat([rollout.prompt_mask.long(), torch.ones_like(tokens, dtype=torch.long)], 1)
    return inputs, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def prompt_repeats(prompt_ids: Tensor, prompt_mask: Tensor) -> int:
    """How many consecutive rows share each prompt (a group's completions), if every prompt is repeated alike;
    else 1."""
    batch = prompt_ids.shape[0]
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    repeats = int(same.long().cumprod(0).sum()) + 1 if batch > 1 else 1  # the first run's length
    if repeats == 1 or batch % repeats:
        return 1
    first = slice(None, None, repeats)
    expanded = prompt_ids[first].repeat_interleave(repeats, 0), prompt_mask[first].repeat_interleave(repeats, 0)
    return repeats if torch.equal(expanded[0], prompt_ids) and torch.equal(expanded[1], prompt_mask) else 1


def score(
    model: nn.Module,
    mode: Mode,
    rollout: Rollout,
    temperature: float,
    inputs: tuple[Tensor, Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-step log-probs (B, L) of the recorded rollout under the model's current weights.

    `inputs` lets the reference forward reuse the policy's input embeddings
    (detached), so both score the very same sequence of inputs. Adds the
    token entropy ('token_entropy', detached) for logging. Rows that repeat a
    prompt (`prompt_repeats`) share one forward of it, gradients included.
    """
    decoder, lm_head, _ = model_parts(model)
    embeds, mask, positions = inputs if inputs is not None else completion_inputs(model, mode, rollout)
    width = rollout.prompt_ids.shape[1]
    repeats = prompt_repeats(rollout.prompt_ids, rollout.prompt_mask)
    if repeats == 1:
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        hidden = hidden[:, width - 1:]
    else:  # a group's completions share their prompt: run it once, and the completions on its (repeated) cache
        cache = DynamicCache(config=model.config)
        first = slice(None, None, repeats)
        prompt = decoder(inputs_embeds=embeds[first, :width], attention_mask=mask[first, :width],
                         position_ids=positions[first, :width], past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(repeats)
        rest = decoder(inputs_embeds=embeds[:, width:], attention_mask=mask, position_ids=positions[:, width:],
                       past_key_values=cache, use_cache=True).last_hidden_state
        hidden = torch.cat([prompt.last_hidden_state[:, -1:].repeat_interleave(repeats, 0), rest], 1)
    logits = lm_head(hidden).float() / temperature
    out = mode.logprobs(logits, hidden, rollout.tokens, rollout.meta, rollout.thinking)
    with torch.no_grad():
        logp_all = torch.log_softmax(logits, -1)
        out["token_entropy"] = -(logp_all.exp() * logp_all).sum(-1)
    return out
