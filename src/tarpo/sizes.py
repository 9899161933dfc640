"""Do the method differences grow or shrink with the model? The change of each paired difference between backbones.

For a config with several backbones (e.g. `config/sizes.yaml`: the embedded model at two sizes), each paired
difference of the results page (each trained method minus CoT and minus GRPO, Pass@1, per benchmark and split
average) at a backbone, minus the same difference at the reference (the config's first backbone):

    change = (method - baseline)[backbone] - (method - baseline)[reference]

The two sides are different trainings on the same problems. Per seed and problem, the difference at the
backbone minus the difference at the reference, seed s of one with seed s of the other, gives a seed x problem
table whose mean is the change. The runs of the two backbones are independent, so any fixed pairing of their
seeds lets the spread of the per-seed means measure the training noise of both sides; the interval and test are
the paired comparisons' (`stats.paired_average`: Satterthwaite's t), with Holm's adjustment over the family of
changes, and established = adjusted p < 0.05 with two seeds or more (`summary.adjust_family`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tarpo import stats
from tarpo.config import Config
from tarpo.summary import (
    AVERAGE,
    PAIRED_BASELINES,
    PerSeed,
    Results,
    _paired_groups,
    adjust_family,
    benchmark_groups,
)

METRIC = "pass@1"
SIZE_COLUMNS = ["reference", "backbone", "comparison", "method", "baseline", "benchmark", "split", "metric",
                "delta_reference", "delta_backbone", "delta", "ci_low", "ci_high", "p_value", "p_holm",
                "significant", "n_problems", "n_seeds", "se", "df"]


def difference(res: Results, method: str, baseline: str, benchmark: str) -> PerSeed | None:
    """seed -> problem -> `method`'s Pass@1 minus `baseline`'s, over the seeds and problems both have."""
    a, b = res.per_problem(method, benchmark, METRIC), res.per_problem(baseline, benchmark, METRIC)
    if a is None or b is None:
        return None
    out = {seed: {pid: a[seed][pid] - b[seed][pid] for pid in a[seed] if pid in b[seed]}
           for seed in a if seed in b}
    return {seed: values for seed, values in out.items() if values} or None


def _mean(per_bench: Sequence[PerSeed]) -> float:
    """The unweighted mean over benchmarks of each one's mean over its seeds and problems."""
    return float(sum(stats.matrix(p).mean() for p in per_bench) / len(per_bench))


def size_frame(cfg: Config, results: Path, backbones: Sequence[str]) -> pd.DataFrame:
    """Every paired difference's change from the first backbone to each other one (SIZE_COLUMNS), Holm-adjusted
    together; a split average is left out where its split has one benchmark (it is that benchmark's row)."""
    if len(backbones) < 2:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    reference, *others = backbones
    found = {b: Results(cfg, results, b, training=False) for b in backbones}
    ref = found[reference]
    rows: list[dict[str, Any]] = []
    for backbone in others:
        res = found[backbone]
        for baseline in PAIRED_BASELINES:
            for method in [m for m in ref.methods if m in res.methods and m not in (baseline, "cot")]:
                for bench_name, split, benches in benchmark_groups(ref):
                    if bench_name == AVERAGE and len(benches) == 1:
                        continue
                    at_ref = [difference(ref, method, baseline, b) for b in benches]
                    at_new = [difference(res, method, baseline, b) for b in benches]
                    if any(d is None for d in [*at_ref, *at_new]):
                        continue
                    new_mats, ref_mats = _paired_groups(at_new, at_ref)  # type: ignore[arg-type]
                    change = stats.paired_average(new_mats, ref_mats)
                    rows.append({
                        "reference": reference, "backbone": backbone, "comparison": f"vs_{baseline}",
                        "method": method, "baseline": baseline, "benchmark": bench_name, "split": split,
                        "metric": METRIC, "delta_reference": _mean(at_ref), "delta_backbone": _mean(at_new),  # type: ignore[arg-type]
                        "delta": change.delta, "ci_low": change.low, "ci_high": change.high,
                        "p_value": change.p_value, "n_problems": change.n_problems, "n_seeds": change.n_seeds,
                        "se": change.se, "df": change.df})
    adjust_family(rows)
    return pd.DataFrame(rows, columns=SIZE_COLUMNS)

