"""The rollout engine and the training forward: the invariant, the marker, stopping, and each mode's formulas.

Most tests run on `format_model`, a tiny Qwen2 trained for a second to write
`<steps> #### <n><eos>`, so rollouts cross the thinking/answer boundary and
end with EOS mid-sequence (a random model never emits the marker or EOS).
"""

import contextlib
import functools
import math

import pytest
import torch
from torch.testing import assert_close

from tarpo.config import TrainConfig
from tarpo.methods import build_mode
from tarpo.modes.hrpo import init_lambda
from tarpo.modes.lepo import concrete_log_density
from tarpo.modes.tarpo import SOFT
from tarpo.rollout import AnswerMarker, completion_inputs, generate, model_parts, score

from conftest import format_corpus, left_pad

METHODS = ["grpo", "hrpo", "lepo", "tarpo"]
LATENT = ["hrpo", "lepo", "tarpo"]
TEMPERATURE = 0.8
# Rollout (KV cache, one query per step) and training forward (one full pass) sum in different
# orders, so fp32 log-probs agree to rounding error relative to their size: measured
# max |diff| / (1 + |logp|) = 2e-6 on this test's model (7e-6 on a warm-started 128x4 one).
# LEPO's Concrete log-densities reach 100-400, where an absolute tolerance alone is marginal.
LOGP_TOL = {"rtol": 1e-5, "atol": 1e-5}
# Input embeddings (entries ~0.02-0.1) rebuilt by other code paths: measured max |diff| 1.2e-7.
EMBED_TOL = {"rtol": 1e-5, "atol": 1e-6}
# TARPO bias 0: about half the thinking steps are soft; K = 5 keeps the mixtures spread.
MODE_CFG = TrainConfig(action_bias_hard=0.0, soft_top_k=5, lepo_top_k=5)


# ---------------------------------------------------------------- a model that writes the format


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and immune to oversubscription on a shared CPU."""
    with torch_threads(1):
        yield


class Sampled:
    """A rollout and what its model saw: the input fed after each step and the logits each step sampled from."""

    def __init__(self, mode, rollout, fed, logits):
        self.mode, self.rollout = mode, rollout
        self.fed = fed  # (B, L-1, d): fed[:, t] is the input embedding that followed step t
        self.logits = logits  # (B, L, V), temperature-scaled


@contextlib.contextmanager
def recording(model):
    """Record the decoder's `inputs_embeds` and the LM head's outputs of every forward."""
    decoder, lm_head, _ = model_parts(model)
    fed, logits = [], []
    hooks = [
        decoder.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["inputs_embeds"].detach().clone()),
                                          with_kwargs=True),
        lm_head.register_forward_hook(lambda m, a, out: logits.append(out.detach().float().clone())),
    ]
    try:
        yield fed, logits
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def sampled(format_model, tiny_tokenizer):
    """sampled(method, greedy) -> Sampled: one rollout of 12 prompts x 40 steps per mode, cached.

    Without compaction, so that every step's recorded inputs and logits cover the whole batch (compaction has
    its own tests below)."""
    tok = tiny_tokenizer
    ids, mask = left_pad([tok(prompt)["input_ids"] for prompt, _ in format_corpus(12, seed=1)], tok.pad_token_id)
    marker = AnswerMarker(tok, format_model.config.vocab_size)

    @functools.cache
    def run_mode(method: str, greedy: bool) -> Sampled:
        torch.manual_seed(1)  # the mode's own initialisation (action head, gate)
        mode = build_mode(method, MODE_CFG, format_model.config.hidden_size)
        with recording(format_model) as (fed, logits):
            rollout = generate(format_model, mode, ids, mask, max_new_tokens=40, temperature=TEMPERATURE,
                               eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker,
                               greedy=greedy, generator=torch.Generator().manual_seed(0), compact=False)
        steps = fed[1:]  # fed[0] is the prompt
        assert len(steps) == rollout.tokens.shape[1] - 1 and len(logits) == rollout.tokens.shape[1]
        return Sampled(mode, rollout, torch.cat(steps, 1), torch.stack(logits, 1) / TEMPERATURE)

    return run_mode


def decoded_thinking(tokenizer, rollout) -> torch.Tensor:
    """The thinking mask from the decoded text alone: valid, no '####' in the completion so far, not EOS."""
    out = torch.zeros_like(rollout.thinking)
    for b, (tokens, valid) in enumerate(zip(rollout.tokens.tolist(), rollout.valid.tolist())):
        for t in range(sum(valid)):
            out[b, t] = "####" not in tokenizer.decode(tokens[: t + 1]) and tokens[t] != tokenizer.eos_token_id
    return out


def latent_steps(method: str, rollout) -> torch.Tensor:
    """(B, L) steps whose next input is not the plain token embedding."""
    if method == "tarpo":
        return rollout.thinking & (rollout.meta["action"] == SOFT)
    return rollout.thinking.clone()  # hrpo mixes, lepo relaxes every thinking step


# ---------------------------------------------------------------- the invariant


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_rollouts_cross_the_marker_and_end_mid_sequence(sampled, tiny_tokenizer, method, greedy):
    """Precondition of the invariant tests: phase boundaries and early EOS occur in many rows."""
    r = sampled(method, greedy).rollout
    crossed = r.thinking.any(1) & (r.valid & ~r.thinking).any(1)
    ended_early = (r.tokens == tiny_tokenizer.eos_token_id).any(1) & ~r.valid[:, -1]
    assert crossed.float().mean() >= 0.5, crossed
    assert ended_early.float().mean() >= 0.25, ended_early


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_thinking_mask_follows_the_decoded_marker(sampled, tiny_tokenizer, method, greedy):
    r = sampled(method, greedy).rollout
    assert torch.equal(r.thinking, decoded_thinking(tiny_tokenizer, r))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_training_forward_feeds_the_rollouts_inputs(format_model, sampled, method, greedy):
    s = sampled(method, greedy)
    embeds, _, _ = completion_inputs(format_model, s.mode, s.rollout)
    follow = embeds[:, s.rollout.prompt_ids.shape[1]:]
    used = s.rollout.valid[:, 1:]  # the input after step t matters iff step t + 1 was recorded
    assert_close(follow[used], s.fed[used], **EMBED_TOL)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_training_forward_matches_rollout(format_model, sampled, method, greedy):
    s = sampled(method, greedy)
    r = s.rollout
    scored = score(format_model, s.mode, r, TEMPERATURE)
    assert set(r.logps) <= set(scored)
    for key, value in r.logps.items():
        assert_close(scored[key][r.valid], value[r.valid], **LOGP_TOL, msg=lambda m, key=key: f"{key}: {m}")
    if method == "lepo":  # latent steps are scored by their Concrete density, not a token log-prob
        assert (r.logps["token"][r.thinking] > 0).any()


@pytest.mark.parametrize("method", LATENT)
@pytest.mark.parametrize("greedy", [False, True])
def test_latent_inputs_enter_the_model(format_model, sampled, method, greedy):
    """Mutation: feeding plain token embeddings in the training forward must move the log-probs.

    Positions before the first latent input of their row must not move; after
    it, most must move beyond the invariant's tolerance (a mode feeding the
    hard embedding on both sides would leave them all in place).
    """
    s = sampled(method, greedy)
    r = s.rollout
    latent = latent_steps(method, r)
    assert latent.sum() >= max(20, 0.2 * r.thinking.sum()), (int(latent.sum()), int(r.thinking.sum()))
    embeds, mask, positions = completion_inputs(format_model, s.mode, r)
    _, _, embed = model_parts(format_model)
    plain = embeds.clone()
    plain[:, r.prompt_ids.shape[1]:] = embed(r.tokens[:, :-1])
    mutated = score(format_model, s.mode, r, TEMPERATURE, inputs=(plain, mask, positions))["token"]
    after = torch.cat([torch.zeros_like(latent[:, :1]), latent[:, :-1].cumsum(1) > 0], 1) & r.valid
    before = r.valid & ~after
    assert_close(mutated[before], r.logps["token"][before], **LOGP_TOL)
    moved = ~torch.isclose(mutated, r.logps["token"], **LOGP_TOL) & after
    assert moved.sum() >= 0.5 * after.sum(), (int(moved.sum()), int(after.sum()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_rollout_feeds_each_modes_formula(format_model, sampled, method, greedy):
    """The inputs the model received, recomputed from METHODS.md's formulas and the step's logits."""
    s = sampled(method, greedy)
    r = s.rollout
    E = model_parts(format_model)[2].weight.detach()
    tokens, thinking = r.tokens[:, :-1], r.thinking[:, :-1]
    p = torch.softmax(s.logits[:, :-1], -1)
    hard = E[tokens]
    if method == "grpo":
        expected = hard
    elif method == "tarpo":  # soft: the top-K of p renormalised, mixing their embeddings
        top = p.topk(MODE_CFG.soft_top_k, -1)
        weights = top.values / top.values.sum(-1, keepdim=True)
        soft = (weights.unsqueeze(-1) * E[top.indices]).sum(-2)
        expected = torch.where((thinking & (r.meta["action"][:, :-1] == SOFT)).unsqueeze(-1), soft, hard)
    elif method == "lepo":  # a relaxed sample w over the top-K of p; the token is its argmax
        ids, log_w = r.meta["topk_ids"][:, :-1], r.meta["relaxed_log_w"][:, :-1]
        top = p.topk(MODE_CFG.lepo_top_k, -1)
        assert torch.equal(ids[thinking], top.indices[thinking])
        assert torch.equal(tokens[thinking], ids.gather(-1, log_w.argmax(-1, keepdim=True)).squeeze(-1)[thinking])
        if greedy:  # no Gumbel noise: w = softmax(log p~ / tau_g)
            locations = torch.log(top.values / top.values.sum(-1, keepdim=True))
            assert_close(log_w[thinking], torch.log_softmax(locations / MODE_CFG.lepo_tau_g, -1)[thinking],
                         rtol=1e-5, atol=1e-5)
        soft = (log_w.exp().unsqueeze(-1) * E[ids]).sum(-2)
        expected = torch.where(thinking.unsqueeze(-1), soft, hard)
    else:  # hrpo: a * E[y] + sqrt(1 - a^2) * (i * p^T E / ||p||)
        latent = (p @ E) / p.norm(dim=-1, keepdim=True)
        m = s.mode
        gate_r = torch.sigmoid(hard @ m.gate_r.weight.T + m.gate_r.bias)
        gate_i = torch.sigmoid(hard @ m.gate_i.weight.T + m.gate_i.bias)
        a = torch.exp(-MODE_CFG.hrpo_c * torch.nn.functional.softplus(-m.log_lambda) * gate_r)
        mixed = a * hard + torch.sqrt(1 - a * a) * (gate_i * latent)
        expected = torch.where(thinking.unsqueeze(-1), mixed, hard)
    used = r.valid[:, 1:]
    assert_close(s.fed[used], expected[used].detach(), **EMBED_TOL)


@pytest.mark.parametrize("greedy", [False, True])
def test_lepo_step_ending_thinking_is_drawn_from_top_k_and_scored_as_a_token(sampled, greedy):
    """What lepo.py documents for the step that completes the marker or is an EOS drawn while thinking."""
    s = sampled("lepo", greedy)
    r = s.rollout
    before = torch.cat([torch.ones_like(r.thinking[:, :1]), r.thinking[:, :-1]], 1) & r.valid  # phase before the token
    ending = before & ~r.thinking
    assert ending.sum() >= 6  # one per row that ended its thinking within the budget
    ids, log_w = r.meta["topk_ids"], r.meta["relaxed_log_w"]
    drawn = ids.gather(-1, log_w.argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.equal(r.tokens[ending], drawn[ending])  # the relaxed sample's argmax, a top-K token
    token_logp = torch.log_softmax(s.logits, -1).gather(-1, r.tokens.unsqueeze(-1)).squeeze(-1)
    assert_close(r.logps["token"][ending], token_logp[ending], **LOGP_TOL)  # log p(y) under the full p


@pytest.mark.parametrize("method", METHODS)
def test_stopping_and_masks(sampled, tiny_tokenizer, method):
    r = sampled(method, False).rollout
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    for tokens, valid in zip(r.tokens, r.valid):
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any()  # valid is a prefix
        hits = (tokens[:n] == eos).nonzero()
        if len(hits):  # an EOS ends the completion and is its last valid token
            assert hits[0].item() == n - 1
            assert (tokens[n:] == pad).all()
        else:
            assert n == r.tokens.shape[1]
    assert not (r.thinking & ~r.valid).any()
    assert (r.tokens == eos).any()  # the EOS branch above was exercised


# ---------------------------------------------------------------- the marker and each mode's formulas


@pytest.mark.parametrize("text", ["a #### 5", "##\n## 3", "x ### # y", "#### ####", "no marker # here ###", "#"])
def test_marker_detection_on_token_ids(tiny_tokenizer, text):
    marker = AnswerMarker(tiny_tokenizer)
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
    seen = marker.scan(ids)[0]
    for t in range(ids.shape[1]):
        prefix = tiny_tokenizer.decode(ids[0, : t + 1].tolist())
        assert bool(seen[t]) == ("####" in prefix), (text, t, prefix)


def test_marker_detection_random_sequences(tiny_tokenizer):
    marker = AnswerMarker(tiny_tokenizer)
    hashes = [i for i in range(len(tiny_tokenizer)) if "#" in tiny_tokenizer.decode([i])]
    assert hashes
    gen = torch.Generator().manual_seed(0)
    pool = torch.tensor(hashes + list(range(20, 60)))
    ids = pool[torch.randint(len(pool), (64, 12), generator=gen)]
    seen = marker.scan(ids)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            assert bool(seen[b, t]) == ("####" in tiny_tokenizer.decode(ids[b, : t + 1].tolist()))


def test_tarpo_initialisation_and_soft_input():
    cfg = TrainConfig(soft_top_k=3)
    torch.manual_seed(0)
    mode = build_mode("tarpo", cfg, 16)
    assert mode.action_head.bias.tolist() == pytest.approx([4.6, 0.0])
    assert mode.action_head.weight.std().item() == pytest.approx(0.001, rel=0.3)
    probs = torch.softmax(mode.action_logits(torch.randn(1000, 16)), -1)
    assert probs[:, 1].mean().item() == pytest.approx(1 / (1 + math.exp(4.6)), rel=0.05)  # ~1% soft
    embed = torch.nn.Embedding(10, 16)
    meta = {"action": torch.tensor([[1, 0]]), "topk_ids": torch.tensor([[[2, 5, 7], [1, 2, 3]]]),
            "topk_weights": torch.tensor([[[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]])}
    x = mode.next_inputs(embed, torch.tensor([[4, 6]]), meta, torch.tensor([[True, True]]))
    expected_soft = 0.5 * embed.weight[2] + 0.3 * embed.weight[5] + 0.2 * embed.weight[7]
    assert torch.allclose(x[0, 0], expected_soft, atol=1e-6)
    assert torch.allclose(x[0, 1], embed.weight[6])  # hard action
    x = mode.next_inputs(embed, torch.tensor([[4, 6]]), meta, torch.tensor([[False, True]]))
    assert torch.allclose(x[0, 0], embed.weight[4])  # outside thinking: always hard


def test_tarpo_soft_weights_are_renormalised_top_k():
    cfg = TrainConfig(soft_top_k=3)
    mode = build_mode("tarpo", cfg, 4)
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0, 3.0]])
    draw = mode.sample(logits, torch.zeros(1, 4), torch.tensor([True]), torch.nn.Embedding(5, 4), None, True)
    p = torch.softmax(logits, -1)[0]
    assert draw.meta["topk_ids"][0].tolist() == [4, 1, 2]
    assert draw.meta["topk_weights"][0].tolist() == pytest.approx((p[[4, 1, 2]] / p[[4, 1, 2]].sum()).tolist())


def test_hrpo_gate_initialisation_and_formula():
    cfg = TrainConfig()
    lam = init_lambda(4096, 0.98, 0.999, 8.0, torch.Generator().manual_seed(0))
    a_at_one = torch.exp(-8.0 * torch.nn.functional.softplus(-lam))
    assert a_at_one.min() >= 0.98 - 1e-6 and a_at_one.max() <= 0.999 + 1e-6
    assert a_at_one.mean().item() == pytest.approx((0.98 + 0.999) / 2, abs=2e-3)
    mode = build_mode("hrpo", cfg, 8)
    embed = torch.nn.Embedding(6, 8)
    latent = torch.randn(1, 1, 8)
    x = mode.next_inputs(embed, torch.tensor([[3]]), {"latent": latent}, torch.tensor([[True]]))
    e = embed.weight[3]
    r, i = torch.sigmoid(mode.gate_r(e)), torch.sigmoid(mode.gate_i(e))
    a = torch.exp(-8.0 * torch.nn.functional.softplus(-mode.log_lambda) * r)
    assert torch.allclose(x[0, 0], a * e + torch.sqrt(1 - a * a) * (i * latent[0, 0]), atol=1e-6)


def test_hrpo_latent_is_normalised_expected_embedding():
    mode = build_mode("hrpo", TrainConfig(), 4)
    embed = torch.nn.Embedding(5, 4)
    logits = torch.randn(2, 5)
    draw = mode.sample(logits, torch.zeros(2, 4), torch.tensor([True, True]), embed, None, False)
    p = torch.softmax(logits, -1)
    expected = (p @ embed.weight) / p.norm(dim=-1, keepdim=True)
    assert torch.allclose(draw.meta["latent"], expected, atol=1e-6)


def test_concrete_density_matches_torch_distribution():
    gen = torch.Generator().manual_seed(0)
    locations = torch.log_softmax(torch.randn(5, 4, generator=gen), -1)
    tau = 0.7
    dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau), logits=locations)
    w = dist.sample()
    ours = concrete_log_density(w.log(), locations, tau)
    assert torch.allclose(ours, dist.log_prob(w), atol=1e-3)


def test_lepo_token_is_the_gumbel_argmax_of_the_relaxed_sample():
    mode = build_mode("lepo", TrainConfig(lepo_top_k=4, lepo_tau_g=0.5), 4)
    logits = torch.randn(64, 9, generator=torch.Generator().manual_seed(3))
    draw = mode.sample(logits, torch.zeros(64, 4), torch.ones(64, dtype=torch.bool), torch.nn.Embedding(9, 4),
                       torch.Generator().manual_seed(4), False)
    w = draw.meta["relaxed_log_w"].exp()
    assert torch.allclose(w.sum(-1), torch.ones(64), atol=1e-5)
    chosen = draw.meta["topk_ids"].gather(-1, w.argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.equal(chosen, draw.token)  # softmax is monotone: argmax of w = argmax of (l + g)


# ---------------------------------------------------------------- ATP-Latent: Gaussian latents, a stop head, an answer


def atp_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(**kw)
    cfg.atp_latents_per_step, cfg.atp_max_steps = 2, 3  # at most 6 latents
    return cfg


@pytest.fixture(scope="module")
def atp_sampled(format_model, tiny_tokenizer):
    """atp_sampled(greedy) -> (model, tokenizer, Sampled): the format model with ATP's tokens added, 16 prompts."""
    import copy

    from tarpo.modes.atp_latent import BEGIN_LATENT, SPECIAL_TOKENS

    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    model = copy.deepcopy(format_model)
    model.resize_token_embeddings(len(tok))
    rows = [tok(prompt + BEGIN_LATENT)["input_ids"] for prompt, _ in format_corpus(16, seed=2)]
    ids, mask = left_pad(rows, tok.pad_token_id)
    marker = AnswerMarker(tok, model.config.vocab_size)

    @functools.cache
    def run(greedy: bool):
        torch.manual_seed(3)
        mode = build_mode("atp_latent", atp_cfg(), model.config.hidden_size)
        with torch.no_grad():  # continue ~2/3 of the time at a group start: some blocks stop, some hit the cap
            mode.stop_head[-1].bias.copy_(torch.tensor([0.7, 0.0]))
        mode.bind(tok)
        with recording(model) as (fed, logits):
            rollout = generate(model, mode, ids, mask, max_new_tokens=24, temperature=TEMPERATURE,
                               eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker,
                               greedy=greedy, generator=torch.Generator().manual_seed(0), compact=False)
        return model, tok, Sampled(mode, rollout, torch.cat(fed[1:], 1), torch.stack(logits, 1) / TEMPERATURE)

    return run


def test_atp_rollout_has_a_latent_block_then_an_answer(atp_sampled):
    model, tok, s = atp_sampled(False)
    r, meta = s.rollout, s.rollout.meta
    ids = s.mode.special_ids
    n_latents = meta["latent"].sum(-1)
    ended = meta["stop"] | meta["forced"]
    assert bool((ended.sum(-1) == 1).all())  # every block ends exactly once, within the budget of 6 latents
    assert int(n_latents.max()) <= 6 and bool((n_latents % 2 == 0).all())  # stops only at group starts
    assert bool(meta["stop"].any()) and bool(meta["forced"].any()) and bool((n_latents > 0).any())
    end_at = ended.float().argmax(-1)
    for b in range(r.tokens.shape[0]):
        e = int(end_at[b])
        assert r.tokens[b, :e].tolist() == [ids["<lat>"]] * e and int(r.tokens[b, e]) == ids["<eol>"]
        assert bool(meta["latent"][b, :e].all()) and not bool(meta["latent"][b, e:].any())
        assert bool(meta["group_start"][b, :e + 1].tolist() == [(t % 2 == 0) for t in range(e)] + [bool(meta["stop"][b, e])])
        assert int(r.valid[b].sum()) > e + 1  # the answer follows the block
    # the latent inputs fed to the model are the sampled z, the rest are token embeddings
    _, _, embed = model_parts(model)
    latent = meta["latent"][:, :-1] & r.valid[:, 1:]
    assert_close(s.fed[latent], meta["z"][:, :-1][latent])
    plain = ~meta["latent"][:, :-1] & r.valid[:, 1:]
    assert_close(s.fed[plain], embed(r.tokens[:, :-1])[plain])


@pytest.mark.parametrize("greedy", [False, True])
def test_atp_training_forward_matches_rollout(atp_sampled, greedy):
    """Latent, stop and answer log-probs recomputed in one forward equal the rollout's, across the block's end."""
    model, _, s = atp_sampled(greedy)
    r = s.rollout
    embeds, _, _ = completion_inputs(model, s.mode, r)
    used = r.valid[:, 1:]
    assert_close(embeds[:, r.prompt_ids.shape[1]:][used], s.fed[used], **EMBED_TOL)
    scored = score(model, s.mode, r, TEMPERATURE)
    for key in ("latent", "token"):
        assert_close(scored[key][r.valid], r.logps[key][r.valid], **LOGP_TOL, msg=lambda m, key=key: f"{key}: {m}")
    masks = s.mode.loss_masks(r.meta, r.valid)
    assert bool(masks["latent"].any()) and bool(masks["token"].any()) and not bool((masks["latent"] & masks["token"]).any())
    assert bool((r.logps["token"][~masks["token"] & r.valid] == 0).all())


def test_atp_latent_log_density_and_stop_terms_by_hand():
    from tarpo.modes.atp_latent import CONTINUE, STOP, gaussian_log_density

    torch.manual_seed(0)
    mode = build_mode("atp_latent", atp_cfg(), 8)
    hidden = torch.randn(3, 5, 8)
    mu, logvar = mode.gaussian(hidden)
    z = torch.randn(3, 5, 8)
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert_close(gaussian_log_density(z, mu, logvar), expected, rtol=1e-5, atol=1e-5)
    # the scored latent term: density plus log p(continue) at group starts, log p(stop) on a stop, 0 when forced
    meta = {"z": z, "latent": torch.tensor([[1, 1, 0, 0, 0]] * 3, dtype=torch.bool),
            "group_start": torch.tensor([[1, 0, 1, 0, 0]] * 3, dtype=torch.bool),
            "stop": torch.tensor([[0, 0, 1, 0, 0]] * 3, dtype=torch.bool),
            "forced": torch.zeros(3, 5, dtype=torch.bool)}
    tokens = torch.zeros(3, 5, dtype=torch.long)
    out = mode.logprobs(torch.zeros(3, 5, 11), hidden, tokens, meta, torch.ones(3, 5, dtype=torch.bool))
    stop = torch.log_softmax(mode.stop_logits(z), -1)
    assert_close(out["latent"][:, 0], expected[:, 0] + stop[:, 0, CONTINUE])
    assert_close(out["latent"][:, 1], expected[:, 1])
    assert_close(out["latent"][:, 2], stop[:, 2, STOP])
    assert bool((out["latent"][:, 3:] == 0).all()) and bool((out["token"][:, :3] == 0).all())
    assert_close(out["token"][:, 3:], torch.full((3, 2), -math.log(11)))  # uniform logits over 11 tokens


def test_atp_needs_its_tokens(tiny_tokenizer):
    mode = build_mode("atp_latent", atp_cfg(), 32)
    with pytest.raises(ValueError, match="lacks ATP-Latent's tokens"):
        mode.bind(tiny_tokenizer)


# ---------------------------------------------------------------- finished rows leave the batch


def compaction_case(format_model, tiny_tokenizer, method: str):
    """(model, tokenizer, mode, ids, mask, marker) for `method`; ATP-Latent on the format model with its tokens."""
    import copy

    from tarpo.modes.atp_latent import BEGIN_LATENT, SPECIAL_TOKENS

    tok, model, suffix = tiny_tokenizer, format_model, ""
    if method == "atp_latent":
        tok = copy.deepcopy(tiny_tokenizer)
        tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        model = copy.deepcopy(format_model)
        model.resize_token_embeddings(len(tok))
        suffix = BEGIN_LATENT
    torch.manual_seed(1)
    mode = build_mode(method, atp_cfg() if method == "atp_latent" else MODE_CFG, model.config.hidden_size)
    if method == "atp_latent":
        with torch.no_grad():
            mode.stop_head[-1].bias.copy_(torch.tensor([0.7, 0.0]))
        mode.bind(tok)
    ids, mask = left_pad([tok(prompt + suffix)["input_ids"] for prompt, _ in format_corpus(24, seed=5)],
                         tok.pad_token_id)
    return model, tok, mode, ids, mask, AnswerMarker(tok, model.config.vocab_size)


@pytest.mark.parametrize("method", METHODS + ["atp_latent"])
def test_compaction_changes_no_sample(format_model, tiny_tokenizer, method):
    """Dropping finished rows (and their cache) gives the samples of the full batch, bit for bit in tokens and
    flags, to rounding in log-probs and float metadata (fp32), and the rollout still scores as it sampled."""
    model, tok, mode, ids, mask, marker = compaction_case(format_model, tiny_tokenizer, method)
    batch_sizes: list[int] = []
    decoder, _, _ = model_parts(model)
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: batch_sizes.append(kw["inputs_embeds"].shape[0]),
                                             with_kwargs=True)
    rollouts = {}
    try:
        for compact in (False, True):
            batch_sizes.clear()
            rollouts[compact] = generate(model, mode, ids, mask, max_new_tokens=40, temperature=TEMPERATURE,
                                         eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker,
                                         generator=torch.Generator().manual_seed(7), compact=compact)
            if compact:
                compacted_sizes = list(batch_sizes)
    finally:
        hook.remove()
    full, compacted = rollouts[False], rollouts[True]
    assert len(set(compacted_sizes)) > 2 and compacted_sizes[-1] < len(ids) // 2  # rows did leave, several times
    lengths = full.lengths
    assert int(lengths.min()) < int(lengths.max())  # the case has rows that end early
    assert torch.equal(compacted.valid, full.valid)
    assert torch.equal(compacted.tokens[full.valid], full.tokens[full.valid])
    assert torch.equal(compacted.tokens[~full.valid], torch.full_like(full.tokens[~full.valid], tok.pad_token_id))
    assert torch.equal(compacted.thinking, full.thinking)
    for key, value in full.meta.items():
        assert_close(compacted.meta[key][full.valid], value[full.valid], **EMBED_TOL)
    for key, value in full.logps.items():
        assert_close(compacted.logps[key][full.valid], value[full.valid], **LOGP_TOL)
    scored = score(model, mode, compacted, TEMPERATURE)
    for key in compacted.logps:
        assert_close(scored[key][compacted.valid], compacted.logps[key][compacted.valid], **LOGP_TOL)



@pytest.mark.parametrize("method", ["grpo", "tarpo", "atp_latent"])
def test_repeats_share_the_prompt_and_change_no_sample(format_model, tiny_tokenizer, method):
    """`repeats=k` runs each prompt once and shares its cache: the same samples as the prompts written out k times."""
    model, tok, mode, ids, mask, marker = compaction_case(format_model, tiny_tokenizer, method)
    ids, mask = ids[:8], mask[:8]
    kw = dict(max_new_tokens=30, temperature=TEMPERATURE, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              marker=marker)
    shared = generate(model, mode, ids, mask, repeats=3, generator=torch.Generator().manual_seed(3), **kw)
    written = generate(model, mode, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0),
                       generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(shared.prompt_ids, written.prompt_ids) and torch.equal(shared.prompt_mask, written.prompt_mask)
    assert torch.equal(shared.valid, written.valid) and torch.equal(shared.tokens, written.tokens)
    assert not torch.equal(shared.tokens[0::3], shared.tokens[1::3])  # the repeats are distinct samples
    for key, value in written.logps.items():
        assert_close(shared.logps[key][written.valid], value[written.valid], **LOGP_TOL)


@pytest.mark.parametrize("method", ["grpo", "hrpo", "tarpo", "atp_latent"])
def test_scoring_shares_a_groups_prompt_with_the_same_logps_and_gradients(format_model, tiny_tokenizer, method,
                                                                          monkeypatch):
    """A group's rows score their prompt once (one forward, a repeated cache): the log-probs equal the rollout's
    and a full forward's, and so do the gradients of the policy's weights."""
    import copy

    import tarpo.rollout as engine

    model, tok, mode, ids, mask, marker = compaction_case(format_model, tiny_tokenizer, method)
    model = copy.deepcopy(model)
    rollout = generate(model, mode, ids[:6], mask[:6], repeats=4, max_new_tokens=30, temperature=TEMPERATURE,
                       eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, marker=marker,
                       generator=torch.Generator().manual_seed(4))
    assert engine.prompt_repeats(rollout.prompt_ids, rollout.prompt_mask) == 4

    def scored_and_grads():
        model.zero_grad(set_to_none=True)
        out = score(model, mode, rollout, TEMPERATURE)
        (out["token"] * rollout.valid).sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    shared, shared_grads = scored_and_grads()
    monkeypatch.setattr(engine, "prompt_repeats", lambda ids, mask: 1)
    full, full_grads = scored_and_grads()
    for key in rollout.logps:
        assert_close(shared[key][rollout.valid], rollout.logps[key][rollout.valid], **LOGP_TOL)
        assert_close(shared[key][rollout.valid], full[key][rollout.valid], **LOGP_TOL)
    assert shared_grads.keys() == full_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        # sums in other orders: agree to rounding relative to the gradient's scale (measured <= 1e-6)
        scale = float(grad.abs().max())
        assert float((shared_grads[name] - grad).abs().max()) <= 1e-5 * scale + 1e-8, name


def test_prompt_repeats_finds_groups_only_when_every_prompt_repeats_alike():
    ids = torch.tensor([[1, 2], [1, 2], [3, 4], [3, 4]])
    mask = torch.ones_like(ids)
    from tarpo.rollout import prompt_repeats

    assert prompt_repeats(ids, mask) == 2
    assert prompt_repeats(ids[[0, 1, 2]], mask[[0, 1, 2]]) == 1  # 3 rows: not a multiple of the run
    assert prompt_repeats(ids[[0, 2, 1, 3]], mask[[0, 2, 1, 3]]) == 1  # not contiguous
    assert prompt_repeats(torch.tensor([[1, 2], [1, 2], [3, 4], [5, 6]]), mask) == 1  # uneven groups
    other_mask = mask.clone()
    other_mask[1, 0] = 0
    assert prompt_repeats(ids, other_mask) == 1
    assert prompt_repeats(ids[:1], mask[:1]) == 1


def test_the_reserved_cache_holds_what_a_dynamic_cache_holds():
    """Written in place (prefill, steps, rows dropped, rows repeated, growth past its capacity): the same keys and
    values as HF's concatenating cache, and the length the attention mask is built from."""
    from transformers.cache_utils import DynamicLayer

    from tarpo.rollout import _ReservedLayer

    gen = torch.Generator().manual_seed(0)
    reserved, dynamic = _ReservedLayer(capacity=6), DynamicLayer()

    def step(n, batch):
        k, v = torch.randn(batch, 2, n, 4, generator=gen), torch.randn(batch, 2, n, 4, generator=gen)
        got, want = reserved.update(k, v), dynamic.update(k, v)
        for a, b in zip(got, want):
            assert torch.equal(a, b)

    step(5, 3)  # a prefill of 5 positions
    step(1, 3)
    for layer in (reserved, dynamic):
        layer.batch_repeat_interleave(2)
    step(1, 6)  # past the capacity of 6: the buffer grows
    for layer in (reserved, dynamic):
        layer.batch_select_indices(torch.tensor([0, 3, 5]))
    step(1, 3)
    assert reserved.get_seq_length() == dynamic.get_seq_length() == 8
    assert torch.equal(reserved.keys, dynamic.keys) and torch.equal(reserved.values, dynamic.values)


@pytest.mark.parametrize("method", ["grpo", "tarpo", "atp_latent"])
def test_rollouts_on_the_reserved_cache_equal_those_on_hfs(format_model, tiny_tokenizer, method, monkeypatch):
    """The reserved cache changes no sample (HF's concatenating cache, swapped in, gives the same rollout)."""
    from transformers import DynamicCache

    import tarpo.rollout as engine

    model, tok, mode, ids, mask, marker = compaction_case(format_model, tiny_tokenizer, method)
    kw = dict(max_new_tokens=30, temperature=TEMPERATURE, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
              marker=marker, repeats=2)
    reserved = generate(model, mode, ids[:8], mask[:8], generator=torch.Generator().manual_seed(2), **kw)
    monkeypatch.setattr(engine, "rollout_cache", lambda config, capacity: DynamicCache(config=config))
    dynamic = generate(model, mode, ids[:8], mask[:8], generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(reserved.tokens, dynamic.tokens) and torch.equal(reserved.valid, dynamic.valid)
    for key, value in dynamic.logps.items():
        assert torch.equal(reserved.logps[key], value), key  # the same values in the same order: bit for bit
