"""The GRPO loss against values computed by hand on small tensors."""

import math

import pytest
import torch

from tarpo.loss import group_advantages, grpo_loss, k3_kl


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, 3)
    # group 1: mean 1/3, unbiased std sqrt(1/3)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(1 - 1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4)]
    assert adv[:3].tolist() == pytest.approx(expected, rel=1e-6)
    assert adv[3:].tolist() == pytest.approx([-2 / 3 / (std + 1e-4), 1 / 3 / (std + 1e-4), 1 / 3 / (std + 1e-4)], rel=1e-6)


def test_equal_rewards_give_zero_advantage_and_finite_loss():
    adv = group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1], [-1.0, -1.0], [-3.0, -0.2]], requires_grad=True)
    out = grpo_loss({"token": logp}, {"token": logp.detach() - 0.1}, None, adv, torch.ones(4, 2, dtype=torch.bool), 0.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    assert torch.all(logp.grad == 0)


def test_k3_kl_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, rel=1e-6)
    assert k3_kl(logp, logp).tolist() == [0.0, 0.0]


def test_token_loss_value_masking_and_gradient():
    # two completions, lengths 2 and 3 (last position of the first is padding)
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -1.5, -0.25]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -0.5]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([2.0, -1.0])
    beta = 0.1
    out = grpo_loss({"token": logp}, {"token": ref}, None, adv, valid, beta)
    kl = lambda lp, r: math.exp(r - lp) - (r - lp) - 1  # noqa: E731
    c1 = ((2.0 - beta * kl(-1.0, -1.5)) + (2.0 - beta * kl(-2.0, -1.0))) / 2
    c2 = ((-1.0 - beta * kl(-0.5, -0.5)) + (-1.0 - beta * kl(-1.5, -1.0)) + (-1.0 - beta * kl(-0.25, -0.5))) / 3
    assert out.loss.item() == pytest.approx(-(c1 + c2) / 2, rel=1e-6)
    out.loss.backward()
    # d/dlogp of ratio*A is A (ratio = 1); of -beta*KL is -beta*(1 - exp(ref - logp)); loss = -mean, per-completion mean.
    g = lambda a, lp, r, n: -(a - beta * (1 - math.exp(r - lp))) / n / 2  # noqa: E731
    assert logp.grad[0].tolist() == pytest.approx([g(2.0, -1.0, -1.5, 2), g(2.0, -2.0, -1.0, 2), 0.0], rel=1e-5)
    assert logp.grad[1, 2].item() == pytest.approx(g(-1.0, -0.25, -0.5, 3), rel=1e-5)
    pairs = [(-1.0, -1.5), (-2.0, -1.0), (-0.5, -0.5), (-1.5, -1.0), (-0.25, -0.5)]
    assert out.kl == pytest.approx(sum(kl(a, b) for a, b in pairs) / 5, rel=1e-6)


def test_action_term_on_thinking_positions_only():
    logp = torch.zeros(1, 3)
    action = torch.tensor([[-0.1, -0.2, -0.3]], requires_grad=True)
    ref_action = torch.tensor([[-0.1, -0.4, -0.3]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    thinking = torch.tensor([[True, True, False]])
    adv = torch.tensor([1.5])
    beta, w = 0.2, 0.1
    out = grpo_loss({"token": logp, "action": action}, {"token": logp, "action": ref_action}, None, adv, valid, beta,
                    action_mask=thinking, action_weight=w)
    kl2 = math.exp(-0.4 + 0.2) - (-0.4 + 0.2) - 1
    per_completion = (3 * 1.5 + 2 * w * 1.5 - beta * kl2) / 3
    assert out.loss.item() == pytest.approx(-per_completion, rel=1e-6)
    out.loss.backward()
    assert action.grad[0, 2].item() == 0.0  # answer-phase position: no action term
    assert action.grad[0, 0].item() == pytest.approx(-(w * 1.5) / 3, rel=1e-6)


def test_ppo_clipping_with_old_logps():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-0.5, 0.5]])  # ratios e^0.5 and e^-0.5
    adv = torch.tensor([1.0])
    out = grpo_loss({"token": logp}, None, {"token": old}, adv, torch.ones(1, 2, dtype=torch.bool), 0.0, clip_eps=0.2)
    # positive advantage: min(r, clip(r)) -> 1.2 for r = 1.65, 0.607 for r = 0.607
    assert out.loss.item() == pytest.approx(-(1.2 + math.exp(-0.5)) / 2, rel=1e-6)
    assert out.clip_fraction == 1.0
    out.loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # clipped: no gradient
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(-0.5) / 2, rel=1e-6)


def test_stream_loss_by_hand():
    """ATP-Latent: per completion, the masked mean of each stream, summed; minus the mean over completions."""
    logps = {"latent": torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True),
             "token": torch.tensor([[0.0, 0.0, -3.0], [0.0, -1.0, -1.0]], requires_grad=True)}
    masks = {"latent": torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool),
             "token": torch.tensor([[0, 0, 1], [0, 1, 1]], dtype=torch.bool)}
    valid = torch.ones(2, 3, dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    out = grpo_loss(logps, None, None, adv, valid, beta=0.0, stream_masks=masks)
    # single update: ratio = 1, so each stream's masked mean of A is A; two streams: 2A per completion
    assert out.loss.item() == pytest.approx(-(2 * 1.0 + 2 * -2.0) / 2)
    out.loss.backward()
    # d loss / d logp = -A / (n_completions * n_positions_in_stream) on the stream's positions, 0 elsewhere
    assert torch.allclose(logps["latent"].grad, torch.tensor([[-1 / 4, -1 / 4, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(logps["token"].grad, torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.5, 0.5]]))


def test_stream_loss_clamps_and_clips_the_log_ratio():
    logps = {"latent": torch.tensor([[5.0]]), "token": torch.tensor([[0.0]])}
    old = {"latent": torch.tensor([[0.0]]), "token": torch.tensor([[0.0]])}
    masks = {"latent": torch.ones(1, 1, dtype=torch.bool), "token": torch.zeros(1, 1, dtype=torch.bool)}
    valid = torch.ones(1, 1, dtype=torch.bool)
    # negative advantage: min(r A, clip(r) A) = r A with r = exp(clamp(5, +-3)) = e^3
    out = grpo_loss(logps, None, old, torch.tensor([-1.0]), valid, 0.0, clip_eps=0.2, stream_masks=masks,
                    log_ratio_clamp=3.0)
    assert out.loss.item() == pytest.approx(math.exp(3.0))
    out = grpo_loss(logps, None, old, torch.tensor([1.0]), valid, 0.0, clip_eps=0.2, stream_masks=masks,
                    log_ratio_clamp=3.0)
    assert out.loss.item() == pytest.approx(-1.2)  # positive advantage: clipped at 1 + eps
    assert out.clip_fraction == 1.0


def test_advantage_eps_is_a_parameter():
    rewards = torch.tensor([1.0, 0.0])
    std = rewards.std()
    assert torch.allclose(group_advantages(rewards, 2, eps=1e-8), (rewards - 0.5) / (std + 1e-8))
