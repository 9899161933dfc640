"""TARPO's two router ablations: a random router (a coin of fixed bias, head frozen) and an action head that
reads a detached h_t (the action term then trains the head only)."""

import math

import pytest
import torch

from tarpo.config import TrainConfig
from tarpo.methods import build_mode
from tarpo.optim import optimizer_groups
from tarpo.sampling import sample_and_score

from conftest import format_corpus

HIDDEN = 32


def tarpo(**train) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mode("tarpo", TrainConfig(action_bias_hard=2.2, **train), HIDDEN)


def test_the_random_router_ignores_h_and_its_log_probs_are_constants():
    mode = tarpo(action_router="random", random_soft_ratio=0.3)
    hidden = torch.randn(4, 7, HIDDEN, requires_grad=True)
    logps = torch.log_softmax(mode.action_logits(hidden), -1)
    assert logps.shape == (4, 7, 2)
    assert torch.allclose(logps[..., 0], torch.full((4, 7), math.log(0.7)))
    assert torch.allclose(logps[..., 1], torch.full((4, 7), math.log(0.3)))
    assert not logps.requires_grad  # nothing to differentiate: the action term is a constant
    assert not any(p.requires_grad for p in mode.parameters())
    # and the optimiser has no group for the frozen head
    model = torch.nn.Linear(2, 2)
    assert [g["name"] for g in optimizer_groups(model, mode, mode.cfg)] == ["policy", "policy_no_decay"]


def test_the_random_router_goes_soft_at_its_rate(format_model, tiny_tokenizer):
    p = 0.3
    mode = tarpo(action_router="random", random_soft_ratio=p)
    records = [{"question": q, "answer": "0"} for q, _ in format_corpus(16, seed=5)]
    drawn = sample_and_score(format_model, tiny_tokenizer, mode, records, repeats=4, temperature=1.0,
                             max_new_tokens=30, max_prompt_tokens=256, generator=torch.Generator().manual_seed(0))
    thinking = drawn.rollout.thinking & drawn.rollout.valid
    n = int(thinking.sum())
    soft = int(mode.soft_mask(drawn.rollout.meta, thinking).sum())
    assert n > 400
    # a binomial count: within 5 standard deviations of n p (a false alarm every ~2 million runs)
    assert abs(soft - n * p) < 5 * math.sqrt(n * p * (1 - p)), (soft, n)


def test_the_learned_router_goes_soft_at_its_own_rate(format_model, tiny_tokenizer):
    """The same draw with the learned head at bias 2.2 (about 10% soft): the coin's rate was not an accident."""
    mode = tarpo()
    records = [{"question": q, "answer": "0"} for q, _ in format_corpus(16, seed=5)]
    drawn = sample_and_score(format_model, tiny_tokenizer, mode, records, repeats=4, temperature=1.0,
                             max_new_tokens=30, max_prompt_tokens=256, generator=torch.Generator().manual_seed(0))
    thinking = drawn.rollout.thinking & drawn.rollout.valid
    ratio = float(mode.soft_mask(drawn.rollout.meta, thinking).sum()) / float(thinking.sum())
    assert 0.03 < ratio < 0.2  # sigmoid(-2.2) = 0.0998


@pytest.mark.parametrize("detach", [False, True])
def test_a_detached_hidden_state_keeps_the_action_gradient_in_the_head(detach):
    mode = tarpo(action_detach_hidden=detach)
    hidden = torch.randn(3, 5, HIDDEN, requires_grad=True)
    action = torch.randint(0, 2, (3, 5))
    logps = torch.log_softmax(mode.action_logits(hidden), -1).gather(-1, action.unsqueeze(-1))
    logps.sum().backward()
    assert mode.action_head.weight.grad is not None and mode.action_head.weight.grad.abs().sum() > 0
    if detach:
        assert hidden.grad is None
    else:
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0
