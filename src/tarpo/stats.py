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

A split average (`average_ci`: the unweighted mean over benchmarks, as the
paper averages) resamples each benchmark's problems on its own and the seeds
jointly (seed s is one training run, on every benchmark). A ratio of sums
(`ratio_ci`: soft steps / thinking steps, lucky / correct samples) resamples
numerator and denominator together.

Paired comparison (`paired_comparison`, `paired_average`): two methods on the same problems,
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


def _bootstrap(groups: Sequence[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Resampled means, shape (n_boot, groups, channels). Each group is an array (channels, seeds, problems):
    e.g. one benchmark, with one channel (a value) or two (numerator and denominator, drawn together). Per
    resample the seeds are drawn once for all groups (seed s is the same run on every benchmark) and each
    group's problems on their own, all with replacement."""
    n_seeds, channels = groups[0].shape[1], groups[0].shape[0]
    if any(g.shape[:2] != (channels, n_seeds) for g in groups):
        raise ValueError("every group needs the same seeds (and channels)")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(groups), channels))
    chunk = max(1, _CHUNK_CELLS // max(g.shape[2] for g in groups))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        weights = None
        if n_seeds > 1:
            drawn = rng.integers(0, n_seeds, size=(m, n_seeds))
            weights = (drawn[:, :, None] == np.arange(n_seeds)).sum(axis=1) / n_seeds  # times each seed was drawn
        for gi, group in enumerate(groups):
            n_problems = group.shape[2]
            idx = rng.integers(0, n_problems, size=(m, n_problems))
            for c in range(channels):
                # (m, problems): each problem's mean over the drawn seeds
                per_problem = weights @ group[c] if weights is not None else np.broadcast_to(group[c, 0],
                                                                                             (m, n_problems))
                out[start:start + m, gi, c] = np.take_along_axis(per_problem, idx, axis=1).mean(axis=1)
    return out


def bootstrap_means(values: Any, *, n_boot: int = N_BOOT, seed: int = RNG_SEED) -> np.ndarray:
    """`n_boot` resampled means of a (seeds, problems) matrix: seeds (when several) and problems drawn with
    replacement, independently. Deterministic for a given input, `n_boot` and `seed`."""
    return _bootstrap([as_matrix(values)[None]], n_boot, seed)[:, 0, 0]


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.nanquantile(boot, [alpha, 1 - alpha])
    return float(low), float(high)


def _interval(estimate: float, boot: np.ndarray, level: float, n_problems: int, n_seeds: int) -> Interval:
    low, high = _percentiles(boot, level)
    # float rounding of a constant input must not put the estimate outside its own (zero-width) interval
    return Interval(estimate, min(low, estimate), max(high, estimate), n_problems=n_problems, n_seeds=n_seeds)


def mean_ci(values: Any, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = RNG_SEED) -> Interval:
    """The mean of a (seeds, problems) matrix (or a 1-D array over problems) with its percentile bootstrap
    interval."""
    return average_ci([values], level=level, n_boot=n_boot, seed=seed)


def average_ci(groups: Sequence[Any], *, level: float = LEVEL, n_boot: int = N_BOOT,
               seed: int = RNG_SEED) -> Interval:
    """The unweighted mean over groups (e.g. benchmarks: a split average) of each group's mean, with its
    interval. Each group is a (seeds, problems) matrix, the same seeds in every group; every group's
    problems are resampled on their own, the seeds jointly."""
    mats = [as_matrix(g) for g in groups]
    if not mats:
        raise ValueError("no groups")
    boot = _bootstrap([m[None] for m in mats], n_boot, seed)[:, :, 0].mean(axis=1)
    estimate = float(np.mean([m.mean() for m in mats]))
    return _interval(estimate, boot, level, sum(m.shape[1] for m in mats), mats[0].shape[0])


def ratio_ci(numerator: Any, denominator: Any, *, level: float = LEVEL, n_boot: int = N_BOOT,
             seed: int = RNG_SEED) -> Interval:
    """sum(numerator) / sum(denominator) over (seeds, problems) cells (e.g. soft steps / thinking steps, lucky
    / correct samples) with its interval; a resample whose denominator is 0 is left out."""
    num, den = as_matrix(numerator), as_matrix(denominator)
    if num.shape != den.shape:
        raise ValueError(f"numerator and denominator must have the same shape, got {num.shape} and {den.shape}")
    if den.sum() <= 0:
        raise ValueError("the denominator sums to 0: no ratio")
    boot = _bootstrap([np.stack([num, den])], n_boot, seed)[:, 0, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(boot[:, 1] > 0, boot[:, 0] / boot[:, 1], np.nan)
    return _interval(float(num.sum() / den.sum()), ratios, level, num.shape[1], num.shape[0])


def paired_comparison(a: Any, b: Any, *, level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = RNG_SEED) -> Comparison:
    """a - b for two aligned (seeds, problems) matrices (row i of both = the same seed, column j = the same
    problem): mean difference, bootstrap interval and two-sided bootstrap p-value."""
    return paired_average([a], [b], level=level, n_boot=n_boot, seed=seed)


def paired_average(a_groups: Sequence[Any], b_groups: Sequence[Any], *, level: float = LEVEL,
                   n_boot: int = N_BOOT, seed: int = RNG_SEED) -> Comparison:
    """`paired_comparison` of unweighted means over groups (e.g. a split average over benchmarks): group i of
    a and of b are aligned matrices."""
    diffs = []
    for a, b in zip(a_groups, b_groups, strict=True):
        a, b = as_matrix(a), as_matrix(b)
        if a.shape != b.shape:
            raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
        diffs.append(a - b)
    if not diffs:
        raise ValueError("no groups")
    boot = _bootstrap([d[None] for d in diffs], n_boot, seed)[:, :, 0].mean(axis=1)
    low, high = _percentiles(boot, level)
    delta = float(np.mean([d.mean() for d in diffs]))
    tail = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    p_value = min(1.0, 2 * (1 + tail) / (n_boot + 1))
    return Comparison(delta, min(low, delta), max(high, delta), p_value,
                      n_problems=sum(d.shape[1] for d in diffs), n_seeds=diffs[0].shape[0])


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
