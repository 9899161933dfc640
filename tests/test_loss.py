"""The GRPO loss against values computed by hand on small tensors."""

import math

import pytest
import torch

from tarpo.loss import group_advantages, grpo_loss, k3_kl, uniform_groups


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


# ---------------------------------------------------------------- loss types, clip-higher, GSPO (issue 25)
# Two completions of lengths 2 and 3 (the first's last position is padding), beta = 0, one update (ratio 1):
# each valid position's term is the completion's advantage A = (2, -1).

LOGP = [[-1.0, -2.0, -9.0], [-0.5, -1.5, -0.25]]
VALID = torch.tensor([[True, True, False], [True, True, True]])
ADV = torch.tensor([2.0, -1.0])


@pytest.mark.parametrize("loss_type, normalizer, expected", [
    ("grpo", None, -(2.0 + -1.0) / 2),             # mean per completion, then over completions
    ("dr_grpo", None, -(2 * 2.0 + 3 * -1.0) / (2 * 4)),  # sum / (2 completions x the limit 4)
    ("dapo", None, -(2 * 2.0 + 3 * -1.0) / 5),     # sum / the 5 valid tokens
    ("dapo", 10.0, -(2 * 2.0 + 3 * -1.0) / 10),    # the trainer's whole-step count
    ("bnpo", None, -(2 * 2.0 + 3 * -1.0) / 5),     # sum / this batch's 5 valid tokens
])
def test_loss_types_by_hand(loss_type, normalizer, expected):
    logp = torch.tensor(LOGP, requires_grad=True)
    out = grpo_loss({"token": logp}, None, None, ADV, VALID, 0.0, loss_type=loss_type, normalizer=normalizer, max_length=4)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    # d loss / d logp_t = -A / (the count a position is divided by); padding gets nothing. grpo: its
    # completion's length x the 2 completions.
    count = {"grpo": [2 * 2, 3 * 2], "dr_grpo": [8, 8], "dapo": [normalizer or 5] * 2, "bnpo": [5, 5]}[loss_type]
    assert logp.grad[0].tolist() == pytest.approx([-2.0 / count[0], -2.0 / count[0], 0.0], rel=1e-6)
    assert logp.grad[1].tolist() == pytest.approx([1.0 / count[1]] * 3, rel=1e-6)


def test_token_sum_loss_types_with_kl_by_hand():
    logp = torch.tensor(LOGP)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -0.5]])
    kl = lambda lp, r: math.exp(r - lp) - (r - lp) - 1  # noqa: E731
    beta = 0.1
    terms = [2.0 - beta * kl(-1.0, -1.5), 2.0 - beta * kl(-2.0, -1.0),
             -1.0 - beta * kl(-0.5, -0.5), -1.0 - beta * kl(-1.5, -1.0), -1.0 - beta * kl(-0.25, -0.5)]
    out = grpo_loss({"token": logp}, {"token": ref}, None, ADV, VALID, beta, loss_type="dapo")
    assert out.loss.item() == pytest.approx(-sum(terms) / 5, rel=1e-6)
    out = grpo_loss({"token": logp}, {"token": ref}, None, ADV, VALID, beta, loss_type="dr_grpo", max_length=6)
    assert out.loss.item() == pytest.approx(-sum(terms) / 12, rel=1e-6)


def test_clip_higher_by_hand():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-0.5, 0.5]])  # ratios e^0.5 = 1.649 and e^-0.5 = 0.607
    valid = torch.ones(1, 2, dtype=torch.bool)
    # A > 0: the upper bound acts: 1.649 -> 1 + 0.28; 0.607 stays (min keeps the smaller)
    out = grpo_loss({"token": logp}, None, {"token": old}, torch.tensor([1.0]), valid, 0.0, clip_eps=0.2,
                    clip_eps_high=0.28)
    assert out.loss.item() == pytest.approx(-(1.28 + math.exp(-0.5)) / 2, rel=1e-6)
    assert out.clip_fraction == 1.0  # 1.649 > 1.28 and 0.607 < 0.8
    # A < 0: min(-r, -clip(r)) = -max(r, clip(r)): 1.649 stays, 0.607 -> 1 - 0.2
    out = grpo_loss({"token": logp}, None, {"token": old}, torch.tensor([-1.0]), valid, 0.0, clip_eps=0.2,
                    clip_eps_high=0.28)
    assert out.loss.item() == pytest.approx((math.exp(0.5) + 0.8) / 2, rel=1e-6)
    # None: symmetric, today's behaviour
    sym = grpo_loss({"token": logp}, None, {"token": old}, torch.tensor([1.0]), valid, 0.0, clip_eps=0.2)
    assert sym.loss.item() == pytest.approx(-(1.2 + math.exp(-0.5)) / 2, rel=1e-6)


def test_sequence_level_importance_ratio_gspo_by_hand():
    logp = torch.tensor([[0.3, -0.1, 0.0], [0.2, 0.4, 0.6]], requires_grad=True)
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, 1.0])
    s1, s2 = math.exp((0.3 - 0.1) / 2), math.exp((0.2 + 0.4 + 0.6) / 3)  # e^0.1 = 1.105, e^0.4 = 1.492
    out = grpo_loss({"token": logp}, None, {"token": old}, adv, VALID, 0.0, clip_eps=0.2,
                    importance_sampling_level="sequence")
    # one clipped term per completion: s1 inside [0.8, 1.2], s2 clipped to 1.2
    assert 0.8 < s1 < 1.2 < s2
    assert out.loss.item() == pytest.approx(-(s1 + 1.2) / 2, rel=1e-6)
    out.loss.backward()
    # d s1 / d logp_t = s1 / 2 on the first completion's 2 tokens; the clipped one has no gradient
    assert logp.grad[0].tolist() == pytest.approx([-s1 / 2 / 2, -s1 / 2 / 2, 0.0], rel=1e-6)
    assert logp.grad[1].tolist() == [0.0, 0.0, 0.0]
    # dapo: the completion's term counts once per token
    out = grpo_loss({"token": logp}, None, {"token": old}, adv, VALID, 0.0, clip_eps=0.2,
                    importance_sampling_level="sequence", loss_type="dapo")
    assert out.loss.item() == pytest.approx(-(2 * s1 + 3 * 1.2) / 5, rel=1e-6)


def test_action_term_aggregates_like_the_token_terms():
    """TARPO: the action term at a position joins that position's token term, under every loss type."""
    logp = torch.zeros(2, 3)
    action = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, -0.6]])
    thinking = torch.tensor([[True, False, False], [True, True, False]])
    adv, w = torch.tensor([1.0, -1.0]), 0.5
    sums = [2 * 1.0 + w * 1.0, 3 * -1.0 + 2 * w * -1.0]  # 2.5 and -4
    expected = {"grpo": -(sums[0] / 2 + sums[1] / 3) / 2, "dapo": -sum(sums) / 5, "bnpo": -sum(sums) / 5,
                "dr_grpo": -sum(sums) / (2 * 3)}
    for loss_type, value in expected.items():
        out = grpo_loss({"token": logp, "action": action}, None, None, adv, VALID, 0.0, action_mask=thinking,
                        action_weight=w, loss_type=loss_type)
        assert out.loss.item() == pytest.approx(value, rel=1e-6), loss_type


def test_stream_loss_types_by_hand():
    """ATP-Latent's streams under the token-sum types: every stream position summed over one count."""
    logps = {"latent": torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]),
             "token": torch.tensor([[0.0, 0.0, -3.0], [0.0, -1.0, -1.0]])}
    masks = {"latent": torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool),
             "token": torch.tensor([[0, 0, 1], [0, 1, 1]], dtype=torch.bool)}
    valid = torch.ones(2, 3, dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    total = 3 * 1.0 + 3 * -2.0  # every position carries its completion's A
    for loss_type, value in {"grpo": -(2 * 1.0 + 2 * -2.0) / 2, "dapo": -total / 6, "bnpo": -total / 6,
                             "dr_grpo": -total / (2 * 4)}.items():
        out = grpo_loss(logps, None, None, adv, valid, 0.0, stream_masks=masks, loss_type=loss_type, max_length=4)
        assert out.loss.item() == pytest.approx(value, rel=1e-6), loss_type
    # GSPO per stream: one ratio per completion and stream, exp of the stream's mean log-ratio
    old = {k: torch.zeros(2, 3) for k in logps}
    out = grpo_loss(logps, None, old, adv, valid, 0.0, clip_eps=0.2, stream_masks=masks,
                    importance_sampling_level="sequence")
    s = {"latent": [math.exp(-1.5), math.exp(-0.5)], "token": [math.exp(-3.0), math.exp(-1.0)]}
    # A > 0 keeps min(s, clip(s)) = s below 1; A < 0: -max(s, 0.8)
    per_completion = [s["latent"][0] + s["token"][0], -2 * max(s["latent"][1], 0.8) - 2 * max(s["token"][1], 0.8)]
    assert out.loss.item() == pytest.approx(-sum(per_completion) / 2, rel=1e-6)


def test_scale_rewards_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    centred = [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]
    assert group_advantages(rewards, 3, scale="none").tolist() == pytest.approx(centred, rel=1e-6)
    batch_std = math.sqrt(6 * 0.25 / 5)  # mean 0.5, unbiased variance 6 x 0.25 / 5
    assert group_advantages(rewards, 3, scale="batch").tolist() == pytest.approx(
        [c / (batch_std + 1e-4) for c in centred], rel=1e-6)
    # a given batch std (the trainer's, over the whole step) replaces this batch's own
    assert group_advantages(rewards, 3, scale="batch", batch_std=torch.tensor(2.0)).tolist() == pytest.approx(
        [c / (2.0 + 1e-4) for c in centred], rel=1e-6)
    assert torch.equal(group_advantages(rewards, 3, scale="group"), group_advantages(rewards, 3))


def test_uniform_groups_and_truncated_completions():
    from tarpo.rollout import Rollout, truncated

    assert uniform_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2).tolist() == [True, False, True]
    eos = 9
    tokens = torch.tensor([[5, eos, 0], [5, 6, 7], [eos, 0, 0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    rollout = Rollout(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long), tokens, valid,
                      torch.zeros_like(valid))
    cut = truncated(rollout, [eos, 11])
    assert cut.tolist() == [False, True, False]  # the second never emitted EOS
    # mask_truncated_completions: the cut completion carries no loss (dapo: nor any count)
    loss_valid = valid & ~cut.unsqueeze(1)
    out = grpo_loss({"token": torch.zeros(3, 3)}, None, None, torch.tensor([2.0, -1.0, 1.0]), loss_valid, 0.0,
                    loss_type="dapo")
    assert out.loss.item() == pytest.approx(-(2 * 2.0 + 1.0) / 3, rel=1e-6)


def test_loss_types_match_trl():
    """Parity with TRL 1.13's GRPOTrainer._compute_loss on identical tensors, for every loss type, clip-higher and
    GSPO: TRL's real method is called on a stub trainer (perf/trl_loss_parity.py, which prints the table)."""
    pytest.importorskip("trl")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
    from trl_loss_parity import CASES, parity

    rows = parity()
    assert [r[0] for r in rows] == [c[0] for c in CASES]
    for name, loss_diff, grad_diff in rows:
        assert loss_diff <= 1e-6 and grad_diff <= 1e-6, (name, loss_diff, grad_diff)
