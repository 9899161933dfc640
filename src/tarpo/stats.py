"""Confidence intervals and paired comparisons of evaluation results, with the training seed as the unit
of replication.

The data of one method (or of a paired difference a - b) on one benchmark is a
matrix `(seeds, problems)` of per-problem values: the problem's pass@j from
its k samples, for each seed a method was trained and evaluated with (a 1-D
array is one seed). Every seed evaluated the same problems, so the design is
crossed and its noise has three sources:

    x[s, p] = mu + a[s] + b[p] + e[s, p]

- `a`, the seed: the run-to-run noise of training (and the seed's sampling
  stream). Only several trained seeds measure it.
- `b`, the problem: which problems the benchmark happened to draw (for a paired
  difference, the problems on which one method is better than the other).
- `e`, seed x problem interaction plus the sampling noise of k samples.

The estimate is the grand mean. Its variance, sigma_a^2 / S + sigma_b^2 / P +
sigma_e^2 / (S P), is estimated from the ANOVA mean squares of the two-way
table (MS_seed = P var(row means), MS_problem = S var(column means), MS_resid)
as (MS_seed + MS_problem - MS_resid) / (S P), and the interval is
mean +- t * se with Satterthwaite's degrees of freedom: with 3 seeds and a
seed component that dominates they approach S - 1 = 2 (t = 4.3, not 1.96),
with a negligible seed component they approach the problems' P - 1. A split
average (the unweighted mean over benchmarks, as the paper averages) shares
the seed term (seed s is one training run on every benchmark) and adds each
benchmark's problem term. `tests/test_stats.py` checks by simulation that the
95% intervals cover the truth in 93-97% of experiments with 3 and 5 seeds.

With one seed the seed term cannot be estimated: the interval holds the
problem and sampling noise only (`seed_noise_measured` False), and a paired
comparison is never `significant` (not established), whatever its p-value.

Ratios (`ratio_ci`: soft steps / thinking steps, lucky / correct samples) use
the same interval on the delta method's linearised values
(num - R den) / mean(den). Several comparisons on one page are adjusted
together with Holm's step-down method (`holm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tarpo.metrics import pass_at_k

LEVEL = 0.95  # confidence level of every interval
ALPHA = 1 - LEVEL  # the family-wise error rate the Holm adjustment controls
POWER = 0.80  # the power at which `detectable_difference` is stated
DF_FLOOR = 1.0


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval (t with Satterthwaite's degrees of freedom)."""

    mean: float
    low: float
    high: float
    n_problems: int
    n_seeds: int
    se: float = float("nan")
    df: float = float("nan")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def seed_noise_measured(self) -> bool:
        """Whether the interval holds the seed-to-seed (training) noise: it needs two seeds or more."""
        return self.n_seeds >= 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width, "seed_noise_measured": self.seed_noise_measured}


@dataclass(frozen=True)
class Comparison:
    """Method a minus method b on the same problems and seeds."""

    delta: float
    low: float
    high: float
    p_value: float
    n_problems: int
    n_seeds: int
    se: float = float("nan")
    df: float = float("nan")
    seed_sd: float = float("nan")  # sd over seeds of the per-seed mean difference (NaN with one seed)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and holds the training noise (two seeds or more). Unadjusted: a page
        of several comparisons adjusts their p-values together (`holm`)."""
        return self.n_seeds >= 2 and (self.low > 0 or self.high < 0)

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


# ---------------------------------------------------------------- the variance of a crossed mean


@dataclass(frozen=True)
class MeanSquares:
    """The two-way ANOVA of one (seeds, problems) matrix."""

    n_seeds: int
    n_problems: int
    seed: float  # P var(row means): E = P sigma_a^2 + sigma_e^2
    problem: float  # S var(column means): E = S sigma_b^2 + sigma_e^2
    resid: float  # E = sigma_e^2

    @classmethod
    def of(cls, x: np.ndarray) -> MeanSquares:
        s, p = x.shape
        rows, cols, grand = x.mean(axis=1), x.mean(axis=0), x.mean()
        ms_seed = p * rows.var(ddof=1) if s > 1 else float("nan")
        ms_problem = s * cols.var(ddof=1) if p > 1 else float("nan")
        if s > 1 and p > 1:
            resid = x - rows[:, None] - cols[None, :] + grand
            ms_resid = float((resid ** 2).sum() / ((s - 1) * (p - 1)))
        else:
            ms_resid = float("nan")
        return cls(s, p, float(ms_seed), float(ms_problem), ms_resid)


def _mean_variance(mats: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """(estimate, variance of the estimate, Satterthwaite df) of the unweighted mean over groups of each
    group's grand mean; every group has the same seeds (rows)."""
    g = len(mats)
    estimate = float(np.mean([m.mean() for m in mats]))
    n_seeds = mats[0].shape[0]
    if any(m.shape[0] != n_seeds for m in mats):
        raise ValueError("every group needs the same seeds")
    terms: list[tuple[float, float]] = []  # (a term of the variance, its degrees of freedom)
    if n_seeds == 1:
        # one seed: problem and sampling noise only (the seed term is not estimable)
        for m in mats:
            if m.shape[1] > 1:
                terms.append((m[0].var(ddof=1) / m.shape[1] / g ** 2, m.shape[1] - 1))
    else:
        # the seed term: the per-seed split mean varies across seeds (shared by every group)
        per_seed = np.mean([m.mean(axis=1) for m in mats], axis=0)
        terms.append((per_seed.var(ddof=1) / n_seeds, n_seeds - 1))
        # each group's problem term sigma_b^2 / P = (MS_problem - MS_resid) / (S P), when positive
        for m in mats:
            if m.shape[1] < 2:
                continue
            ms = MeanSquares.of(m)
            scale = 1.0 / (n_seeds * m.shape[1] * g ** 2)
            if ms.problem > ms.resid:
                terms.append((ms.problem * scale, m.shape[1] - 1))
                terms.append((-ms.resid * scale, (n_seeds - 1) * (m.shape[1] - 1)))
    variance = max(0.0, sum(t for t, _ in terms))
    denominator = sum(t ** 2 / d for t, d in terms if d > 0)
    df = variance ** 2 / denominator if denominator > 0 else float("inf")
    # Satterthwaite's df with a subtracted term can fall far below every term's own (t -> infinity where the
    # problem term nearly cancels); the variance is a sum of the positive terms' mean squares, so its df
    # lies between the smallest of theirs and their sum.
    positive = [d for t, d in terms if t > 0]
    if positive:
        df = min(max(df, DF_FLOOR), sum(positive))
    return estimate, variance, df


def _scipy_stats():
    """scipy.stats, imported on first use: ~1 s of every evaluation process's start, which needs none of it."""
    from scipy import stats

    return stats


def _t(df: float, level: float = LEVEL) -> float:
    sps = _scipy_stats()
    q = 0.5 + level / 2
    return float(sps.norm.ppf(q)) if not np.isfinite(df) else float(sps.t.ppf(q, df))


def _interval(estimate: float, variance: float, df: float, level: float, n_problems: int,
              n_seeds: int) -> Interval:
    se = float(np.sqrt(variance))
    half = _t(df, level) * se
    return Interval(estimate, estimate - half, estimate + half, n_problems=n_problems, n_seeds=n_seeds, se=se,
                    df=float(df))


def mean_ci(values: Any, *, level: float = LEVEL) -> Interval:
    """The mean of a (seeds, problems) matrix (or a 1-D array over problems) with its 95% interval."""
    return average_ci([values], level=level)


def average_ci(groups: Sequence[Any], *, level: float = LEVEL) -> Interval:
    """The unweighted mean over groups (e.g. benchmarks: a split average) of each group's mean, with its
    interval. Each group is a (seeds, problems) matrix, the same seeds in every group."""
    mats = [as_matrix(g) for g in groups]
    if not mats:
        raise ValueError("no groups")
    estimate, variance, df = _mean_variance(mats)
    return _interval(estimate, variance, df, level, sum(m.shape[1] for m in mats), mats[0].shape[0])


def ratio_ci(numerator: Any, denominator: Any, *, level: float = LEVEL) -> Interval:
    """sum(numerator) / sum(denominator) over (seeds, problems) cells (e.g. soft steps / thinking steps, lucky
    / correct samples) with its interval, by the delta method: the interval of the mean of the linearised
    values (num - R den) / mean(den), centred on R."""
    num, den = as_matrix(numerator), as_matrix(denominator)
    if num.shape != den.shape:
        raise ValueError(f"numerator and denominator must have the same shape, got {num.shape} and {den.shape}")
    if den.sum() <= 0:
        raise ValueError("the denominator sums to 0: no ratio")
    ratio = float(num.sum() / den.sum())
    linear = (num - ratio * den) / den.mean()
    _, variance, df = _mean_variance([linear])
    return _interval(ratio, variance, df, level, num.shape[1], num.shape[0])


def _p_value(estimate: float, variance: float, df: float) -> float:
    if variance <= 0:
        return 1.0 if estimate == 0 else 0.0
    z, sps = abs(estimate) / np.sqrt(variance), _scipy_stats()
    return float(2 * (sps.norm.sf(z) if not np.isfinite(df) else sps.t.sf(z, df)))


def paired_comparison(a: Any, b: Any, *, level: float = LEVEL) -> Comparison:
    """a - b for two aligned (seeds, problems) matrices (row i of both = the same seed, column j = the same
    problem): mean difference, its interval and two-sided p-value."""
    return paired_average([a], [b], level=level)


def paired_average(a_groups: Sequence[Any], b_groups: Sequence[Any], *, level: float = LEVEL) -> Comparison:
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
    estimate, variance, df = _mean_variance(diffs)
    ci = _interval(estimate, variance, df, level, sum(d.shape[1] for d in diffs), diffs[0].shape[0])
    n_seeds = diffs[0].shape[0]
    per_seed = np.mean([d.mean(axis=1) for d in diffs], axis=0)
    seed_sd = float(per_seed.std(ddof=1)) if n_seeds > 1 else float("nan")
    return Comparison(estimate, ci.low, ci.high, _p_value(estimate, variance, df), n_problems=ci.n_problems,
                      n_seeds=n_seeds, se=ci.se, df=ci.df, seed_sd=seed_sd)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family of tests (NaN entries stay NaN and do not count):
    rejecting where the adjusted p < alpha controls the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------- variance components and precision


@dataclass(frozen=True)
class Components:
    """Variance components of a (seeds, problems) matrix of per-problem pass@1 values (per cell): seed,
    problem, seed x problem interaction and the sampling noise of k samples (sample + interaction =
    the residual). `sample` is per sample (the variance of one sample's 0/1 outcome around its cell's
    probability); NaN where the counts were not given."""

    seed: float
    problem: float
    interaction: float
    sample: float
    n_seeds: int
    n_problems: int
    k: int

    def _terms(self, n_seeds: int, n_problems: int, k: int) -> tuple[float, float]:
        """(seed term, problem term) of the variance of the grand mean at an allocation: the per-seed means'
        variance / S (seed + residual) and sigma_b^2 / P."""
        sample = 0.0 if np.isnan(self.sample) else self.sample
        interaction = self.interaction if not np.isnan(self.interaction) else 0.0
        seed = 0.0 if np.isnan(self.seed) else self.seed
        problem = 0.0 if np.isnan(self.problem) else self.problem
        return (seed + (interaction + sample / k) / n_problems) / n_seeds, problem / n_problems

    def se(self, n_seeds: int, n_problems: int, k: int) -> float:
        """The standard error of the grand mean at another allocation (seeds x problems x samples)."""
        return float(np.sqrt(sum(self._terms(n_seeds, n_problems, k))))

    def df(self, n_seeds: int, n_problems: int, k: int) -> float:
        """Satterthwaite's degrees of freedom of that standard error (from the components, as if known)."""
        seed_term, problem_term = self._terms(n_seeds, n_problems, k)
        if n_seeds < 2:
            return float(n_problems - 1)
        denominator = seed_term ** 2 / (n_seeds - 1) + problem_term ** 2 / max(1, n_problems - 1)
        return float((seed_term + problem_term) ** 2 / denominator) if denominator > 0 else float("inf")

    def detectable(self, n_seeds: int, n_problems: int, k: int) -> float:
        """`detectable_difference` at an allocation."""
        return detectable_difference(self.se(n_seeds, n_problems, k), self.df(n_seeds, n_problems, k))


def components(values: Any, correct: Any = None, k: int = 0) -> Components:
    """Variance components from the ANOVA mean squares (negative estimates set to 0). `correct`: the
    (seeds, problems) counts of correct samples out of k behind pass@1 values; they split the residual into
    sampling noise (the unbiased binomial variance c (k - c) / (k (k - 1)) per sample) and interaction. For
    a paired difference pass the two methods' counts stacked, (2, seeds, problems): sampling noise adds."""
    x = as_matrix(values)
    ms = MeanSquares.of(x)
    s, p = x.shape
    resid = ms.resid if s > 1 else (x[0].var(ddof=1) if p > 1 else float("nan"))
    seed = max(0.0, (ms.seed - ms.resid) / p) if s > 1 else float("nan")
    problem = max(0.0, (ms.problem - ms.resid) / s) if s > 1 else float("nan")
    sample = float("nan")
    if correct is not None and k > 1:
        c = np.asarray(correct, dtype=float)
        c = c.reshape((-1, *x.shape))
        sample = float(sum((ci * (k - ci) / (k * (k - 1))).mean() for ci in c))
    interaction = float("nan")
    if s > 1 and not np.isnan(sample):
        # Two methods sampled with the same seed share their random streams, so their samples are correlated
        # and the binomial variances overstate the difference's sampling noise: it is at most the residual.
        sample = min(sample, resid * k)
        interaction = max(0.0, resid - sample / k)
    return Components(seed, problem, interaction, sample, s, p, k)


def detectable_difference(se: float, df: float, *, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at `level` detects with probability `power`, given the
    standard error and degrees of freedom of the estimate: (t_{1 - alpha/2} + t_{power}) se."""
    sps = _scipy_stats()
    t_power = float(sps.norm.ppf(power)) if not np.isfinite(df) else float(sps.t.ppf(power, df))
    return (_t(df, level) + t_power) * se


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


# ---------------------------------------------------------------- checking the intervals by simulation


def _expected_sigmoid(mean: float, sd: float) -> float:
    """E[sigmoid(N(mean, sd^2))] by Gauss-Hermite quadrature (exact to ~1e-10 for these scales)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float((weights * (1 / (1 + np.exp(-(mean + sd * nodes))))).sum() / weights.sum())


def simulate_experiments(rng: np.random.Generator, n_experiments: int, n_seeds: int, n_problems: int, k: int, *,
                         effect: float = 0.0, seed_sd: float = 0.1, problem_sd: float = 1.5,
                         method_problem_sd: float = 0.3, interaction_sd: float = 0.2,
                         base: float = -0.3) -> tuple[np.ndarray, np.ndarray, float]:
    """Simulated paired experiments of two methods: (a, b) per-problem pass@1 values, each
    (experiments, seeds, problems), and the true difference of their expected accuracies.

    On the logit scale, problem p's difficulty is shared by both methods (N(base, problem_sd)); method a adds
    `effect` and a problem-specific deviation (method_problem_sd); each (method, seed) a training offset
    (seed_sd) and each (method, seed, problem) an interaction (interaction_sd); then k Bernoulli samples.
    Seeds and problems are drawn anew in every experiment, so the truth is the population value,
    E sigmoid(N(base + effect, total sd_a)) - E sigmoid(N(base, total sd_b))."""
    shape = (n_experiments, n_seeds, n_problems)
    difficulty = rng.normal(base, problem_sd, (n_experiments, 1, n_problems))
    deviation = rng.normal(0.0, method_problem_sd, (n_experiments, 1, n_problems))
    logits_b = difficulty + rng.normal(0.0, seed_sd, (n_experiments, n_seeds, 1)) + rng.normal(0.0, interaction_sd,
                                                                                               shape)
    logits_a = (difficulty + effect + deviation + rng.normal(0.0, seed_sd, (n_experiments, n_seeds, 1))
                + rng.normal(0.0, interaction_sd, shape))
    a = rng.binomial(k, 1 / (1 + np.exp(-logits_a))) / k
    b = rng.binomial(k, 1 / (1 + np.exp(-logits_b))) / k
    sd_a = float(np.sqrt(problem_sd ** 2 + method_problem_sd ** 2 + seed_sd ** 2 + interaction_sd ** 2))
    sd_b = float(np.sqrt(problem_sd ** 2 + seed_sd ** 2 + interaction_sd ** 2))
    truth = _expected_sigmoid(base + effect, sd_a) - _expected_sigmoid(base, sd_b)
    return a, b, truth


def coverage(a: np.ndarray, b: np.ndarray, truth: float, *, level: float = LEVEL) -> dict[str, float]:
    """Over simulated experiments (`simulate_experiments`): the share of paired intervals that cover the
    truth, the share called significant, and the mean half-width."""
    covered = significant = 0
    widths = []
    for x, y in zip(a, b, strict=True):
        cmp = paired_comparison(x, y, level=level)
        covered += cmp.low <= truth <= cmp.high
        significant += cmp.significant
        widths.append((cmp.high - cmp.low) / 2)
    n = len(a)
    return {"coverage": covered / n, "significant": significant / n, "half_width": float(np.mean(widths))}
