"""Static-cache decoding: a preallocated KV cache and one `torch.compile`d decode step that every mode shares.

`rollout.generate(..., compiled=True)` runs its sampling loop on a
`StaticDecoder`: the prompt is prefilled eagerly on a dynamic cache (the same
forward as the eager path, so the first step's logits are the eager ones) and
copied into a `transformers.StaticCache` of fixed length
`bucket(prompt) + max_new_tokens`; every later step is one call of a compiled
function that does, on fixed shapes,

    record the sampled step (pad after the end, EOS, answer marker, thinking flag,
    the mode's log-probs and step stats) -> the mode's next input embedding ->
    one decoder step on the static cache -> LM head -> temperature.

Sampling (`mode.sample`) stays eager, outside the compiled region: it draws
from a `torch.Generator`, which the compiled graph cannot take, and keeping it
eager keeps the draws the eager path makes (same samples for a seed wherever
the logits agree bit for bit, see below).

The attention mask is constant for a call: (B, bucket + max_new_tokens) with
the prompt's padding and ones everywhere after it; causality (the static
cache's own write position) hides the not-yet-written slots. Position ids are
a (B, 1) tensor incremented each step, so nothing in the step depends on a
Python int and one graph serves every step.

Arithmetic. The static path attends over the whole preallocated key range
with the unwritten slots masked; the dynamic path over exactly the keys
written so far. SDPA's reductions depend on the key length, so the two agree
to fp32 rounding (~1e-7 on hidden states), not bit for bit, even without
compilation (the "static eager" path, `generate(static_cache=True)`), and
inductor's fused kernels round differently again. Sampled tokens (and
actions, stops) are the same unless a draw lands within rounding of a
category boundary; log-probs agree within the rollout/training invariant's
tolerance up to a row's first latent input. After it, the latent input
(built from the step's continuous values) feeds the rounding difference back
and it compounds from step to step: still far below anything a draw notices
(tests/test_compiled_decode.py measures ~1e-3 relative after 24 greedy LEPO
steps). Either path's rollout satisfies the invariant against `score`.

Speed. Besides the fused step, the compiled path keeps transformers' one-query
grouped-query packing in attention (`decode_sdpa`; under compile "sdpa" would
copy the whole cache to repeat the key/value heads each step), evaluates
dynamo's guards on a rollout's first step only, and on CUDA checks whether
every sequence has ended every `CUDA_SYNC_EVERY` steps (a host sync) and runs
the step as a CUDA graph ('reduce-overhead').

Static decoders (cache + compiled step) are kept per (model, mode, marker,
batch, max_new_tokens, temperature, eos/pad ids, device, autocast state,
compile mode), the `CACHE_SIZE` most recently used. Each serves every prompt
up to its prompt capacity, a multiple of `PROMPT_BUCKET` (shorter prompts sit
behind masked slots); a longer prompt replaces it with a bigger one. Training
calls `generate` every step with the same batch and budget, so it compiles
once per prompt bucket it grows through, then reuses that graph.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

#: prompt lengths are rounded up to a multiple of this, so compiled shapes repeat
PROMPT_BUCKET = 16
#: compiled decoders kept alive (each holds its static KV cache)
CACHE_SIZE = 4
#: default number of steps between the "all sequences ended?" checks of a static-cache rollout on CUDA
#: (each check is a host-device sync); on CPU it checks every step, which costs nothing there
CUDA_SYNC_EVERY = 8
#: evaluate dynamo's guards on the first compiled step of a rollout only (about 0.3 ms a step on a CPU)
SKIP_GUARDS_WITHIN_A_CALL = True

_DECODERS: collections.OrderedDict[tuple, "StaticDecoder"] = collections.OrderedDict()


def bucket(length: int, multiple: int | None = None) -> int:
    multiple = multiple or PROMPT_BUCKET
    return -(-length // multiple) * multiple


def default_compile_mode(device: torch.device) -> str:
    """'reduce-overhead' (CUDA graphs) on CUDA, inductor's 'default' elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


# ---------------------------------------------------------------- one recorded step (every path shares it)


def record_step(mode, marker, eos: Tensor, pad_id: int, token: Tensor, meta: dict[str, Tensor], finished: Tensor,
                run: Tensor, seen: Tensor, logits: Tensor, hidden: Tensor):
    """Book-keep one sampled step; all (B, ...). Returns (token, ends, thinking, run, seen, logps, stats, meta1),
    `meta1` the step's metadata as (B, 1, ...) for `mode.next_inputs`."""
    token = torch.where(finished, torch.full_like(token, pad_id), token)
    ends = torch.isin(token, eos) & ~finished
    run, seen = marker.update(run, seen, token)
    thinking = ~seen & ~ends & ~finished
    meta1 = {k: v.unsqueeze(1) for k, v in meta.items()}
    thinking1 = thinking.unsqueeze(1)
    logps = mode.logprobs(logits.unsqueeze(1), hidden.unsqueeze(1), token.unsqueeze(1), meta1, thinking1)
    stats = mode.step_stats(meta1, thinking1)
    return (token, ends, thinking, run, seen, {k: v[:, 0] for k, v in logps.items()},
            {k: v[:, 0] for k, v in stats.items()}, meta1)


# ---------------------------------------------------------------- attention for the compiled step

#: the attention implementation the compiled step runs under, in place of "sdpa"
DECODE_SDPA = "tarpo_decode_sdpa"


def decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' "sdpa" attention, with its one-query grouped-query packing kept under torch.compile.

    For a single query, eager "sdpa" attends with the query heads packed as (B, kv heads, group, d) against the
    un-repeated keys; under torch.compile it repeats the keys and values to every query head instead, which copies
    the whole static cache each step. Same arithmetic as the eager packing; anything else goes to "sdpa" itself.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if (query.shape[2] != 1 or groups == 1 or kwargs.get("position_bias") is not None
            or (attention_mask is not None and (attention_mask.ndim != 4 or attention_mask.shape[1] != 1))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_SDPA, decode_sdpa)
AttentionMaskInterface.register(DECODE_SDPA, sdpa_mask)


class _Attention:
    """Run a block with every "sdpa" config of a module switched to DECODE_SDPA (others are left alone)."""

    def __init__(self, module: nn.Module) -> None:
        configs = {id(m.config): m.config for m in module.modules() if hasattr(m, "config")}
        self.configs = [c for c in configs.values() if getattr(c, "_attn_implementation", None) == "sdpa"]

    def __enter__(self) -> None:
        for c in self.configs:
            c._attn_implementation = DECODE_SDPA

    def __exit__(self, *exc) -> None:
        for c in self.configs:
            c._attn_implementation = "sdpa"


# ---------------------------------------------------------------- the static decoder


class StaticDecoder:
    """A static KV cache for (batch, prompt bucket + max_new_tokens) and the decode step on it, compiled or not."""

    def __init__(self, parts: tuple[nn.Module, nn.Module, nn.Embedding], config, mode, marker, *, batch: int,
                 prompt_len: int, max_new_tokens: int, temperature: float, eos: Tensor, pad_id: int,
                 compiled: bool, compile_mode: str | None) -> None:
        self.decoder, self.lm_head, self.embed = parts
        self.config = config
        self.mode, self.marker, self.eos, self.pad_id = mode, marker, eos, pad_id
        self.batch, self.prompt_len, self.max_new_tokens = batch, prompt_len, max_new_tokens
        self.temperature = temperature
        self.cache = StaticCache(config=config, max_cache_len=prompt_len + max_new_tokens)
        if any(type(layer) is not StaticLayer for layer in self.cache.layers):
            raise ValueError("static-cache decoding supports full-attention layers only (this model has sliding-window "
                             "or other cache layers): decode eagerly (compiled=False)")
        self.mask: Tensor | None = None
        self.guarded = False
        self.compiled, self.compile_mode = compiled, compile_mode
        self.cudagraphs = compiled and eos.device.type == "cuda" and compile_mode in ("reduce-overhead", "max-autotune")
        self.attention = _Attention(self.decoder) if compiled else contextlib.nullcontext()
        self.fullgraph = False  # whether the compiled step is one graph (set by _compile)
        self._step = self._compile(fullgraph=True) if compiled else self._step_eager

    def _compile(self, fullgraph: bool):
        self.fullgraph = fullgraph
        _raise_recompile_limit()
        return torch.compile(self._step_eager, mode=self.compile_mode, dynamic=False, fullgraph=fullgraph)

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the prompt (eagerly, on a dynamic cache: the eager path's forward), copy its keys and values into
        the static cache right-aligned at the bucket's end. Returns (logits, hidden, next position ids)."""
        batch, length = prompt_ids.shape
        offset = self.prompt_len - length
        mask = prompt_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        dynamic = DynamicCache(config=self.config)
        out = self.decoder(inputs_embeds=self.embed(prompt_ids), attention_mask=mask, position_ids=positions,
                           past_key_values=dynamic, use_cache=True)
        hidden = out.last_hidden_state[:, -1].contiguous()  # the layout the step's outputs have: one graph
        logits = self.lm_head(hidden).float() / self.temperature
        for layer, source in zip(self.cache.layers, dynamic.layers):
            if not layer.is_initialized:
                layer.lazy_initialization(source.keys, source.values)
            layer.keys.zero_()  # left-over slots are masked; zeros keep them finite
            layer.values.zero_()
            layer.keys[:, :, offset:self.prompt_len].copy_(source.keys)
            layer.values[:, :, offset:self.prompt_len].copy_(source.values)
            layer.cumulative_length.fill_(self.prompt_len)
        full = torch.ones(batch, self.prompt_len + self.max_new_tokens, dtype=torch.long, device=mask.device)
        full[:, :offset] = 0
        full[:, offset:self.prompt_len] = mask
        if self.mask is None:
            self.mask = full
        else:  # same storage every call: a CUDA graph reads it from a fixed address
            self.mask.copy_(full)
        self.guarded = False  # the call's first step evaluates dynamo's guards in full
        return logits, hidden, positions[:, -1:] + 1

    def _step_eager(self, token, meta, finished, run, seen, logits, hidden, position, mask):
        token, ends, thinking, run, seen, logps, stats, meta1 = record_step(
            self.mode, self.marker, self.eos, self.pad_id, token, meta, finished, run, seen, logits, hidden)
        inputs = self.mode.next_inputs(self.embed, token.unsqueeze(1), meta1, thinking.unsqueeze(1))
        out = self.decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=position,
                           past_key_values=self.cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        logits = self.lm_head(hidden).float() / self.temperature
        return (token, ends, thinking, run, seen, logps, stats), logits, hidden, position + 1

    def step(self, token, meta, finished, run, seen, logits, hidden, position):
        """Record step t and run step t + 1's forward: ((token, ends, thinking, run, seen, logps, stats),
        next logits, next hidden, next position ids)."""
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        args = (token, meta, finished, run, seen, logits, hidden, position, self.mask)
        # Within one rollout nothing a guard checks changes from step to step (same objects, shapes, dtypes,
        # grad and autocast state), so once the first step has passed every guard the later ones skip them.
        skip = self.compiled and self.guarded and SKIP_GUARDS_WITHIN_A_CALL
        with self.attention, torch.compiler.set_stance("default", skip_guard_eval_unsafe=skip):
            try:
                out = self._step(*args)
            except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as error:  # tracing, before it ran
                if not self.compiled:
                    raise
                # A mode the tracer cannot capture in one graph: compile it in pieces (graph breaks) instead.
                warnings.warn(f"{type(self.mode).__name__}'s decode step does not compile to one graph; compiling "
                              f"it with graph breaks (slower): {str(error).splitlines()[0]}", stacklevel=2)
                self._step = self._compile(fullgraph=False)
                out = self._step(*args)
        self.guarded = True
        if self.cudagraphs:  # a graph's outputs live in its pool until the next replay overwrites them
            out = _clone(out)
        return out


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def _raise_recompile_limit() -> None:
    """Every StaticDecoder's step shares one code object, so dynamo counts their graphs against one recompile limit
    (8 by default); one per cached (mode, shape) is expected here, so allow more."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))


def static_decoder(parts, config, mode, marker, *, batch: int, prompt_len: int, max_new_tokens: int,
                   temperature: float, eos_ids: list[int], eos: Tensor, pad_id: int, compiled: bool,
                   compile_mode: str | None) -> StaticDecoder:
    """The cached StaticDecoder for this call (built on first use; the least recently used one is dropped).

    A decoder serves every prompt up to its prompt capacity (shorter prompts sit right-aligned behind masked
    slots); a longer prompt replaces it with one of the longer bucket. So a training run, whose prompt lengths
    vary from step to step, settles on one decoder (one graph) once its longest prompt has been seen.
    """
    device = eos.device
    autocast = (torch.is_autocast_enabled(device.type),
                torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None)
    # ids are only reused once an object is freed; an entry holds its objects, so a hit is the same objects
    key = (id(parts[0]), id(parts[1]), id(parts[2]), id(mode), id(marker), batch, max_new_tokens, float(temperature),
           tuple(eos_ids), pad_id, str(device), autocast, compiled, compile_mode)
    decoder = _DECODERS.get(key)
    if decoder is None or decoder.prompt_len < prompt_len:
        decoder = StaticDecoder(parts, config, mode, marker, batch=batch, prompt_len=bucket(prompt_len),
                                max_new_tokens=max_new_tokens, temperature=temperature, eos=eos, pad_id=pad_id,
                                compiled=compiled, compile_mode=compile_mode)
        _DECODERS[key] = decoder
        while len(_DECODERS) > CACHE_SIZE:
            _DECODERS.popitem(last=False)
    _DECODERS.move_to_end(key)
    return decoder


def clear_cache() -> None:
    """Drop every cached StaticDecoder (and its KV cache); compiled graphs stay in dynamo's cache."""
    _DECODERS.clear()
