"""The static-cache decode path (`generate(compiled=True)`, `tarpo.decode`) against the eager one, for every mode.

Three paths decode the same prompts with the same seeds: eager on a dynamic cache (the reference), the
static cache stepped eagerly ("static eager") and the static cache with the compiled step. The static cache
attends over its whole preallocated key range (unwritten slots masked), which sums in another order than the
dynamic cache, so log-probs agree to fp32 rounding rather than bit for bit; the draws (tokens, actions, the
phase flags) are the same. The compiled rollout also satisfies the rollout/training invariant on its own.

Compiling is slow on a CPU (seconds per mode, once per shape): one compile per mode here, shared by the tests
through `compiled_run`, on the tiny `format_model` of test_rollout.py.
"""

import copy
import functools

import pytest
import torch
from torch.testing import assert_close

from tarpo import decode
from tarpo.methods import build_mode
from tarpo.modes.base import Mode
from tarpo.modes.tarpo import SOFT
from tarpo.rollout import AnswerMarker, generate, score

from conftest import format_corpus, left_pad
from test_rollout import (
    LOGP_TOL,
    MODE_CFG,
    TEMPERATURE,
    atp_cfg,
    one_thread,  # noqa: F401 - an autouse fixture: one thread here too
)

pytestmark = [pytest.mark.compile]  # torch.compile

METHODS = ["grpo", "hrpo", "lepo", "tarpo", "atp_latent"]
STEPS = 24
# After a latent input (an embedding built from the step's continuous values, not a token's) the two paths'
# rounding differences are fed back and compound from step to step, most in greedy LEPO, whose relaxed input
# sharpens the probabilities by 1/tau_g: measured max |diff| / (1 + |value|) 7e-4 there after 24 steps, 2e-5 in
# the other modes, against 6e-6 before the first latent input (and in GRPO throughout). The draws stay the same.
DRIFT_TOL = {"rtol": 3e-3, "atol": 1e-4}


@pytest.fixture(scope="module")
def setup(format_model, tiny_tokenizer):
    """setup(method) -> (model, tokenizer, prompt ids, prompt mask, marker); ATP-Latent gets its tokens added."""

    @functools.cache
    def build(method: str):
        tok, model = tiny_tokenizer, format_model
        suffix = ""
        if method == "atp_latent":
            from tarpo.modes.atp_latent import BEGIN_LATENT, SPECIAL_TOKENS

            tok = copy.deepcopy(tiny_tokenizer)
            tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
            model = copy.deepcopy(format_model)
            model.resize_token_embeddings(len(tok))
            suffix = BEGIN_LATENT
        ids, mask = left_pad([tok(prompt + suffix)["input_ids"] for prompt, _ in format_corpus(10, seed=3)],
                             tok.pad_token_id)
        return model, tok, ids, mask, AnswerMarker(tok, model.config.vocab_size)

    return build


def make_mode(method: str, model, tok) -> Mode:
    torch.manual_seed(1)
    if method == "atp_latent":
        mode = build_mode(method, atp_cfg(), model.config.hidden_size)
        with torch.no_grad():  # stop at about a third of the group starts: blocks end both ways
            mode.stop_head[-1].bias.copy_(torch.tensor([0.7, 0.0]))
        mode.bind(tok)
        return mode
    return build_mode(method, MODE_CFG, model.config.hidden_size)


GRAPHS: dict[tuple[str, str, bool], int] = {}  # graphs dynamo captured during each `run`


@pytest.fixture(scope="module")
def run(setup):
    """run(method, path, greedy) -> (mode, model, rollout); path in {'eager', 'static', 'compiled'}; cached."""
    modes = {}

    @functools.cache
    def go(method: str, path: str, greedy: bool):
        model, tok, ids, mask, marker = setup(method)
        if method not in modes:  # one mode object per method: the compiled step is cached per mode
            modes[method] = make_mode(method, model, tok)
        mode = modes[method]
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        rollout = generate(model, mode, ids, mask, max_new_tokens=STEPS, temperature=TEMPERATURE,
                           eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker, greedy=greedy,
                           generator=torch.Generator().manual_seed(0), compiled=path == "compiled",
                           static_cache=path != "eager")
        GRAPHS[method, path, greedy] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
        return mode, model, rollout

    return go


def after_latent_input(method: str, r) -> torch.Tensor:
    """(B, L) steps after a row's first latent input (a soft, mixed, relaxed or Gaussian input embedding)."""
    if method == "grpo":
        latent = torch.zeros_like(r.thinking)
    elif method == "tarpo":
        latent = r.thinking & (r.meta["action"] == SOFT)
    elif method == "atp_latent":
        latent = r.meta["latent"]
    else:  # hrpo mixes, lepo relaxes every thinking step's input
        latent = r.thinking
    return torch.cat([torch.zeros_like(latent[:, :1]), latent[:, :-1].cumsum(1) > 0], 1)


def assert_same_rollout(method: str, ours, reference) -> None:
    """The same draws and flags exactly; log-probs and float metadata within the invariant's tolerance up to a
    row's first latent input, within DRIFT_TOL after it."""
    assert ours.tokens.shape == reference.tokens.shape
    for name in ("tokens", "valid", "thinking"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name
    assert ours.meta.keys() == reference.meta.keys() and ours.logps.keys() == reference.logps.keys()
    after = after_latent_input(method, reference)
    before = reference.valid & ~after
    after = reference.valid & after
    pairs = [(f"meta {k}", ours.meta[k], v) for k, v in reference.meta.items() if v.is_floating_point()]
    pairs += [(f"logps {k}", ours.logps[k], v) for k, v in reference.logps.items()]
    for name, mine, theirs in pairs:
        assert_close(mine[before], theirs[before], **LOGP_TOL, msg=lambda m, name=name: f"{name}, before: {m}")
        assert_close(mine[after], theirs[after], **DRIFT_TOL, msg=lambda m, name=name: f"{name}, after: {m}")
    for key, value in reference.meta.items():
        if not value.is_floating_point():
            assert torch.equal(ours.meta[key], value), key
    for key, value in reference.stats.items():
        assert torch.equal(ours.stats[key], value), key


def test_rollouts_end_early_and_cross_the_marker(run, setup):
    """Precondition: the comparisons below cover early EOS (finished rows) and the phase boundary."""
    _, _, r = run("grpo", "eager", False)
    eos = setup("grpo")[1].eos_token_id
    assert ((r.tokens == eos).any(1) & ~r.valid[:, -1]).any()
    assert (r.thinking.any(1) & (r.valid & ~r.thinking).any(1)).any()


# ---------------------------------------------------------------- static cache, eager step


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_static_eager_matches_dynamic(run, method, greedy):
    """Same draws as the dynamic cache; log-probs to fp32 rounding (the longer masked key range sums differently)."""
    _, _, static = run(method, "static", greedy)
    _, _, eager = run(method, "eager", greedy)
    assert_same_rollout(method, static, eager)


def test_static_decoder_serves_shorter_prompts_and_trims_late_syncs(format_model, tiny_tokenizer):
    """A decoder sized for a long prompt serves a shorter one (behind masked slots); checking for the end only
    every 4 steps runs steps past it, which are trimmed: the same rollouts as eager decoding."""
    tok = tiny_tokenizer
    marker = AnswerMarker(tok, format_model.config.vocab_size)
    mode = make_mode("grpo", format_model, tok)
    ids, mask = left_pad([tok(p)["input_ids"] for p, _ in format_corpus(6, seed=4)], tok.pad_token_id)
    wide_ids = torch.cat([torch.full((6, 20), tok.pad_token_id), ids], 1)  # the same prompts, 20 more pads
    wide_mask = torch.cat([torch.zeros(6, 20, dtype=mask.dtype), mask], 1)
    kw = dict(max_new_tokens=40, temperature=TEMPERATURE, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              marker=marker)
    # the scenario: a seed whose rows all end before the budget, between two checks (not on a multiple of 4)
    for seed in range(50):
        length = generate(format_model, mode, ids, mask, generator=torch.Generator().manual_seed(seed),
                          **kw).tokens.shape[1]
        if length < 40 and length % 4:
            break
    else:
        pytest.fail("no seed in 0..49 ends every row between two checks")
    decode.clear_cache()
    rollouts = []
    for (i, m), sync_every in (((wide_ids, wide_mask), 1), ((ids, mask), 4)):
        rollouts.append(generate(format_model, mode, i, m, static_cache=True, sync_every=sync_every,
                                 generator=torch.Generator().manual_seed(seed), **kw))
        eager = generate(format_model, mode, i, m, generator=torch.Generator().manual_seed(seed), **kw)
        assert_same_rollout("grpo", rollouts[-1], eager)
    (decoder,) = decode._DECODERS.values()
    assert decoder.prompt_len == decode.bucket(wide_ids.shape[1]) > decode.bucket(ids.shape[1])
    assert torch.equal(rollouts[0].tokens, rollouts[1].tokens)
    assert rollouts[1].tokens.shape[1] == length  # the steps run past the end were trimmed


# ---------------------------------------------------------------- the compiled step


@pytest.mark.parametrize("method", METHODS)
def test_compiled_matches_eager(run, method):
    """Sampled: the same tokens as eager decoding for the same seed, log-probs within the invariant's tolerance."""
    mode, _, compiled = run(method, "compiled", False)
    _, _, eager = run(method, "eager", False)
    assert_same_rollout(method, compiled, eager)
    (decoder,) = [d for d in decode._DECODERS.values() if d.compiled and d.mode is mode]
    assert decoder.fullgraph  # the whole step, the mode's parts included, is one graph: no graph break
    assert GRAPHS[method, "compiled", False] == 1  # compiled once for all the steps


@pytest.mark.parametrize("method", METHODS)
def test_compiled_greedy_matches_eager(run, method):
    run(method, "compiled", False)
    _, _, compiled = run(method, "compiled", True)
    assert GRAPHS[method, "compiled", True] == 0  # the sampled rollout's graph serves this call too
    _, _, eager = run(method, "eager", True)
    assert_same_rollout(method, compiled, eager)


@pytest.mark.parametrize("method", METHODS)
def test_compiled_rollout_satisfies_the_invariant(run, method):
    """The training forward's log-probs equal the compiled rollout's (the invariant of test_rollout.py)."""
    mode, model, r = run(method, "compiled", False)
    scored = score(model, mode, r, TEMPERATURE)
    for key, value in r.logps.items():
        tol = dict(LOGP_TOL)
        if method == "lepo" and key == "token":
            # a latent step's Concrete log-density moves by up to 2K x its locations' error, and those (log p~)
            # by up to 2x the logits' (dlog q / dl_i = 1 - K s_i): the compiled step's logits differ from the
            # training forward's by rounding like every mode's (LOGP_TOL), so the density is held to 4K x that
            tol["atol"] = 4 * MODE_CFG.lepo_top_k * LOGP_TOL["atol"]
        assert_close(scored[key][r.valid], value[r.valid], **tol, msg=lambda m, key=key: f"{key}: {m}")


class BreakingMode(Mode):
    """Explicit decoding whose next input reads a Python bool off a tensor: a graph break in the step."""

    def next_inputs(self, embed, tokens, meta, thinking):
        return embed(tokens) if bool(thinking.any()) else embed(tokens).clone()


def test_a_step_that_breaks_the_graph_compiles_in_pieces(setup):
    model, tok, ids, mask, marker = setup("grpo")
    mode = BreakingMode(MODE_CFG, model.config.hidden_size)
    kw = dict(max_new_tokens=8, temperature=TEMPERATURE, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              marker=marker)
    with pytest.warns(UserWarning, match="does not compile to one graph"):
        compiled = generate(model, mode, ids, mask, compiled=True, generator=torch.Generator().manual_seed(0), **kw)
    eager = generate(model, mode, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    assert_same_rollout("grpo", compiled, eager)
    (decoder,) = [d for d in decode._DECODERS.values() if d.mode is mode]
    assert decoder.compiled and not decoder.fullgraph


def test_compiled_needs_the_static_cache(setup):
    model, tok, ids, mask, marker = setup("grpo")
    with pytest.raises(ValueError, match="static cache"):
        generate(model, Mode(MODE_CFG, model.config.hidden_size), ids, mask, max_new_tokens=2, temperature=1.0,
                 eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker, compiled=True, static_cache=False)
