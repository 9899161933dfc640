"""Bootstrap intervals and paired comparisons against hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tarpo import stats


def test_constant_values_give_a_zero_width_interval():
    ci = stats.mean_ci(np.full(50, 0.25))
    assert (ci.mean, ci.low, ci.high, ci.half_width) == (0.25, 0.25, 0.25, 0.0)
    assert (ci.n_problems, ci.n_seeds) == (50, 1)


def test_interval_of_a_known_distribution_is_the_normal_one():
    # 2000 problems, accuracy ~ Bernoulli(0.3): the interval is close to mean +- 1.96 sd / sqrt(n)
    values = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    ci = stats.mean_ci(values)
    normal = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert ci.half_width == pytest.approx(normal, rel=0.06)
    assert ci.low < values.mean() < ci.high
    assert (ci.low + ci.high) / 2 == pytest.approx(values.mean(), abs=0.1 * normal)


def test_intervals_are_deterministic_and_depend_on_level():
    values = np.random.default_rng(2).random(300)
    assert stats.mean_ci(values) == stats.mean_ci(values)
    assert stats.mean_ci(values, level=0.8).half_width < stats.mean_ci(values).half_width


def test_seeds_are_resampled_when_there_are_several():
    rng = np.random.default_rng(3)
    problems = (rng.random(500) < 0.5).astype(float)
    # identical seeds: resampling seeds changes nothing; the interval is the problems-only one
    same = stats.mean_ci(np.stack([problems] * 3))
    assert same.n_seeds == 3
    assert same.half_width == pytest.approx(stats.mean_ci(problems).half_width, rel=0.05)
    # a large seed effect (seed offsets 0, 0.2, 0.4) widens the interval far beyond the problems-only one
    shifted = np.stack([problems + offset for offset in (0.0, 0.2, 0.4)])
    wide = stats.mean_ci(shifted)
    assert wide.mean == pytest.approx(problems.mean() + 0.2)
    assert wide.half_width > 3 * stats.mean_ci(shifted.mean(axis=0)).half_width


def test_constant_difference_is_significant_with_p_near_zero():
    a = np.random.default_rng(4).random(100)
    cmp = stats.paired_comparison(a + 0.1, a)
    assert cmp.delta == pytest.approx(0.1)
    assert cmp.low == pytest.approx(0.1) and cmp.high == pytest.approx(0.1)
    assert cmp.p_value == pytest.approx(2 / (stats.N_BOOT + 1)) and cmp.significant
    assert stats.paired_comparison(a, a + 0.1).significant  # significantly worse is significant too


def test_identical_methods_give_delta_zero_and_p_one():
    a = np.random.default_rng(5).random((2, 80))
    cmp = stats.paired_comparison(a, a)
    assert (cmp.delta, cmp.low, cmp.high, cmp.p_value, cmp.significant) == (0.0, 0.0, 0.0, 1.0, False)
    assert cmp.to_dict()["significant"] is False and cmp.n_seeds == 2


def test_pairing_removes_the_problem_variance():
    # b = a + small noise: paired, the difference is tiny and precise, though each method varies a lot
    rng = np.random.default_rng(6)
    a = rng.random(400)
    b = a + 0.02 + 0.01 * rng.standard_normal(400)
    cmp = stats.paired_comparison(b, a)
    d = b - a
    assert cmp.delta == pytest.approx(d.mean())
    assert (cmp.high - cmp.low) / 2 == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(400), rel=0.1)
    assert cmp.significant and cmp.p_value < 0.001
    assert (cmp.high - cmp.low) < 0.2 * stats.mean_ci(a).half_width


def test_a_noise_difference_is_not_significant():
    rng = np.random.default_rng(7)
    a, b = (rng.random(200) < 0.4).astype(float), (rng.random(200) < 0.4).astype(float)
    b[: 5] = a[: 5]
    cmp = stats.paired_comparison(a, b)
    assert cmp.low < 0 < cmp.high and not cmp.significant and cmp.p_value > 0.05


def test_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.05, 0.1, 0.2):
        a = rng.random(150)
        cmp = stats.paired_comparison(a + shift + 0.2 * rng.standard_normal(150), a)
        if abs(cmp.p_value - 0.05) > 0.01:  # away from the boundary both must say the same
            assert cmp.significant == (cmp.p_value < 0.05), cmp


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


def test_average_over_benchmarks_resamples_each_benchmark():
    rng = np.random.default_rng(9)
    a, b = (rng.random(400) < 0.3).astype(float), (rng.random(900) < 0.6).astype(float)
    one = stats.average_ci([a])
    assert one == stats.mean_ci(a)  # one group: the plain interval
    avg = stats.average_ci([a, b])
    assert avg.mean == pytest.approx((a.mean() + b.mean()) / 2) and avg.n_problems == 1300
    # independent benchmarks: var(mean of two) = (var_a + var_b) / 4
    want = math.hypot(stats.mean_ci(a).half_width, stats.mean_ci(b).half_width) / 2
    assert avg.half_width == pytest.approx(want, rel=0.08)
    assert stats.average_ci([np.full(5, 0.2), np.full(7, 0.6)]).half_width == 0.0
    cmp = stats.paired_average([a + 0.1, b - 0.3], [a, b])
    assert cmp.delta == pytest.approx(-0.1) and cmp.low == pytest.approx(-0.1) and cmp.significant
    with pytest.raises(ValueError, match="same seeds"):
        stats.average_ci([np.zeros((2, 3)), np.zeros((3, 3))])


def test_ratio_of_sums():
    den = np.arange(1, 41, dtype=float)
    constant = stats.ratio_ci(0.25 * den, den)  # every problem has the same ratio
    assert (constant.mean, constant.half_width) == (pytest.approx(0.25), pytest.approx(0.0))
    values = (np.random.default_rng(10).random(500) < 0.4).astype(float)
    assert stats.ratio_ci(values, np.ones(500)) == stats.mean_ci(values)  # denominator 1: a mean
    pooled = stats.ratio_ci([[1, 0, 3]], [[2, 0, 4]])  # a problem without steps adds nothing
    assert pooled.mean == pytest.approx(4 / 6) and pooled.low <= 4 / 6 <= pooled.high
    with pytest.raises(ValueError, match="sums to 0"):
        stats.ratio_ci([0.0], [0.0])
