"""Confidence intervals and paired comparisons of evaluation results.

The unit of analysis is a per-problem value: the pass@k of one problem from
its n samples (pass@1 = its accuracy), for each seed a method was trained and
evaluated with. Values come as a matrix `(seeds, problems)`; a 1-D array is
one seed.

Interval of a mean (`mean_ci`): percentile bootstrap, `N_BOOT` resamples from
a fixed random seed, so the same results always give the same interval. A
resample draws problems with replacement and, when there are several seeds,
seeds with replacement, independently of each other (the design is crossed:
every seed evaluated the same problems); its statistic is the mean over the
drawn seeds x drawn problems. With one seed this is the ordinary bootstrap
over problems. Resampling seeds puts the seed-to-seed spread (training and
sampling randomness) into the interval, which the per-problem mean over
seeds alone would leave out; with few seeds (3) that part is estimated
roughly, so read such intervals as approximate.

Paired comparison (`paired_comparison`): two methods on the same problems,
paired by problem and by seed where both have it. Delta = mean of the
per-(seed, problem) differences; its interval is the same crossed bootstrap
of the differences; the two-sided p-value is the bootstrap one,
p = min(1, 2 (1 + min(#{D* <= 0}, #{D* >= 0})) / (B + 1)), i.e. the level
at which the percentile interval starts to touch 0, so `significant` (the 95%
interval excludes 0) and p < 0.05 agree up to resampling noise. Constant
differences give a zero-width interval and p = 2 / (B + 1); identical methods
give delta 0 and p = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tarpo.metrics import pass_at_k

N_BOOT = 10_000  # bootstrap resamples
LEVEL = 0.95  # confidence level of every interval
RNG_SEED = 0  # the bootstrap's own seed: fixed, so intervals are deterministic
_CHUNK_CELLS = 2_000_000  # resampled values held in memory at once (resamples x problems)


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval."""

    mean: float
    low: float
    high: float
    n_problems: int
    n_seeds: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}


@dataclass(frozen=True)
class Comparison:
    """Method a minus method b on the same problems (and seeds)."""

    delta: float
    low: float
    high: float
    p_value: float
    n_problems: int
    n_seeds: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def as_matrix(values: Any) -> np.ndarray:
    """`values` as a float matrix (seeds, problems); a 1-D array is one seed."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"need a non-empty (seeds, problems) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("values must be finite")
    return arr


def bootstrap_means(values: Any, *, n_boot: int = N_BOOT, seed: int = RNG_SEED) -> np.ndarray:
    """`n_boot` resampled means of a (seeds, problems) matrix: seeds (when several) and problems drawn with
    replacement, independently. Deterministic for a given input, `n_boot` and `seed`."""
    v = as_matrix(values)
    n_seeds, n_problems = v.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, _CHUNK_CELLS // n_problems)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        if n_seeds > 1:
            drawn = rng.integers(0, n_seeds, size=(m, n_seeds))
            weights = (drawn[:, :, None] == np.arange(n_seeds)).sum(axis=1) / n_seeds  # times each seed was drawn
            per_problem = weights @ v  # (m, problems): each problem's mean over the drawn seeds
        else:
            per_problem = np.broadcast_to(v[0], (m, n_problems))
        idx = rng.integers(0, n_problems, size=(m, n_problems))
        out[start:start + m] = np.take_along_axis(per_problem, idx, axis=1).mean(axis=1)
    return out


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(low), float(high)


def mean_ci(values: Any, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = RNG_SEED) -> Interval:
    """The mean of a (seeds, problems) matrix (or a 1-D array over problems) with its percentile bootstrap
    interval."""
    v = as_matrix(values)
    low, high = _percentiles(bootstrap_means(v, n_boot=n_boot, seed=seed), level)
    mean = float(v.mean())
    # float rounding of a constant input must not put the mean outside its own (zero-width) interval
    return Interval(mean, min(low, mean), max(high, mean), n_problems=v.shape[1], n_seeds=v.shape[0])


def paired_comparison(a: Any, b: Any, *, level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = RNG_SEED) -> Comparison:
    """a - b for two aligned (seeds, problems) matrices (row i of both = the same seed, column j = the same
    problem): mean difference, bootstrap interval and two-sided bootstrap p-value."""
    a, b = as_matrix(a), as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    diff = a - b
    boot = bootstrap_means(diff, n_boot=n_boot, seed=seed)
    low, high = _percentiles(boot, level)
    delta = float(diff.mean())
    tail = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    p_value = min(1.0, 2 * (1 + tail) / (n_boot + 1))
    return Comparison(delta, min(low, delta), max(high, delta), p_value, n_problems=diff.shape[1],
                      n_seeds=diff.shape[0])


# ---------------------------------------------------------------- per-problem values keyed by seed and problem id

PerSeed = Mapping[int, Mapping[str, float]]  # seed -> problem id -> value


def matrix(by_seed: PerSeed, seeds: Sequence[int] | None = None,
           problems: Sequence[str] | None = None) -> np.ndarray:
    """(seeds, problems) matrix of `by_seed[seed][problem]`; by default every seed and the problems every
    seed has (in the first seed's order)."""
    seeds = sorted(by_seed) if seeds is None else list(seeds)
    if not seeds:
        raise ValueError("no seeds")
    if problems is None:
        common = set.intersection(*(set(by_seed[s]) for s in seeds))
        problems = [p for p in by_seed[seeds[0]] if p in common]
    if not problems:
        raise ValueError("no problem is shared by every seed")
    return np.array([[by_seed[s][p] for p in problems] for s in seeds], dtype=float)


def paired_matrices(a: PerSeed, b: PerSeed) -> tuple[np.ndarray, np.ndarray]:
    """Aligned matrices of two methods: the problems both have; the seeds both have, paired by seed. Without
    a common seed, each side's per-problem mean over its own seeds (one row each), paired by problem only."""
    common_seeds = sorted(set(a) & set(b))
    in_a = set.intersection(*(set(v) for v in a.values())) if a else set()
    in_b = set.intersection(*(set(v) for v in b.values())) if b else set()
    first = a[min(a)] if a else {}
    problems = [p for p in first if p in in_a and p in in_b]
    if not problems:
        raise ValueError("the two methods share no problem")
    if common_seeds:
        return matrix(a, common_seeds, problems), matrix(b, common_seeds, problems)
    return (matrix(a, None, problems).mean(axis=0, keepdims=True),
            matrix(b, None, problems).mean(axis=0, keepdims=True))


def pass_at_k_values(correct: Sequence[int], n: int, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k from each problem's number of correct samples out of n."""
    return np.array([pass_at_k(n, int(c), k) for c in correct], dtype=float)
