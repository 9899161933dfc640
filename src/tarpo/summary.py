"""Reading a run's results and turning them into statistics: means with 95% CIs, paired comparisons.

Reads, for one backbone and every configured seed, under the config's results
root ({root}: results/{name}, tarpo.layout; a missing file is skipped with a
note, never an error):

    {root}/{backbone}/{method}/seed{seed}/eval/{benchmark}.json           metrics, per-problem counts
    {root}/{backbone}/{method}/seed{seed}/eval/{benchmark}.samples.jsonl  per-sample soft flags
    {root}/{backbone}/{method}/seed{seed}/checkpoint/metrics.jsonl        training metrics per step

and computes (`tarpo.stats` holds the statistics and their choices):

- `summary_and_paired`: the long summary, one row per (method, benchmark,
  metric): the value aggregated over seeds and problems, its 95% interval
  where the per-problem data allow one (pass@j, mean tokens, lucky share; the
  seed is the unit of replication, `tarpo.stats`), the number of seeds, the
  seed-to-seed sd, and `best`: the top Pass@1 / Pass@k of its column where it
  beats every other method of the column (paired tests, Holm-adjusted over
  all pairs of the column, so picking the top is accounted for). Benchmark
  "average" rows hold the split's unweighted mean over benchmarks, as the
  paper averages. And the paired comparisons: each method minus CoT and minus
  GRPO (Pass@1, per benchmark and split average: delta, 95% CI, p-value,
  Holm-adjusted p over the page's vs-baseline family, significant = adjusted
  p < 0.05 with two seeds or more, the seed sd of the difference and its
  variance components), plus the top's comparisons behind `best`.
- `soft_position_frame`: TARPO's (and LEPO's) soft ratio per relative position
  in the thinking phase, with a 95% interval over problems and seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tarpo import methods as registry
from tarpo import stats
from tarpo.config import Config
from tarpo.io import BadInputError, read_jsonl
from tarpo.metrics import pass_at_k

SPLITS = ("id", "ood")
SPLIT_LABEL = {"id": "ID", "ood": "OOD"}
AVERAGE = "average"  # the benchmark name of split-average rows
PAIRED_BASELINES = ("cot", "grpo")  # every method is compared with these (where evaluated)
N_POSITION_BINS = 10

SUMMARY_COLUMNS = ["backbone", "method", "benchmark", "split", "metric", "value", "ci_low", "ci_high", "n_seeds",
                   "best", "seed_sd"]
PAIRED_COLUMNS = ["backbone", "comparison", "method", "baseline", "benchmark", "split", "metric", "delta", "ci_low",
                  "ci_high", "p_value", "p_holm", "significant", "n_problems", "n_seeds", "se", "df", "seed_sd",
                  "k", "var_seed", "var_problem", "var_interaction", "var_sample"]
# The families Holm's adjustment runs over (one page, one backbone): the vs-baseline comparisons together;
# for "best", each column's all-pairs comparisons on their own.
VS_FAMILY = "vs_baselines"
# Per-seed metrics carried into the summary (mean over seeds where no interval can be computed).
MEAN_METRICS = ("mean_tokens", "mean_thinking_tokens", "soft_ratio", "mean_gate", "lucky_share")
COUNT_METRICS = ("n_problems", "k")

PerSeed = dict[int, dict[str, float]]  # seed -> problem id -> value


# ---------------------------------------------------------------- names and order


def method_label(method: str) -> str:
    """The method's label in the registry (CoT, GRPO, ..., ATP-Latent)."""
    return registry.label(method)


def method_order(names: Iterable[str]) -> list[str]:
    """Registered methods in the registry's order (cot, grpo, hrpo, lepo, tarpo, atp_latent), others after by name."""
    return registry.method_order(names)


def configured_methods(cfg: Config) -> list[str]:
    return method_order([*cfg.baselines, *cfg.methods])


def pass_metrics(names: Iterable[str]) -> list[str]:
    """The pass@j names among `names`, by j."""
    return sorted({n for n in names if n.startswith("pass@") and n[5:].isdigit()}, key=lambda n: int(n[5:]))


def largest_k(summary: pd.DataFrame) -> int:
    ks = [int(m[5:]) for m in pass_metrics(summary.metric.unique())] if not summary.empty else []
    return max(ks) if ks else 1


def shown_metrics(k: int) -> list[str]:
    """The metrics of the main table: Pass@1 and Pass@k for the largest k."""
    return ["pass@1"] + ([f"pass@{k}"] if k > 1 else [])


# ---------------------------------------------------------------- reading results


def _split_of(metrics: dict[str, Any], benchmark: str, cfg: Config) -> str:
    """'id' or 'ood': the eval JSON's own flag, else the benchmark registry."""
    if metrics.get("distribution") in SPLITS:
        return metrics["distribution"]
    if "ood" in metrics:
        return "ood" if metrics["ood"] else "id"
    from tarpo.data.benchmarks import get_benchmark

    return "ood" if get_benchmark(benchmark, cfg.datasets).ood else "id"


class Results:
    """Everything found for one backbone, every seed, plus notes on what was not: of the config's baselines and
    methods, or of the `methods` given (e.g. ablation arms and their methods, tarpo.ablations); `training`:
    also the trained methods' training metrics."""

    def __init__(self, cfg: Config, results: Path, backbone: str, methods: Sequence[str] | None = None,
                 training: bool = True):
        self.backbone = backbone
        self.seeds = list(cfg.seeds)
        self.notes: list[str] = []
        self.evals: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}  # (method, benchmark) -> seed -> JSON
        self.split: dict[str, str] = {}  # benchmark -> id | ood
        self.training: dict[str, dict[int, pd.DataFrame]] = {}  # method -> seed -> per-step metrics
        self.samples_paths: dict[tuple[str, str], dict[int, Path]] = {}
        root = Path(results) / backbone
        for method in configured_methods(cfg) if methods is None else methods:
            missing = []
            for bench in cfg.evaluate.benchmarks:
                for seed in self.seeds:
                    path = root / method / f"seed{seed}" / "eval" / f"{bench}.json"
                    if not path.exists():
                        missing.append(bench if len(self.seeds) == 1 else f"{bench} (seed {seed})")
                        continue
                    metrics = json.loads(path.read_text())
                    self.evals.setdefault((method, bench), {})[seed] = metrics
                    self.split.setdefault(bench, _split_of(metrics, bench, cfg))
                    samples = path.with_name(f"{bench}.samples.jsonl")
                    if samples.exists():
                        self.samples_paths.setdefault((method, bench), {})[seed] = samples
            if missing:
                self.notes.append(f"{backbone}/{method}: no evaluation on {', '.join(missing)}")
            if training and method in cfg.methods:
                for seed in self.seeds:
                    path = root / method / f"seed{seed}" / "checkpoint" / "metrics.jsonl"
                    if path.exists() and path.stat().st_size:
                        frame = pd.DataFrame(read_jsonl(path))
                        if "step" in frame:
                            self.training.setdefault(method, {})[seed] = frame.sort_values("step")
                    else:
                        self.notes.append(f"{backbone}/{method}: no training metrics ({path})")
        # methods with at least one evaluation (given ones in their order)
        found = {m for m, _ in self.evals}
        self.methods = method_order(found) if methods is None else [m for m in methods if m in found]
        self.benchmarks = [b for split in SPLITS for b in cfg.evaluate.benchmarks if self.split.get(b) == split]

    def benchmarks_of(self, split: str) -> list[str]:
        return [b for b in self.benchmarks if self.split[b] == split]

    def samples(self, method: str, benchmark: str, seed: int) -> Iterator[dict[str, Any]]:
        """The samples file's rows, streamed with only the fields the figures read (a paper-scale file holds
        token ids and completions of hundreds of thousands of samples, so not `tarpo.io.read_jsonl`, which
        holds them all; a malformed line is the same error); nothing when there is no file."""
        path = self.samples_paths.get((method, benchmark), {}).get(seed)
        if path is None:
            return
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        where = f"{path}:{number}"
                        raise BadInputError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
                    yield {"problem_id": row.get("problem_id"), "n_thinking": row.get("n_thinking", 0),
                           "soft": row.get("soft") or []}

    def per_problem(self, method: str, benchmark: str, metric: str) -> PerSeed | None:
        """seed -> problem id -> the problem's value of `metric`: pass@j (from its correct samples out of k),
        mean_tokens, or the counts behind lucky_share ("lucky", "correct"). None when a seed's evaluation
        does not hold them (an older result file)."""
        out: PerSeed = {}
        for seed, m in self.evals.get((method, benchmark), {}).items():
            if metric.startswith("pass@"):
                counts, k, j = m.get("correct_per_problem"), int(m.get("k", 0)), int(metric[5:])
                if counts is None or not 1 <= j <= k:
                    return None
                out[seed] = {pid: pass_at_k(k, int(c), j) for pid, c in counts.items()}
            else:
                key = {"mean_tokens": "tokens_per_problem", "lucky": "lucky_per_problem",
                       "correct": "correct_per_problem"}[metric]
                if m.get(key) is None:
                    return None
                out[seed] = {pid: float(v) for pid, v in m[key].items()}
        return out or None


# ---------------------------------------------------------------- aggregation helpers


def _only(per_seed: PerSeed, seeds: Sequence[int]) -> PerSeed:
    return {s: per_seed[s] for s in seeds}


def _collapse(per_seed: PerSeed) -> PerSeed:
    """Each problem's mean over the seeds that have it, as one pseudo-seed (-1)."""
    problems = set.intersection(*(set(v) for v in per_seed.values()))
    first = per_seed[min(per_seed)]
    return {-1: {p: float(np.mean([v[p] for v in per_seed.values()])) for p in first if p in problems}}


def _group_matrices(per_bench: Sequence[PerSeed]) -> list[np.ndarray]:
    """(seeds, problems) matrices of several benchmarks over the seeds they all have (without one in common:
    each benchmark's per-problem mean over its own seeds)."""
    common = sorted(set.intersection(*(set(p) for p in per_bench)))
    if common:
        return [stats.matrix(_only(p, common)) for p in per_bench]
    return [stats.matrix(_collapse(p)) for p in per_bench]


def _paired_groups(a: Sequence[PerSeed], b: Sequence[PerSeed]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Aligned matrices of two methods on several benchmarks: the seeds both have on every benchmark, paired
    by seed; without one, per-problem means over each side's seeds."""
    common = sorted(set.intersection(*(set(p) for p in [*a, *b])))
    pairs = []
    for pa, pb in zip(a, b, strict=True):
        if common:
            pairs.append(stats.paired_matrices(_only(pa, common), _only(pb, common)))
        else:
            pairs.append(stats.paired_matrices(_collapse(pa), _collapse(pb)))
    return [x for x, _ in pairs], [y for _, y in pairs]


def _mean_over_seeds(res: Results, method: str, bench: str, metric: str) -> float:
    values = [m[metric] for m in res.evals[(method, bench)].values()
              if isinstance(m.get(metric), (int, float)) and not isinstance(m.get(metric), bool)]
    return float(np.mean(values)) if values else math.nan


def _cell(res: Results, method: str, benches: Sequence[str], metric: str
          ) -> tuple[float, float, float, int, float]:
    """(value, ci_low, ci_high, n_seeds, seed_sd) of `metric` over `benches` (one benchmark, or a split's:
    their unweighted mean); seed_sd: the sd over seeds of the per-seed value (NaN with one seed or without
    per-problem data). The interval is NaN where the per-problem data are missing."""
    n_seeds = min(len(res.evals[(method, b)]) for b in benches)
    if metric.startswith("pass@") or metric == "mean_tokens":
        per = [res.per_problem(method, b, metric) for b in benches]
        if all(p is not None for p in per):
            mats = _group_matrices(per)  # type: ignore[arg-type]
            ci = stats.average_ci(mats)
            per_seed = np.mean([m.mean(axis=1) for m in mats], axis=0)
            seed_sd = float(per_seed.std(ddof=1)) if per_seed.size > 1 else math.nan
            low, high = (max(0.0, ci.low), min(1.0, ci.high)) if metric.startswith("pass@") else (ci.low, ci.high)
            return ci.mean, low, high, ci.n_seeds, seed_sd  # a t interval of a share can pass 0 or 1: clipped
    elif metric == "lucky_share" and len(benches) == 1:
        lucky, correct = (res.per_problem(method, benches[0], key) for key in ("lucky", "correct"))
        seeds = sorted(set(lucky) & set(correct)) if lucky is not None and correct is not None else []
        if seeds:
            problems = [p for p in lucky[seeds[0]] if all(p in lucky[s] and p in correct[s] for s in seeds)]
            if problems:
                num, den = stats.matrix(lucky, seeds, problems), stats.matrix(correct, seeds, problems)
                if den.sum() > 0:
                    ci = stats.ratio_ci(num, den)
                    return ci.mean, max(0.0, ci.low), min(1.0, ci.high), ci.n_seeds, math.nan
    values = [_mean_over_seeds(res, method, b, metric) for b in benches]
    return float(np.mean(values)), math.nan, math.nan, n_seeds, math.nan


# ---------------------------------------------------------------- the long summary and the paired comparisons


def benchmark_groups(res: Results) -> list[tuple[str, str, list[str]]]:
    """(benchmark or AVERAGE, split, its benchmarks): each benchmark, then each split's average."""
    out = [(b, res.split[b], [b]) for b in res.benchmarks]
    out += [(AVERAGE, split, res.benchmarks_of(split)) for split in SPLITS if res.benchmarks_of(split)]
    return out


def summary_and_paired(res: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long summary (SUMMARY_COLUMNS) and the paired comparisons (PAIRED_COLUMNS) of one backbone."""
    rows: list[tuple[Any, ...]] = []
    for bench_name, split, benches in benchmark_groups(res):
        for method in res.methods:
            if not all((method, b) in res.evals for b in benches):
                continue  # never an average over fewer benchmarks
            names = {key for b in benches for run in res.evals[(method, b)].values() for key in run}
            if bench_name != AVERAGE:
                for metric in COUNT_METRICS:
                    value = next(iter(res.evals[(method, bench_name)].values())).get(metric)
                    if isinstance(value, (int, float)):
                        rows.append((res.backbone, method, bench_name, split, metric, float(value), math.nan,
                                     math.nan, len(res.evals[(method, bench_name)]), False, math.nan))
            for metric in pass_metrics(names) + [m for m in MEAN_METRICS if m in names]:
                if metric.startswith("pass@") and not all(
                        metric in run for b in benches for run in res.evals[(method, b)].values()):
                    continue
                value, low, high, n_seeds, seed_sd = _cell(res, method, benches, metric)
                if not math.isnan(value):
                    rows.append((res.backbone, method, bench_name, split, metric, value, low, high, n_seeds, False,
                                 seed_sd))
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    paired: list[dict[str, Any]] = []

    def compare(kind: str, method: str, baseline: str, bench_name: str, split: str, benches: list[str],
                metric: str) -> dict[str, Any] | None:
        row = paired_row(res, kind, method, baseline, bench_name, split, benches, metric)
        if row is not None:
            paired.append(row)
        return row

    groups = benchmark_groups(res)
    for baseline in PAIRED_BASELINES:
        for method in res.methods:
            if method in (baseline, "cot"):  # CoT - GRPO would only repeat GRPO - CoT
                continue
            for bench_name, split, benches in groups:
                if all((m, b) in res.evals for m in (method, baseline) for b in benches):
                    compare(f"vs_{baseline}", method, baseline, bench_name, split, benches, "pass@1")
    adjust_family([r for r in paired if r["comparison"].startswith("vs_")])
    # "best": the top value of a main-table column that beats every other method of the column, by paired
    # tests Holm-adjusted over all pairs of the column (so picking the top is accounted for)
    k = largest_k(summary)
    for bench_name, split, benches in groups:
        for metric in shown_metrics(k):
            col = summary[(summary.benchmark == bench_name) & (summary.split == split) & (summary.metric == metric)]
            if len(col) < 2:
                continue
            ranked = col.sort_values("value", ascending=False, kind="stable")
            names = list(ranked.method)
            family = []
            for i, first in enumerate(names):
                for second in names[i + 1:]:
                    row = compare("best_vs_other" if i == 0 else "best_family", first, second, bench_name, split,
                                  benches, metric)
                    if row is not None:
                        family.append(row)
            adjust_family(family)
            top = [r for r in family if r["comparison"] == "best_vs_other"]
            if len(top) == len(names) - 1 and all(r["significant"] and r["delta"] > 0 for r in top):
                summary.loc[ranked.index[0], "best"] = True
    paired = [r for r in paired if r["comparison"] != "best_family"]  # kept: the top's comparisons
    return _ordered(summary, res), pd.DataFrame(paired, columns=PAIRED_COLUMNS)


def paired_row(res: Results, kind: str, method: str, baseline: str, bench_name: str, split: str,
               benches: Sequence[str], metric: str) -> dict[str, Any] | None:
    """`method` minus `baseline` on `benches` (one benchmark, or a split's: their unweighted mean), paired by
    seed and problem, as a PAIRED_COLUMNS row without its Holm adjustment (`adjust_family`); None where a side
    lacks per-problem data."""
    a = [res.per_problem(method, b, metric) for b in benches]
    b = [res.per_problem(baseline, bb, metric) for bb in benches]
    if any(p is None for p in [*a, *b]):
        return None
    a_mats, b_mats = _paired_groups(a, b)  # type: ignore[arg-type]
    cmp = stats.paired_average(a_mats, b_mats)
    row = {"backbone": res.backbone, "comparison": kind, "method": method, "baseline": baseline,
           "benchmark": bench_name, "split": split, "metric": metric, "delta": cmp.delta, "ci_low": cmp.low,
           "ci_high": cmp.high, "p_value": cmp.p_value, "n_problems": cmp.n_problems, "n_seeds": cmp.n_seeds,
           "se": cmp.se, "df": cmp.df, "seed_sd": cmp.seed_sd}
    k = _common_k(res, (method, baseline), benches)
    if metric == "pass@1" and len(benches) == 1 and k:
        # variance components of the difference; the counts behind pass@1 split the sampling noise off
        comp = stats.components(a_mats[0] - b_mats[0], np.stack([a_mats[0], b_mats[0]]) * k, k)
        row.update(k=k, var_seed=comp.seed, var_problem=comp.problem, var_interaction=comp.interaction,
                   var_sample=comp.sample)
    return row


def _common_k(res: Results, methods: Sequence[str], benches: Sequence[str]) -> int:
    """The samples per problem every evaluation of `methods` on `benches` used (0 if they differ)."""
    ks = {int(run.get("k", 0)) for m in methods for b in benches for run in res.evals.get((m, b), {}).values()}
    return ks.pop() if len(ks) == 1 else 0


def adjust_family(family: list[dict[str, Any]]) -> None:
    """Holm-adjust the p-values of a family of comparison rows (identical tests, e.g. a split average of one
    benchmark and that benchmark, count once) and mark each row significant where its adjusted p < 0.05 and
    the training noise was measured (two seeds or more)."""
    keys = {}
    for r in family:
        key = (r["method"], r["baseline"], r["metric"], round(r["delta"], 12), round(r["se"], 12))
        keys.setdefault(key, []).append(r)
    adjusted = stats.holm([group[0]["p_value"] for group in keys.values()])
    for group, p in zip(keys.values(), adjusted, strict=True):
        for r in group:
            r["p_holm"] = float(p)
            r["significant"] = bool(r["n_seeds"] >= 2 and p < stats.ALPHA)



def _ordered(frame: pd.DataFrame, res: Results) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(method_order(frame.method.unique()))}
    bench_order = {b: i for i, b in enumerate(res.benchmarks)}
    frame = frame.assign(_m=frame.method.map(order),
                         _b=[bench_order.get(b, len(bench_order) + SPLITS.index(s))
                             for b, s in zip(frame.benchmark, frame.split)])
    return frame.sort_values(["_m", "_b", "metric"], kind="stable").drop(columns=["_m", "_b"]).reset_index(drop=True)


def read_summary(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"backbone": str, "method": str, "benchmark": str, "split": str, "metric": str})
    for col in SUMMARY_COLUMNS:
        if col not in frame:  # an older summary without intervals or seed spread
            frame[col] = False if col == "best" else math.nan
    frame["best"] = frame["best"].astype(str).str.lower().eq("true")
    return frame[SUMMARY_COLUMNS]


def read_paired(path: Path) -> pd.DataFrame:
    if not Path(path).exists() or not Path(path).stat().st_size:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    frame = pd.read_csv(path, dtype={"backbone": str, "method": str, "baseline": str, "benchmark": str})
    frame["significant"] = frame["significant"].astype(str).str.lower().eq("true")
    for col in PAIRED_COLUMNS:
        if col not in frame:  # an older paired.csv without the seed-level columns
            frame[col] = math.nan
    return frame


# ---------------------------------------------------------------- soft ratio by position


def position_bin_index(steps: int, n_thinking: int, n_bins: int = N_POSITION_BINS) -> np.ndarray:
    """The position bin of thinking steps t = 0..steps-1 of a thinking phase of n_thinking steps:
    floor((t + 1/2) / n_thinking * n_bins), in its exact integer form."""
    t = np.arange(steps)
    return ((2 * t + 1) * n_bins) // (2 * int(n_thinking))


def position_bins(n_thinking: int, flags: Sequence[int], n_bins: int = N_POSITION_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(soft steps, thinking steps) per relative-position bin of one sample.

    Thinking steps t = 0..n-1 (n = n_thinking, the steps before the answer
    marker) fall in bin floor((t + 1/2) / n * n_bins): the relative position at
    the step's centre. `flags[t]` is 1 when step t fed a soft input; flags past
    the thinking phase are ignored."""
    n = min(int(n_thinking or 0), len(flags))
    if n <= 0:
        return np.zeros(n_bins), np.zeros(n_bins)
    bins = position_bin_index(n, n_thinking, n_bins)
    soft = np.asarray(flags[:n], dtype=float) != 0
    return np.bincount(bins, weights=soft, minlength=n_bins), np.bincount(bins, minlength=n_bins).astype(float)


def soft_by_position(samples: Iterable[dict[str, Any]], n_bins: int = N_POSITION_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(soft steps, thinking steps) per relative-position bin, pooled over samples (see `position_bins`)."""
    soft_counts, step_counts = np.zeros(n_bins), np.zeros(n_bins)
    for sample in samples:
        soft, steps = position_bins(sample.get("n_thinking") or 0, sample.get("soft") or [], n_bins)
        soft_counts += soft
        step_counts += steps
    return soft_counts, step_counts


POSITION_COLUMNS = ["split", "method", "bin", "position_from", "position_to", "soft_steps", "thinking_steps",
                    "soft_ratio", "ci_low", "ci_high", "samples", "n_seeds"]


def position_methods() -> list[str]:
    """The methods that choose soft or discrete inputs per step (registry: soft_positions), e.g. lepo, tarpo."""
    return [m.name for m in registry.all_methods() if m.soft_positions]


def soft_position_frame(res: Results) -> pd.DataFrame:
    """Per split and method that chooses soft steps (lepo, tarpo): soft and thinking steps per relative-position
    bin, pooled over the split's benchmarks, problems and seeds, with the soft ratio's 95% interval over problems
    and seeds (POSITION_COLUMNS)."""
    rows = []
    for split in SPLITS:
        for m in position_methods():
            per_seed: dict[int, dict[tuple[str, str], list[np.ndarray]]] = {}
            n_samples = 0
            for b in res.benchmarks_of(split):
                for seed in res.samples_paths.get((m, b), {}):
                    cells = per_seed.setdefault(seed, {})
                    for i, row in enumerate(res.samples(m, b, seed)):
                        n_samples += 1
                        soft, steps = position_bins(row["n_thinking"], row["soft"])
                        key = (b, str(row["problem_id"] if row["problem_id"] is not None else i))
                        acc = cells.setdefault(key, [np.zeros(N_POSITION_BINS), np.zeros(N_POSITION_BINS)])
                        acc[0] += soft
                        acc[1] += steps
            if not per_seed:
                continue
            seeds = sorted(per_seed)
            problems = sorted(set().union(*(per_seed[s] for s in seeds)))
            zero = [np.zeros(N_POSITION_BINS), np.zeros(N_POSITION_BINS)]
            cube = np.array([[per_seed[s].get(p, zero) for p in problems] for s in seeds])  # seeds, problems, 2, bins
            soft, steps = cube[:, :, 0, :], cube[:, :, 1, :]
            if steps.sum() == 0:
                continue
            for i in range(N_POSITION_BINS):
                total_soft, total_steps = soft[..., i].sum(), steps[..., i].sum()
                ratio, low, high = math.nan, math.nan, math.nan
                if total_steps:
                    ci = stats.ratio_ci(soft[..., i], steps[..., i])
                    ratio, low, high = ci.mean, max(0.0, ci.low), min(1.0, ci.high)
                rows.append((split, m, i, i / N_POSITION_BINS, (i + 1) / N_POSITION_BINS, int(total_soft),
                             int(total_steps), ratio, low, high, n_samples, len(seeds)))
    return pd.DataFrame(rows, columns=POSITION_COLUMNS)
