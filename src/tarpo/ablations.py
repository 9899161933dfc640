"""The ablation table: each arm of the config's `ablations` minus its method, with the paired tests of the page.

An arm (`tarpo.config.AblationConfig`) is a trained method with some training settings changed; the
workflow trains and evaluates it like a method, on the same seeds and benchmarks:

    {root}/{backbone}/{arm}/seed{seed}/checkpoint/, eval/{benchmark}.json     (rules train, evaluate)
    {root}/{backbone}/ablations.csv                  one row per arm and benchmark / split average (rule ablations_table)
    {root}/figures/{backbone}/tables/ablations.{md,tex,html}

Each row is the Pass@1 difference arm minus method, paired by seed and problem (seed s of the arm with
seed s of its method), with the interval and test of the paired comparisons (`tarpo.summary.paired_row`:
the seed x problem table's t interval with Satterthwaite's degrees of freedom), and Holm's adjustment over
the family of every arm's tests on the backbone (`tarpo.summary.adjust_family`): established = adjusted
p < 0.05 with two seeds or more. The rows use paired.csv's columns (comparison "ablation", method = the
arm, baseline = its method).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tarpo.config import Config
from tarpo.io import atomic_write_text
from tarpo.summary import PAIRED_COLUMNS, Results, adjust_family, benchmark_groups, paired_row
from tarpo.tables import ablation_html, ablation_latex, ablation_markdown

COMPARISON = "ablation"
METRIC = "pass@1"


def ablation_frame(cfg: Config, results: Path, backbone: str) -> tuple[pd.DataFrame, list[str]]:
    """(the backbone's ablation rows, notes on what is missing): every arm minus its method on each benchmark
    and split average, Holm-adjusted together."""
    arms = list(cfg.ablations)
    parents = list(dict.fromkeys(cfg.ablations[a].method for a in arms))
    res = Results(cfg, results, backbone, methods=[*parents, *arms], training=False)
    rows = []
    for arm in arms:
        parent = cfg.ablations[arm].method
        for bench_name, split, benches in benchmark_groups(res):
            if all((m, b) in res.evals for m in (arm, parent) for b in benches):
                row = paired_row(res, COMPARISON, arm, parent, bench_name, split, benches, METRIC)
                if row is not None:
                    rows.append(row)
    adjust_family(rows)
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS), res.notes


def write_ablations(cfg: Config, results: Path, backbone: str, out_csv: Path, tables_dir: Path) -> pd.DataFrame:
    """ablations.csv, and ablations.md / .tex / .html in `tables_dir`; returns the rows."""
    frame, notes = ablation_frame(cfg, results, backbone)
    atomic_write_text(out_csv, frame.to_csv(index=False))
    md = ablation_markdown(frame, [backbone], cfg.ablations)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(Path(tables_dir) / "ablations.md", md)
    atomic_write_text(Path(tables_dir) / "ablations.tex", ablation_latex(frame, [backbone], cfg.ablations))
    atomic_write_text(Path(tables_dir) / "ablations.html", ablation_html(frame, [backbone], cfg.ablations))
    return frame
