"""Intervals with the training seed as the unit of replication: hand-computable cases, and their coverage
checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tarpo import stats


def test_constant_values_give_a_zero_width_interval():
    ci = stats.mean_ci(np.full(50, 0.25))
    assert (ci.mean, ci.low, ci.high, ci.half_width) == (0.25, 0.25, 0.25, 0.0)
    assert (ci.n_problems, ci.n_seeds, ci.seed_noise_measured) == (50, 1, False)


def test_one_seed_interval_is_the_t_interval_over_problems():
    values = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    ci = stats.mean_ci(values)
    want = sps.t.ppf(0.975, 1999) * values.std(ddof=1) / math.sqrt(values.size)
    assert ci.half_width == pytest.approx(want, rel=1e-9)
    assert ci.mean == pytest.approx(values.mean()) and ci.df == 1999
    assert stats.mean_ci(values, level=0.8).half_width < ci.half_width


def test_crossed_variance_matches_the_anova_formula_by_hand():
    # 3 seeds x 4 problems: grand mean 0.5; row means .25 .5 .75; column means 1/3, 2/3, 1/3, 2/3
    x = np.array([[0.0, 0.5, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 1.0, 0.5, 1.0]])
    ms = stats.MeanSquares.of(x)
    assert ms.seed == pytest.approx(4 * np.var([0.25, 0.5, 0.75], ddof=1))  # 0.25
    assert ms.problem == pytest.approx(3 * np.var([1 / 3, 2 / 3, 1 / 3, 2 / 3], ddof=1))  # 1/9
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    assert ms.resid == pytest.approx((resid ** 2).sum() / 6)
    ci = stats.mean_ci(x)
    # var = var(row means) / S + (MS_problem - MS_resid) / (S P)
    seed_term, problem_term = np.var([0.25, 0.5, 0.75], ddof=1) / 3, (ms.problem - ms.resid) / 12
    assert ci.se == pytest.approx(math.sqrt(seed_term + problem_term))
    df = (seed_term + problem_term) ** 2 / (seed_term ** 2 / 2 + (ms.problem / 12) ** 2 / 3
                                            + (ms.resid / 12) ** 2 / 6)
    assert ci.df == pytest.approx(max(df, stats.DF_FLOOR))
    assert ci.half_width == pytest.approx(sps.t.ppf(0.975, ci.df) * ci.se)


def test_a_seed_dominated_interval_is_the_t_interval_over_seeds():
    # identical problems within a seed (no problem term): the interval is the t interval over the 3 seed means
    x = np.repeat(np.array([[0.60], [0.64], [0.59]]), 200, axis=1)
    ci = stats.mean_ci(x)
    means = x.mean(axis=1)
    assert ci.df == pytest.approx(2)
    assert ci.half_width == pytest.approx(sps.t.ppf(0.975, 2) * means.std(ddof=1) / math.sqrt(3))


def test_constant_difference_is_significant_with_several_seeds_only():
    a = np.random.default_rng(4).random((3, 100))
    cmp = stats.paired_comparison(a + 0.1, a)
    assert cmp.delta == pytest.approx(0.1) and cmp.low == pytest.approx(0.1) and cmp.high == pytest.approx(0.1)
    assert cmp.p_value == 0.0 and cmp.significant
    assert stats.paired_comparison(a, a + 0.1).significant  # significantly worse is significant too
    one = stats.paired_comparison(a[0] + 0.1, a[0])
    assert one.p_value == 0.0 and not one.significant  # one seed: training noise unmeasured, never established


def test_identical_methods_give_delta_zero_and_p_one():
    a = np.random.default_rng(5).random((2, 80))
    cmp = stats.paired_comparison(a, a)
    assert (cmp.delta, cmp.low, cmp.high, cmp.p_value, cmp.significant) == (0.0, 0.0, 0.0, 1.0, False)
    assert cmp.to_dict()["significant"] is False and cmp.n_seeds == 2


def test_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.01, 0.03, 0.05, 0.1):
        a = rng.random((3, 150))
        cmp = stats.paired_comparison(a + shift + 0.2 * rng.standard_normal((3, 150))
                                      + 0.03 * rng.standard_normal((3, 1)), a)
        # the same t statistic and df: the interval excludes 0 exactly when p < 0.05
        assert cmp.significant == (cmp.p_value < 0.05), cmp
        assert cmp.p_value == pytest.approx(2 * sps.t.sf(abs(cmp.delta) / cmp.se, cmp.df))


def test_pairing_removes_the_problem_variance():
    rng = np.random.default_rng(6)
    a = rng.random(400)
    b = a + 0.02 + 0.01 * rng.standard_normal(400)
    cmp = stats.paired_comparison(b, a)
    d = b - a
    assert cmp.delta == pytest.approx(d.mean())
    assert (cmp.high - cmp.low) / 2 == pytest.approx(sps.t.ppf(0.975, 399) * d.std(ddof=1) / math.sqrt(400))
    assert (cmp.high - cmp.low) < 0.2 * stats.mean_ci(a).half_width


def test_holm_by_hand():
    # sorted p .01 .02 .03 .04 x (4, 3, 2, 1) = .04 .06 .06 .04 -> running max .04 .06 .06 .06
    adjusted = stats.holm([0.03, 0.01, float("nan"), 0.04, 0.02])
    assert adjusted[[1, 4, 0, 3]].tolist() == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert math.isnan(adjusted[2])
    assert stats.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).size == 0


def test_alignment_by_seed_and_problem():
    a = {0: {"p1": 1.0, "p2": 0.0, "p3": 1.0}, 1: {"p1": 1.0, "p2": 1.0, "p3": 1.0}, 2: {"p1": 0.0, "p2": 0.0}}
    b = {1: {"p2": 0.5, "p1": 0.0, "p3": 0.0}, 0: {"p1": 0.0, "p2": 0.0, "p3": 0.0}}
    ma, mb = stats.paired_matrices(a, b)  # seeds 0 and 1 (2 only in a), problems p1, p2 (p3 missing in seed 2)
    assert ma.tolist() == [[1.0, 0.0], [1.0, 1.0]] and mb.tolist() == [[0.0, 0.0], [0.0, 0.5]]
    # no common seed: per-problem means over each side's seeds
    ma, mb = stats.paired_matrices({0: {"p": 1.0}, 1: {"p": 0.0}}, {5: {"p": 0.25}})
    assert ma.tolist() == [[0.5]] and mb.tolist() == [[0.25]]
    with pytest.raises(ValueError, match="share no problem"):
        stats.paired_matrices({0: {"x": 1.0}}, {0: {"y": 1.0}})


def test_pass_at_k_values_per_problem():
    assert stats.pass_at_k_values([0, 2, 4], n=4, k=1).tolist() == [0.0, 0.5, 1.0]
    assert stats.pass_at_k_values([1], n=4, k=2).tolist() == [pytest.approx(0.5)]  # 1 - C(3,2)/C(4,2)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        stats.mean_ci([])
    with pytest.raises(ValueError):
        stats.paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, float("nan")])


def test_average_over_benchmarks_adds_each_benchmarks_problem_noise():
    rng = np.random.default_rng(9)
    a, b = (rng.random(400) < 0.3).astype(float), (rng.random(900) < 0.6).astype(float)
    assert stats.average_ci([a]) == stats.mean_ci(a)  # one group: the plain interval
    avg = stats.average_ci([a, b])
    assert avg.mean == pytest.approx((a.mean() + b.mean()) / 2) and avg.n_problems == 1300
    # independent benchmarks: var(mean of two) = (var_a + var_b) / 4
    assert avg.se == pytest.approx(math.hypot(stats.mean_ci(a).se, stats.mean_ci(b).se) / 2)
    assert stats.average_ci([np.full(5, 0.2), np.full(7, 0.6)]).half_width == 0.0
    # the seed term is shared: per-seed split means, not each benchmark's seed spread on its own
    offsets = np.array([[0.0], [0.1], [0.2]])
    two = stats.average_ci([np.full((3, 10), 0.5) + offsets, np.full((3, 20), 0.3) - offsets])
    assert two.half_width == pytest.approx(0.0)  # the offsets cancel in every seed's average
    cmp = stats.paired_average([np.vstack([a, a]) + 0.1, np.vstack([b, b]) - 0.3],
                               [np.vstack([a, a]), np.vstack([b, b])])
    assert cmp.delta == pytest.approx(-0.1) and cmp.low == pytest.approx(-0.1) and cmp.significant
    with pytest.raises(ValueError, match="same seeds"):
        stats.average_ci([np.zeros((2, 3)), np.zeros((3, 3))])


def test_ratio_of_sums():
    den = np.arange(1, 41, dtype=float)
    constant = stats.ratio_ci(0.25 * den, den)  # every problem has the same ratio
    assert (constant.mean, constant.half_width) == (pytest.approx(0.25), pytest.approx(0.0))
    values = (np.random.default_rng(10).random(500) < 0.4).astype(float)
    plain, ratio = stats.mean_ci(values), stats.ratio_ci(values, np.ones(500))  # denominator 1: a mean
    assert (ratio.mean, ratio.low, ratio.high) == pytest.approx((plain.mean, plain.low, plain.high))
    pooled = stats.ratio_ci([[1, 0, 3]], [[2, 0, 4]])  # a problem without steps adds nothing
    assert pooled.mean == pytest.approx(4 / 6) and pooled.low <= 4 / 6 <= pooled.high
    with pytest.raises(ValueError, match="sums to 0"):
        stats.ratio_ci([0.0], [0.0])


def test_variance_components_recover_known_ones():
    # seed sd 0.03, problems uniform in +-0.3, interaction uniform in +-0.08 on the pass@1 scale, plus binomial
    # sampling of k = 4; compared with the variances of the effects actually drawn (40 seeds alone estimate a
    # variance only to ~23%)
    rng = np.random.default_rng(11)
    s, p, k = 40, 3000, 4
    seed, problem = np.clip(rng.normal(0, 0.03, (s, 1)), -0.1, 0.1), rng.uniform(-0.3, 0.3, (1, p))
    interaction = rng.uniform(-0.08, 0.08, (s, p))
    prob = 0.5 + seed + problem + interaction
    assert prob.min() > 0 and prob.max() < 1
    correct = rng.binomial(k, prob)
    comp = stats.components(correct / k, correct, k)
    assert comp.seed == pytest.approx(seed.var(ddof=1), rel=0.1)
    assert comp.problem == pytest.approx(problem.var(ddof=1), rel=0.05)
    assert comp.interaction == pytest.approx(interaction.var(), rel=0.25)
    assert comp.sample == pytest.approx((prob * (1 - prob)).mean(), rel=0.02)
    # the standard error at the run's own allocation is the interval's
    assert comp.se(s, p, k) == pytest.approx(stats.mean_ci(correct / k).se, rel=0.02)
    # the detectable difference at 80% power, 95%: (1.96 + 0.84) se with many df
    assert stats.detectable_difference(0.01, float("inf")) == pytest.approx(0.0280, abs=2e-4)
    assert stats.detectable_difference(0.01, 2) > 0.05  # 2 df: t = 4.30 and 1.06


# ---------------------------------------------------------------- coverage, by simulation

N_EXPERIMENTS = 2000  # the sd of a coverage estimate near 95% is then 0.5 points


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("effect", [0.0, 0.15])
@pytest.mark.parametrize("seed_sd", [0.1, 0.2])
def test_intervals_cover_the_truth_95_percent_of_the_time(n_seeds, effect, seed_sd):
    # seed sd 0.1 / 0.2 logits: a run-to-run sd of each method's accuracy of ~2 / ~4 points; effect 0.15: a true
    # difference of ~2.6 points. Seeds and problems are drawn anew in each experiment.
    rng = np.random.default_rng(100 + n_seeds)
    a, b, truth = stats.simulate_experiments(rng, N_EXPERIMENTS, n_seeds, 300, 4, effect=effect, seed_sd=seed_sd)
    seed_spread = (a - b).mean(axis=2).std(axis=1, ddof=1).mean()
    assert seed_spread > 0.015  # the training noise is real, and larger than a 300-problem evaluation's own
    result = stats.coverage(a, b, truth)
    assert 0.93 <= result["coverage"] <= 0.97, result
    if effect == 0.0:
        assert result["significant"] <= 0.07, result  # the false-positive rate is the nominal 5%


def test_one_seed_never_establishes_a_difference_and_its_problem_only_interval_undercovers():
    rng = np.random.default_rng(12)
    a, b, truth = stats.simulate_experiments(rng, 500, 1, 300, 4, effect=0.6, seed_sd=0.2)
    result = stats.coverage(a, b, truth)
    assert result["significant"] == 0.0  # a large true difference, yet never "established" with one seed
    # why: the problems-only interval of one seed ignores the training noise and misses the truth often
    assert result["coverage"] < 0.8, result
