"""The rollout engine and the training forward: the invariant, the marker, stopping, and each mode's formulas."""

import math

import pytest
import torch

from tarpo.config import TrainConfig
from tarpo.modes import build_mode
from tarpo.modes.hrpo import init_lambda
from tarpo.modes.lepo import concrete_log_density
from tarpo.rollout import AnswerMarker, generate, score

METHODS = ["grpo", "hrpo", "lepo", "tarpo"]


def prompts(tokenizer, n=6):
    texts = ["Ann has 3 apples.", "Bo has 12 pears. He buys 4 more.", "x", "Cy has 7 figs. ####"] * 2
    rows = [tokenizer(t)["input_ids"] for t in texts[:n]]
    width = max(map(len, rows))
    ids = torch.full((n, width), tokenizer.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def run(model, tokenizer, mode, greedy=False, steps=24, temperature=0.8, seed=0):
    ids, mask = prompts(tokenizer)
    return generate(model, mode, ids, mask, max_new_tokens=steps, temperature=temperature,
                    eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                    marker=AnswerMarker(tokenizer, model.config.vocab_size),
                    greedy=greedy, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("greedy", [False, True])
def test_training_forward_matches_rollout(tiny_model, tiny_tokenizer, method, greedy):
    # Bias 0: about half the TARPO thinking steps are soft, so soft inputs are exercised.
    cfg = TrainConfig(action_bias_hard=0.0, soft_top_k=5, lepo_top_k=5)
    torch.manual_seed(1)
    mode = build_mode(method, cfg, tiny_model.config.hidden_size)
    rollout = run(tiny_model, tiny_tokenizer, mode, greedy=greedy)
    assert rollout.thinking.any()
    if method in ("tarpo", "lepo") and not greedy:
        assert rollout.stats["soft"].sum() > 3
    scored = score(tiny_model, mode, rollout, 0.8)
    for key, value in rollout.logps.items():
        diff = ((scored[key] - value).abs() * rollout.valid).max().item()
        assert diff < 1e-4, (key, diff)
    if method == "lepo":  # latent steps are scored by their Concrete density, not a token log-prob
        assert (rollout.logps["token"][rollout.thinking] > 0).any()


def test_soft_inputs_change_the_trajectory(tiny_model, tiny_tokenizer):
    """Guard against a mode that silently feeds hard inputs: perturbing soft weights must change the scores."""
    cfg = TrainConfig(action_bias_hard=-5.0, soft_top_k=5)  # nearly all soft
    torch.manual_seed(1)
    mode = build_mode("tarpo", cfg, tiny_model.config.hidden_size)
    rollout = run(tiny_model, tiny_tokenizer, mode)
    assert rollout.stats["soft"].sum() / rollout.thinking.sum() > 0.9
    before = score(tiny_model, mode, rollout, 0.8)["token"]
    rollout.meta["topk_weights"] = torch.roll(rollout.meta["topk_weights"], 1, dims=-1)
    after = score(tiny_model, mode, rollout, 0.8)["token"]
    assert ((after - before).abs() * rollout.valid).max() > 1e-3


def test_stopping_and_masks(tiny_model, tiny_tokenizer):
    mode = build_mode("grpo", TrainConfig(), tiny_model.config.hidden_size)
    rollout = run(tiny_model, tiny_tokenizer, mode, steps=40, temperature=3.0)
    eos = tiny_tokenizer.eos_token_id
    for tokens, valid in zip(rollout.tokens, rollout.valid):
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any()  # valid is a prefix
        hits = (tokens[:n] == eos).nonzero()
        if len(hits):  # an EOS ends the completion and is its last valid token
            assert hits[0].item() == n - 1
            assert (tokens[n:] == tiny_tokenizer.pad_token_id).all()
        else:
            assert n == rollout.tokens.shape[1]
    assert not (rollout.thinking & ~rollout.valid).any()


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


def test_thinking_ends_at_the_marker(tiny_model, tiny_tokenizer):
    mode = build_mode("grpo", TrainConfig(), tiny_model.config.hidden_size)
    rollout = run(tiny_model, tiny_tokenizer, mode, steps=30, temperature=2.0)
    seen = AnswerMarker(tiny_tokenizer).scan(rollout.tokens)
    eos = rollout.tokens == tiny_tokenizer.eos_token_id
    assert torch.equal(rollout.thinking, rollout.valid & ~seen & ~eos)


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
