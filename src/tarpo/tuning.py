"""Choosing hyperparameters on validation, by one procedure and budget for every method.

The config's `tuning` section (`tarpo.config.TuningConfig`) names a grid over keys of `train`, the seeds and
a validation benchmark (distribution 'val', e.g. `synthetic_val`). Every tuned method is trained once per
grid point (a *trial*) and seed, with the train section's steps, so every method gets the same grid, seeds
and budget; in a trial the grid values replace the method's configured ones, whichever layer of the merge
set them. Each trained policy is evaluated on the validation benchmark, and for each method the trial with
the highest mean pass@1 over seeds is chosen; a tie goes to the earlier trial in grid order. Test splits
are never read. `snakemake --cores 2 tune` runs it (workflow/rules/tune.smk):

    {root}/{backbone}/tune/{method}/{trial}/seed{seed}/checkpoint/     (rule tune_train)
    {root}/{backbone}/tune/{method}/{trial}/seed{seed}/eval/{benchmark}.json   (rule tune_evaluate)
    {root}/{backbone}/tuning.csv, tuning.md                            (rule tune_report: `report`)

A trial's name is its grid point, `key=value` with the keys in alphabetical order joined by ','
(`learning_rate=0.0001`, `beta=0.01,learning_rate=3e-05`): readable, and safe as a path and a shell word.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tarpo import stats
from tarpo.config import Config, TuningConfig, resolved_tuning
from tarpo.io import BadInputError, MissingInputError, atomic_write_text
from tarpo.metrics import pass_at_k

Point = dict[str, Any]  # one grid point: train key -> value


def value_text(value: Any) -> str:
    """A grid value as it appears in a trial name: 0.0001, 3e-05, 8, true, thinking."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def trial_name(point: Point) -> str:
    return ",".join(f"{key}={value_text(point[key])}" for key in sorted(point))


def expand_grid(grid: dict[str, list[Any]]) -> list[Point]:
    """Every combination of the grid's values, keys in alphabetical order, the last key varying fastest and
    each key's values in the order given: the grid order ties are broken in."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trials(grid: dict[str, list[Any]]) -> dict[str, Point]:
    """Trial name -> grid point, in grid order."""
    return {trial_name(point): point for point in expand_grid(grid)}


def trial_dir(results: str | Path, backbone: str, method: str, trial: str, seed: int) -> Path:
    return Path(results) / backbone / "tune" / method / trial / f"seed{seed}"


def eval_path(results: str | Path, backbone: str, method: str, trial: str, seed: int, benchmark: str) -> Path:
    return trial_dir(results, backbone, method, trial, seed) / "eval" / f"{benchmark}.json"


@dataclass(frozen=True)
class Row:
    """One method x trial: validation pass@1 over seeds and problems, with its 95% interval."""

    method: str
    trial: str
    point: Point
    score: stats.Interval
    chosen: bool = False


def validation_pass1(paths: dict[int, Path]) -> stats.Interval:
    """Mean pass@1 of one trial over seeds x problems (seed -> its evaluation JSON), with its interval."""
    by_seed: dict[int, dict[str, float]] = {}
    for seed, path in paths.items():
        if not path.exists():
            raise MissingInputError(f"no evaluation {path}: run `snakemake --cores 2 tune`")
        metrics = json.loads(path.read_text())
        counts, k = metrics.get("correct_per_problem"), int(metrics.get("k", 0))
        if counts is None or k < 1:
            raise BadInputError(f"{path} holds no correct_per_problem / k (an older result file): rerun it")
        by_seed[seed] = {pid: pass_at_k(k, int(c), 1) for pid, c in counts.items()}
    return stats.mean_ci(stats.matrix(by_seed))


def choose(rows: list[Row]) -> list[Row]:
    """The rows with each method's best trial marked: the highest mean; of equal means, the first row."""
    best: dict[str, Row] = {}
    for row in rows:
        if row.method not in best or row.score.mean > best[row.method].score.mean:
            best[row.method] = row
    return [Row(r.method, r.trial, r.point, r.score, chosen=r is best[r.method]) for r in rows]


def tuning_table(tuning: TuningConfig, backbone: str, results: str | Path) -> list[Row]:
    """Every tuned method x trial of `backbone` (`tuning`: resolved, `tarpo.config.resolved_tuning`), in the
    section's method order and grid order, each method's choice marked."""
    rows = [Row(method, name, point, validation_pass1(
                {s: eval_path(results, backbone, method, name, s, tuning.benchmark) for s in tuning.seeds}))
            for method in tuning.methods for name, point in trials(tuning.grid).items()]
    return choose(rows)


def _csv(rows: list[Row], keys: list[str], backbone: str, benchmark: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["backbone", "benchmark", "method", "trial", *keys, "pass1", "low", "high", "n_seeds",
                     "n_problems", "chosen"])
    for r in rows:
        writer.writerow([backbone, benchmark, r.method, r.trial, *(value_text(r.point[k]) for k in keys),
                         f"{r.score.mean:.6f}", f"{r.score.low:.6f}", f"{r.score.high:.6f}", r.score.n_seeds,
                         r.score.n_problems, int(r.chosen)])
    return out.getvalue()


def _markdown(cfg: Config, tuning: TuningConfig, rows: list[Row], keys: list[str], backbone: str) -> str:
    grid = "; ".join(f"{k}: {', '.join(value_text(v) for v in tuning.grid[k])}" for k in keys)
    budgets = sorted({(t.steps, t.prompts_per_step, t.group_size)
                      for t in (cfg.train_config(backbone, m) for m in tuning.methods)})
    budget = "; ".join(f"{f'{s} steps' if s else 'one epoch'} of {p} prompts x {g} completions" for s, p, g in budgets)
    n_problems = sorted({r.score.n_problems for r in rows})
    lines = [
        f"# Hyperparameters chosen on validation: {backbone}",
        "",
        f"Every method ({', '.join(tuning.methods)}) was trained with every grid point ({grid}), seeds "
        f"{tuning.seeds}, {budget}: the same grid, seeds and budget for each. A grid value replaces the "
        f"method's configured one. Scored on `{tuning.benchmark}` (validation, {'/'.join(map(str, n_problems))} "
        f"problems, k = {cfg.evaluate.k}); test splits are never used for a choice. Chosen (**bold**): the "
        "highest mean pass@1 over seeds; of equal means, the earlier grid point. 95% intervals from "
        "`tarpo.stats.mean_ci`" + (" (one seed: problem and sampling noise only, not training noise)."
                                   if len(tuning.seeds) == 1 else "."),
        "",
        "| method | " + " | ".join(keys) + " | pass@1 | 95% CI | chosen |",
        "|---|" + "---|" * len(keys) + "---|---|---|",
    ]
    for r in rows:
        mark = "**" if r.chosen else ""
        values = " | ".join(value_text(r.point[k]) for k in keys)
        lines.append(f"| {r.method} | {values} | {mark}{r.score.mean:.3f}{mark} | "
                     f"[{r.score.low:.3f}, {r.score.high:.3f}] | {'yes' if r.chosen else ''} |")
    return "\n".join(lines) + "\n"


def write_report(cfg: Config, backbone: str, results: str | Path, out_csv: str | Path, out_md: str | Path) -> list[Row]:
    """tuning.csv (one row per method x trial) and tuning.md (the same table, the procedure, the choice)."""
    tuning = resolved_tuning(cfg)
    rows = tuning_table(tuning, backbone, results)
    keys = sorted(tuning.grid)
    atomic_write_text(out_csv, _csv(rows, keys, backbone, tuning.benchmark))
    atomic_write_text(out_md, _markdown(cfg, tuning, rows, keys, backbone))
    return rows
