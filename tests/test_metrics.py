"""pass@k against brute-force enumeration of every k-subset."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from tarpo.metrics import mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in subset) for subset in subsets)
    return hits / len(subsets)


@pytest.mark.parametrize("n,c,k", [
    (1, 0, 1), (1, 1, 1), (5, 0, 1), (5, 1, 1), (5, 2, 2), (5, 2, 3), (5, 2, 4), (5, 5, 3),
    (8, 3, 4), (10, 1, 5), (10, 9, 1), (12, 4, 6), (12, 0, 12), (12, 1, 12), (16, 2, 8),
])
def test_matches_brute_force(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_known_values() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is plain accuracy
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5-subset has a correct sample


def test_large_n_is_stable_and_exact() -> None:
    # The binomials here are ~1e38; the product form must agree with exact arithmetic.
    n, c, k = 200, 3, 32
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert 0.0 < pass_at_k(1000, 1, 32) == pytest.approx(32 / 1000, rel=1e-12)


def test_monotone_in_k() -> None:
    values = [pass_at_k(32, 4, k) for k in range(1, 33)]
    assert values == sorted(values)
    assert values[-1] == 1.0


def test_mean_pass_at_k() -> None:
    counts = [(10, 0), (10, 10), (10, 5), (4, 2)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0 + 1 + 0.5 + 0.5) / 4)
    assert mean_pass_at_k(counts, 2) == pytest.approx((0 + 1 + (1 - 10 / 45) + 5 / 6) / 4)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_invalid_inputs_raise(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
