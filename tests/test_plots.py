"""`tarpo summarise`: tables, figures and the long summary from fake results.

The fake results follow the layout and keys `tarpo evaluate` / `tarpo train`
write (eval JSON, samples JSONL, checkpoint/metrics.jsonl); the numbers are
made up so that the expected table can be computed by hand.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tarpo import plots, tables
from tarpo.config import load_config
from tarpo.metrics import mean_pass_at_k

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "tiny"
METHODS = ("cot", "grpo", "hrpo", "lepo", "tarpo")
# benchmark -> split: two ID benchmarks (so the ID average is a real mean) and one OOD
BENCHMARKS = {"synthetic_test_id": "id", "gsm8k": "id", "synthetic_test_ood": "ood"}
K = 4
N_PROBLEMS = 50  # x K = 200 samples: every Pass@1 below is a whole number of correct samples
# Pass@1 per method and benchmark. On synthetic_test_ood TARPO is far ahead (significant); on
# synthetic_test_id it leads HRPO by 3 points, 6 samples in two problems (not significant).
PASS1 = {
    "cot": {"synthetic_test_id": 0.30, "gsm8k": 0.20, "synthetic_test_ood": 0.10},
    "grpo": {"synthetic_test_id": 0.50, "gsm8k": 0.40, "synthetic_test_ood": 0.20},
    "hrpo": {"synthetic_test_id": 0.52, "gsm8k": 0.41, "synthetic_test_ood": 0.22},
    "lepo": {"synthetic_test_id": 0.45, "gsm8k": 0.43, "synthetic_test_ood": 0.18},
    "tarpo": {"synthetic_test_id": 0.55, "gsm8k": 0.42, "synthetic_test_ood": 0.45},
}
TOKENS = {"cot": 60.0, "grpo": 48.0, "hrpo": 50.0, "lepo": 55.0, "tarpo": 40.0}

# Crafted samples (the same in every TARPO file): thinking steps t = 0..n-1 go
# to bin floor((t + 1/2) / n * 10).
#   n = 4: t = 0, 1, 2, 3 -> bins 1, 3, 6, 8; soft at t = 0 and 3 (the 5th flag is an answer-phase step: ignored)
#   n = 10: t -> bin t; soft on the first five steps
#   n = 0: no thinking step, ignored
TARPO_SAMPLES = [
    {"n_thinking": 4, "soft": [1, 0, 0, 1, 1], "n_tokens": 5},
    {"n_thinking": 10, "soft": [1] * 5 + [0] * 5 + [0, 0], "n_tokens": 12},
    {"n_thinking": 0, "soft": [0, 0], "n_tokens": 2},
]
#            bin:  0    1    2    3    4    5    6    7    8    9
HAND_SOFT = [1, 2, 1, 1, 1, 0, 0, 0, 1, 0]
HAND_STEPS = [1, 2, 1, 2, 1, 1, 2, 1, 2, 1]


def counts(p1: float) -> dict[str, int]:
    """Correct samples (of K) per problem for a Pass@1 of p1: problems in one fixed order of easiness, the
    easiest all correct, then one partly correct, the rest none (so methods differ on few problems)."""
    total = round(p1 * N_PROBLEMS * K)
    out = []
    for _ in range(N_PROBLEMS):
        c = min(K, total)
        out.append(c)
        total -= c
    order = np.random.default_rng(0).permutation(N_PROBLEMS)  # the same problem order for every method
    return {f"p{order[i]:02d}": c for i, c in enumerate(out)}


def pass_at_counts(correct: dict[str, int], j: int) -> float:
    return mean_pass_at_k([(K, c) for c in correct.values()], j)


SEEDS = (0, 1, 2)


def make_config(methods=METHODS, benchmarks=tuple(BENCHMARKS), seeds=(0,)):
    return load_config({
        "name": "fake",
        "seeds": list(seeds),
        "backbones": {BACKBONE: {"kind": "embedded", "warm_start_dataset": "synthetic"}},
        "methods": {m: {} for m in methods if m != "cot"},
        "baselines": ["cot"] if "cot" in methods else [],
        "evaluate": {"benchmarks": list(benchmarks), "k": K},
    })


def make_results(root: Path, methods=METHODS, benchmarks=tuple(BENCHMARKS), steps: int = 30,
                 seeds=(0,), spread: float = 0.0) -> Path:
    """Fake results/{backbone}/{method}/seed{seed}/{eval,checkpoint} for `methods` x `benchmarks` x `seeds`;
    seed i's Pass@1 is off by `spread` x (i - the middle seed), so the mean over seeds stays PASS1."""
    rng = np.random.default_rng(0)
    for m in methods:
        for seed in seeds:
            base = root / BACKBONE / m / f"seed{seed}"
            for b in benchmarks:
                correct = counts(PASS1[m][b] + spread * (seed - (len(seeds) - 1) / 2))
                metrics = {"benchmark": b, "method": m, "backbone": BACKBONE, "kind": "math",
                           "distribution": BENCHMARKS[b], "ood": BENCHMARKS[b] == "ood", "n_problems": N_PROBLEMS,
                           "k": K, "n_samples": N_PROBLEMS * K, "seed": seed,
                           "mean_tokens": TOKENS[m] + (10.0 if BENCHMARKS[b] == "ood" else 0.0),
                           "mean_thinking_tokens": TOKENS[m] - 5,
                           **{f"pass@{j}": pass_at_counts(correct, j) for j in (1, 2, 4)},
                           "correct_per_problem": correct,
                           "tokens_per_problem": {p: TOKENS[m] + (10.0 if BENCHMARKS[b] == "ood" else 0.0)
                                                  for p in correct},
                           "machine": {"platform": "Linux-test", "cpus": 2, "torch": "2.x", "device": "cpu",
                                       "date": "2026-01-02"}}
                if b.startswith("synthetic"):  # one lucky sample in every problem with three or more correct
                    lucky = {p: int(c >= 3) for p, c in correct.items()}
                    metrics.update(lucky_per_problem=lucky, lucky_samples=sum(lucky.values()),
                                   lucky_share=sum(lucky.values()) / max(sum(correct.values()), 1))
                if m in ("tarpo", "lepo"):
                    metrics["soft_ratio"] = 0.3 if m == "tarpo" else 1.0
                    samples = TARPO_SAMPLES if m == "tarpo" else [
                        {"n_thinking": 6, "soft": [1] * 6 + [0], "n_tokens": 7}]
                else:
                    samples = [{"n_thinking": 5, "soft": [0] * 6, "n_tokens": 6}]
                if m == "hrpo":
                    metrics["mean_gate"] = 0.99
                (base / "eval").mkdir(parents=True, exist_ok=True)
                (base / "eval" / f"{b}.json").write_text(json.dumps(metrics))
                rows = [{"problem_id": f"p{i}", "sample": 0, "correct": False, **s} for i, s in enumerate(samples)]
                (base / "eval" / f"{b}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if m != "cot":
                (base / "checkpoint").mkdir(parents=True, exist_ok=True)
                lines = []
                for step in range(1, steps + 1):
                    row = {"step": step, "reward_mean": min(1.0, 0.2 + 0.01 * step + 0.05 * rng.standard_normal()),
                           "reward_std": 0.3, "loss": 0.1, "kl": 0.001 * step, "token_entropy": 2.0,
                           "completion_length": 60 - 0.5 * step + rng.standard_normal(), "lr": 1e-4}
                    if m == "tarpo":
                        row.update(soft_ratio=0.01 + 0.005 * step, action_entropy=0.06 + 0.004 * step,
                                   topk_entropy=1.5, soft_hard_distance=0.1)
                    if m == "lepo":
                        row.update(soft_ratio=1.0)
                    if m == "hrpo":
                        row.update(mean_gate=0.99 - 0.0005 * step)
                    lines.append(json.dumps(row))
                (base / "checkpoint" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Header and body rows of every pipe table in a markdown text (cells stripped of their padding)."""
    tables, lines = [], []
    for ln in [*text.splitlines(), ""]:
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
            assert set("".join(split[1])) <= set(":-"), split[1]  # the alignment row
            assert all(len(row) == len(split[0]) for row in split), lines
            tables.append((split[0], split[2:]))
            lines = []
    return tables


def md_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the (first) pipe table in a markdown file."""
    return md_tables(path.read_text())[0]


def md_row(text: str, *first: str) -> list[str]:
    """The first row of any pipe table in `text` whose leading cells are `first`."""
    return next(row for _, rows in md_tables(text) for row in rows if row[:len(first)] == list(first))


def number(cell: str) -> float:
    """The value of a '55.0 ± 4.1' cell (bold or not)."""
    cell = cell.strip("*")
    return float(cell.split(" ± ")[0]) if cell != plots.MISSING else math.nan


def half_width(cell: str) -> float:
    return float(cell.strip("*").split(" ± ")[1])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every method on every benchmark, summarised once for the tests below."""
    root = tmp_path_factory.mktemp("full")
    results, out = make_results(root / "results"), root / "results" / "figures"
    plots.summarise(make_config(), results, out)
    return results, out


@pytest.fixture(scope="module")
def full3(tmp_path_factory):
    """The same results from three seeds that agree: the training noise is measured (and is 0), so
    differences can be established; every Pass@j is the one-seed value."""
    root = tmp_path_factory.mktemp("full3")
    results, out = make_results(root / "results", seeds=SEEDS), root / "results" / "figures"
    plots.summarise(make_config(seeds=SEEDS), results, out)
    return results, out


def test_every_output_is_written_and_parses(full):
    results, out = full
    summary = pd.read_csv(results / BACKBONE / "summary.csv")
    assert list(summary.columns) == ["backbone", "method", "benchmark", "split", "metric", "value", "ci_low",
                                     "ci_high", "n_seeds", "best", "seed_sd"]
    assert summary.seed_sd.isna().all()  # one seed: no seed spread
    assert set(summary.method) == set(METHODS)
    paired = pd.read_csv(results / BACKBONE / "paired.csv")
    assert set(paired.comparison) == {"vs_cot", "vs_grpo", "best_vs_other"}
    for name in plots.FIGURES:
        png = out / BACKBONE / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    for where in (out / BACKBONE / "tables", out / "tables"):
        table = pd.read_csv(where / "main.csv")
        assert list(table.method) == list(METHODS)
        assert {"synthetic_test_id Pass@1 ci_low", "synthetic_test_id Pass@1 ci_high"} <= set(table.columns)
        tex = (where / "main.tex").read_text()
        assert tex.count("\\begin{tabular}") == 1 and "\\bottomrule" in tex and "synthetic\\_test\\_id" in tex
        assert tex.count("\\\\") == 2 + len(METHODS)  # benchmark row, metric row, one row per method
        assert "$\\pm$" in tex
        assert (where / "paired.md").read_text().count("method − CoT") == 1
        assert (where / "paired.tex").read_text().count("\\begin{tabular}") == 2  # vs CoT, vs GRPO
        for name, n_tables in (("main", 2), ("paired", 2)):  # main + lucky share / tokens; vs CoT, vs GRPO
            page = (where / f"{name}.html").read_text()
            assert page.startswith("<!DOCTYPE html>") and page.count("<table") == n_tables, name
    assert not list(results.rglob(".*.tmp*"))


def test_summary_holds_the_inputs_intervals_and_split_averages(full):
    results, _ = full
    s = pd.read_csv(results / BACKBONE / "summary.csv").set_index(["method", "benchmark", "split", "metric"])
    for m in METHODS:
        for b, split in BENCHMARKS.items():
            correct = counts(PASS1[m][b])
            assert s.value[(m, b, split, "pass@1")] == pytest.approx(PASS1[m][b])
            assert s.value[(m, b, split, f"pass@{K}")] == pytest.approx(pass_at_counts(correct, K))
            low, high = s.ci_low[(m, b, split, "pass@1")], s.ci_high[(m, b, split, "pass@1")]
            assert low < PASS1[m][b] < high and high - low < 0.5
            assert s.n_seeds[(m, b, split, "pass@1")] == 1
        assert s.value[(m, plots.AVERAGE, "id", "pass@1")] == pytest.approx((PASS1[m]["synthetic_test_id"]
                                                                              + PASS1[m]["gsm8k"]) / 2)
        assert s.value[(m, plots.AVERAGE, "ood", "mean_tokens")] == pytest.approx(TOKENS[m] + 10)
        # constant tokens per problem: a zero-width interval
        assert s.ci_low[(m, "gsm8k", "id", "mean_tokens")] == s.ci_high[(m, "gsm8k", "id", "mean_tokens")]
        # the ID average's interval is narrower than either benchmark's (two independent halves)
        avg = s.ci_high[(m, plots.AVERAGE, "id", "pass@1")] - s.ci_low[(m, plots.AVERAGE, "id", "pass@1")]
        assert avg < max(s.ci_high[(m, b, "id", "pass@1")] - s.ci_low[(m, b, "id", "pass@1")]
                         for b in ("synthetic_test_id", "gsm8k"))
        # lucky share: lucky / correct, pooled over problems, with its interval
        correct = counts(PASS1[m]["synthetic_test_id"])
        want = sum(c >= 3 for c in correct.values()) / sum(correct.values())
        assert s.value[(m, "synthetic_test_id", "id", "lucky_share")] == pytest.approx(want)
        assert (m, "gsm8k", "id", "lucky_share") not in s.index
    # ...and the table shows it, with its interval
    md = (results / "figures" / BACKBONE / "tables" / "main.md").read_text()
    row = md_row(md, "TARPO", "synthetic_test_id")
    lucky = counts(PASS1["tarpo"]["synthetic_test_id"])
    assert row[2].startswith(f"{100 * sum(c >= 3 for c in lucky.values()) / sum(lucky.values()):.1f} [")


def test_best_is_bold_only_where_it_beats_every_other_method(full3):
    results, out = full3
    header, rows = md_table(out / BACKBONE / "tables" / "main.md")
    ids = [b for b, s in BENCHMARKS.items() if s == "id"]
    # an average column only for ID (two benchmarks); OOD has one, whose average would repeat it
    expected_cols = ["Method"] + [f"{b} Pass@{j}" for b in BENCHMARKS for j in (1, K)] + \
        [f"ID avg Pass@{j}" for j in (1, K)]
    assert header == expected_cols
    assert [r[0] for r in rows] == [plots.method_label(m) for m in METHODS]
    for row, m in zip(rows, METHODS):
        c = {b: counts(PASS1[m][b]) for b in BENCHMARKS}
        want = [100 * pass_at_counts(c[b], j) for b in BENCHMARKS for j in (1, K)]
        want += [100 * np.mean([pass_at_counts(c[b], j) for b in ids]) for j in (1, K)]
        assert [number(cell) for cell in row[1:]] == pytest.approx(want, abs=0.05)
        assert all(half_width(cell) > 0 for cell in row[1:])  # every value carries its interval
    paired = pd.read_csv(results / BACKBONE / "paired.csv")
    best = paired[paired.comparison == "best_vs_other"]
    for col in range(1, len(header)):
        bold = [r[col].startswith("**") for r in rows]
        group, metric = header[col].rsplit(" ", 1)
        bench = {"ID avg": plots.AVERAGE, "OOD avg": plots.AVERAGE}.get(group, group)
        split = {"ID avg": "id", "OOD avg": "ood"}.get(group, BENCHMARKS.get(group))
        test = best[(best.benchmark == bench) & (best.split == split) & (best.metric == metric.lower())]
        assert len(test) == len(METHODS) - 1 and test.method.nunique() == 1, header[col]  # the top vs each other
        top = plots.method_label(test.method.iloc[0])
        beats_all = bool(test.significant.all() and (test.delta > 0).all())
        assert bold == [beats_all and r[0] == top for r in rows], header[col]
    # by hand: TARPO 45% vs HRPO 22% on synthetic_test_ood is a clear win; 55% vs 52% on synthetic_test_id is not
    assert rows[METHODS.index("tarpo")][header.index("synthetic_test_ood Pass@1")].startswith("**45.0 ± ")
    assert not any(r[header.index("synthetic_test_id Pass@1")].startswith("**") for r in rows)
    tex = (out / BACKBONE / "tables" / "main.tex").read_text()
    assert "\\textbf{45.0}" in tex


def test_one_seed_establishes_no_difference(full):
    results, out = full
    paired = pd.read_csv(results / BACKBONE / "paired.csv")
    assert not paired.significant.any() and set(paired.n_seeds) == {1}
    assert (paired.p_value[paired.comparison == "vs_cot"] < 0.001).any()  # small p-values, still not established
    for table in ("main", "paired"):
        text = (out / BACKBONE / "tables" / f"{table}.md").read_text()
        assert not re.search(r"\| +\*\*", text), table  # no bold cell


def test_paired_comparisons_against_cot_and_grpo(full3):
    results, out = full3
    paired = pd.read_csv(results / BACKBONE / "paired.csv")
    vs_cot = paired[paired.comparison == "vs_cot"].set_index(["method", "benchmark", "split"])
    for m in ("grpo", "hrpo", "lepo", "tarpo"):
        for b, split in BENCHMARKS.items():
            row = vs_cot.loc[(m, b, split)]
            assert row.delta == pytest.approx(PASS1[m][b] - PASS1["cot"][b])
            assert row.ci_low <= row.delta <= row.ci_high and 0 <= row.p_value <= row.p_holm <= 1
            assert row.significant == (row.p_holm < 0.05)  # Holm-adjusted over the page's family
            assert row.n_problems == N_PROBLEMS and row.n_seeds == len(SEEDS) and row.seed_sd == pytest.approx(0, abs=1e-12)
        avg = vs_cot.loc[(m, plots.AVERAGE, "id")]
        assert avg.delta == pytest.approx(np.mean([PASS1[m][b] - PASS1["cot"][b] for b in ("synthetic_test_id", "gsm8k")]))
    assert vs_cot.loc[("tarpo", "synthetic_test_ood", "ood")].significant  # +35 points
    vs_grpo = paired[paired.comparison == "vs_grpo"]
    assert set(vs_grpo.method) == {"hrpo", "lepo", "tarpo"}  # CoT - GRPO would repeat GRPO - CoT
    header, rows = md_table(out / BACKBONE / "tables" / "paired.md")
    assert header == ["Method", "synthetic_test_id", "gsm8k", "synthetic_test_ood", "ID avg"]
    tarpo = rows[[r[0] for r in rows].index("TARPO")]
    assert tarpo[3].startswith("**+35.0 [") and "p<0.001" in tarpo[3]


def test_precision_is_reported_per_benchmark(full):
    _, out = full
    md = (out / BACKBONE / "tables" / "main.md").read_text()
    assert f"synthetic_test_id: {N_PROBLEMS} problems x {K} samples x 1 seed; Pass@1 interval ±" in md
    assert "paired difference to CoT ±" in md


def test_several_seeds_widen_intervals_and_pair_by_seed(tmp_path):
    results = make_results(tmp_path / "results", seeds=(0, 1, 2), spread=0.04)
    out = results / "figures"
    plots.summarise(make_config(seeds=(0, 1, 2)), results, out)
    s = pd.read_csv(results / BACKBONE / "summary.csv").set_index(["method", "benchmark", "split", "metric"])
    key = ("tarpo", "synthetic_test_id", "id", "pass@1")
    assert s.n_seeds[key] == 3 and s.value[key] == pytest.approx(PASS1["tarpo"]["synthetic_test_id"])
    paired = pd.read_csv(results / BACKBONE / "paired.csv")
    assert set(paired.n_seeds) == {3}
    for name in plots.FIGURES:
        assert (out / BACKBONE / f"{name}.png").stat().st_size > 10_000
    one = make_results(tmp_path / "one")
    plots.summarise(make_config(), one, one / "figures")
    s1 = pd.read_csv(one / BACKBONE / "summary.csv").set_index(["method", "benchmark", "split", "metric"])
    # seeds that disagree (Pass@1 51%, 55%, 59%) add their spread to the interval
    assert s.ci_high[key] - s.ci_low[key] > s1.ci_high[key] - s1.ci_low[key]
    assert "3 seeds" in (out / BACKBONE / "tables" / "main.md").read_text()


def test_soft_ratio_by_position_is_the_hand_computed_one(full):
    soft, steps = plots.soft_by_position(TARPO_SAMPLES)
    assert soft.tolist() == HAND_SOFT and steps.tolist() == HAND_STEPS
    # through the job: every TARPO samples file holds the crafted samples, pooled per split
    _, out = full
    pos = pd.read_csv(out / BACKBONE / "soft_position.csv")
    tarpo_id = pos[(pos.method == "tarpo") & (pos.split == "id")].sort_values("bin")
    assert tarpo_id.soft_steps.tolist() == [2 * s for s in HAND_SOFT]  # two ID benchmarks
    assert tarpo_id.soft_ratio.tolist() == pytest.approx([a / b for a, b in zip(HAND_SOFT, HAND_STEPS)])
    assert tarpo_id.soft_ratio.tolist()[3] == 0.5 and tarpo_id.soft_ratio.tolist()[1] == 1.0
    assert (tarpo_id.ci_low <= tarpo_id.soft_ratio).all() and (tarpo_id.soft_ratio <= tarpo_id.ci_high).all()
    assert tarpo_id.ci_low.tolist()[1] == 1.0  # every step of bin 1 soft: no uncertainty left
    lepo = pos[pos.method == "lepo"]
    # six thinking steps, all soft (the answer step is not counted): bins 0, 2, 4, 5, 7, 9; the rest empty (NaN)
    assert lepo.groupby("split").thinking_steps.sum().tolist() == [6 * 2, 6]
    assert set(lepo.soft_ratio.dropna()) == {1.0} and lepo.soft_ratio.isna().sum() == 2 * 4
    assert set(pos.method) == {"tarpo", "lepo"}


def test_position_bins_cover_every_step_once():
    for n in range(1, 40):
        soft, steps = plots.soft_by_position([{"n_thinking": n, "soft": [1] * n}])
        assert steps.sum() == n and soft.sum() == n
        if n >= 10:
            assert (steps >= 1).all()  # no empty bin once a sample has 10 steps


def test_missing_methods_and_benchmarks_degrade_gracefully(tmp_path, capsys):
    # TARPO never trained or evaluated, HRPO trained but evaluated on one benchmark only, LEPO never trained
    results = make_results(tmp_path / "results", methods=("cot", "grpo", "lepo"))
    make_results(tmp_path / "results", methods=("hrpo",), benchmarks=("synthetic_test_id",))
    shutil.rmtree(results / BACKBONE / "lepo" / "seed0" / "checkpoint")
    out = results / "figures"
    plots.summarise(make_config(), results, out)
    for name in plots.FIGURES:
        assert (out / BACKBONE / f"{name}.png").stat().st_size > 5_000
    header, rows = md_table(out / BACKBONE / "tables" / "main.md")
    assert [r[0] for r in rows] == ["CoT", "GRPO", "HRPO", "LEPO"]
    hrpo = rows[2]
    assert number(hrpo[header.index("synthetic_test_id Pass@1")]) == 52.0
    assert hrpo[header.index("gsm8k Pass@1")] == plots.MISSING
    assert hrpo[header.index("ID avg Pass@1")] == plots.MISSING  # never an average over fewer benchmarks
    md = (out / BACKBONE / "tables" / "main.md").read_text()
    assert "TARPO: no evaluation results yet" in md and "HRPO: no result on gsm8k, synthetic_test_ood (so no average" in md
    assert pd.read_csv(out / BACKBONE / "soft_position.csv").method.unique().tolist() == ["lepo"]
    assert "no training metrics" in capsys.readouterr().out


def test_results_without_per_problem_counts_get_no_interval_and_no_bold(tmp_path):
    results = make_results(tmp_path / "results")
    for path in results.rglob("*.json"):  # as written before the statistics existed
        metrics = json.loads(path.read_text())
        for key in ("correct_per_problem", "tokens_per_problem", "lucky_per_problem"):
            metrics.pop(key, None)
        path.write_text(json.dumps(metrics))
    out = results / "figures"
    plots.summarise(make_config(), results, out)
    header, rows = md_table(out / BACKBONE / "tables" / "main.md")
    assert number(rows[METHODS.index("tarpo")][1]) == 55.0 and " ± " not in rows[0][1]
    assert not any(cell.startswith("**") for r in rows for cell in r)
    assert pd.read_csv(results / BACKBONE / "paired.csv").empty


def test_nothing_at_all_still_writes_every_output(tmp_path):
    out = tmp_path / "figures"
    plots.summarise(make_config(), tmp_path / "results", out)
    for name in plots.FIGURES:
        assert (out / BACKBONE / f"{name}.png").exists()
    for fmt in plots.TABLE_FORMATS:
        assert (out / BACKBONE / "tables" / f"main.{fmt}").exists() and (out / "tables" / f"main.{fmt}").exists()
    assert "No evaluation results" in (out / BACKBONE / "tables" / "main.md").read_text()
    assert (out / "tables" / "paired.md").exists()


def test_combined_table_groups_backbones(tmp_path):
    results = make_results(tmp_path / "results", seeds=SEEDS)
    cfg = make_config(seeds=SEEDS)
    plots.summarise_backbone(cfg, results, tmp_path / "figures", BACKBONE)
    (results / "big").mkdir()
    for name in ("summary", "paired"):
        other = pd.read_csv(results / BACKBONE / f"{name}.csv")
        other["backbone"] = "big"
        other.to_csv(results / "big" / f"{name}.csv", index=False)
    cfg.backbones["big"] = cfg.backbones[BACKBONE]
    plots.combined_table(cfg, results, tmp_path / "figures")
    header, rows = md_table(tmp_path / "figures" / "tables" / "main.md")
    assert header[:2] == ["Backbone", "Method"] and [r[0] for r in rows] == [BACKBONE] * 5 + ["big"] * 5
    col = header.index("synthetic_test_ood Pass@1")
    # best is per backbone: TARPO in both blocks
    assert [r[col].startswith("**") for r in rows] == [m == "tarpo" for m in METHODS] * 2
    assert (tmp_path / "figures" / "tables" / "main.tex").read_text().count("\\midrule") == 2
    assert (tmp_path / "figures" / "tables" / "paired.md").read_text().count("**big: method − CoT") == 1


def test_results_page(full, tmp_path):
    results, _ = full
    page = tmp_path / "docs" / "results.md"
    text = tables.results_page(make_config(), results, page)
    assert page.read_text() == text
    for heading in ("# Results: config `fake`", "## Main results", "## Paired comparisons",
                    "## Lucky share, tokens, soft ratio / gate", "## Precision"):
        assert heading in text, heading
    assert "Linux-test, 2 CPUs, torch 2.x, device cpu (15 evaluations, 2026-01-02)" in text
    assert "### tiny: method − CoT" in text and "### tiny: method − GRPO" in text
    assert md_row(text, "synthetic_test_id")[:5] == ["synthetic_test_id", "ID", str(N_PROBLEMS), str(K), "1"]
    assert "seeds: 0" in text and "This page was generated on" in text
    tarpo = md_row(text, "TARPO", "synthetic_test_id")
    assert tarpo[-1] == "soft 0.300" and " [" in tarpo[2]  # lucky share with its interval
    assert tables.ONE_SEED_NOTE in text and "### Per seed" not in text
    assert "has one seed, so it cannot say by how much" in text


def test_results_page_with_seeds_shows_their_spread_and_the_variance_components(tmp_path):
    # seed i's Pass@1 is off by 2 (i - 1) points for every method: per-seed values 2 points apart
    results = make_results(tmp_path / "results", seeds=SEEDS, spread=0.02)
    cfg = make_config(seeds=SEEDS)
    plots.summarise(cfg, results, results / "figures")
    text = tables.results_page(cfg, results, tmp_path / "results.md")
    assert tables.ONE_SEED_NOTE not in text
    row = md_row(text, "TARPO", "synthetic_test_ood")
    want = [100 * pass_at_counts(counts(PASS1["tarpo"]["synthetic_test_ood"] + 0.02 * (s - 1)), 1) for s in SEEDS]
    assert [float(c) for c in row[2:5]] == pytest.approx(want, abs=0.05)
    assert float(row[5]) == pytest.approx(np.std(want, ddof=1), abs=0.05)
    comps = md_row(text, "synthetic_test_ood", "TARPO − GRPO")
    assert comps[2] == f"3 x {N_PROBLEMS} x {K}"
    # the same shift for every method: the paired difference has no seed component
    assert float(comps[3]) == pytest.approx(0.0, abs=0.05)
    assert "an sd of 2.0 points of Pass@1" in text


def test_cli_summarises_one_backbone(tmp_path):
    from tarpo.cli import main

    results = make_results(tmp_path / "results", methods=("cot", "tarpo"))
    cfg = {"name": "fake", "methods": {"tarpo": {}}, "baselines": ["cot"],
           "evaluate": {"benchmarks": list(BENCHMARKS), "k": K}}
    args = ["summarise", "--config-json", json.dumps(cfg), "--results", str(results)]
    out = ["--out", str(tmp_path / "figures")]
    assert main(args + out + ["--backbone", BACKBONE]) == 0
    assert (results / BACKBONE / "summary.csv").exists() and (tmp_path / "figures" / BACKBONE / "pass_at_k.png").exists()
    assert not (tmp_path / "figures" / "tables").exists()  # one backbone: no all-backbone table
    assert main(args + out + ["--combined"]) == 0
    assert (tmp_path / "figures" / "tables" / "main.md").exists()
    assert main(args + ["--page", str(tmp_path / "page.md")]) == 0
    assert (tmp_path / "page.md").read_text().startswith("# Results: config `fake`")
    assert main(args + out + ["--backbone", "nope"]) == 2
    assert main(args) == 2  # neither --out nor --page


def test_workflow_declares_every_figure_with_a_caption():
    rules = (REPO / "workflow" / "rules" / "figures.smk").read_text()
    for name in plots.FIGURES:
        assert f'"{name}"' in rules or f"{name}.png" in rules, name
        caption = REPO / "workflow" / "report" / f"{name}.rst"
        assert caption.exists() and caption.read_text().strip(), caption
    assert (REPO / "workflow" / "report" / "workflow.rst").exists()
    assert (REPO / "workflow" / "report" / "paired.rst").exists()
    assert "rule results_page" in rules
    assert re.search(r'include:\s*"workflow/rules/figures.smk"', (REPO / "Snakefile").read_text())


# ---------------------------------------------------------------- what the figures show


def figure_inputs(results: Path):
    cfg = make_config()
    return cfg, plots.Results(cfg, results, BACKBONE), plots.read_summary(results / BACKBONE / "summary.csv")


def is_png(path: Path) -> bool:
    import matplotlib.image

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and min(matplotlib.image.imread(path).shape[:2]) > 100


def marker_positions(ax) -> dict[str, tuple[float, float]]:
    """Method label -> where its token-efficiency marker lands on the page (display coordinates)."""
    out = {}
    for container in ax.containers:
        line = container.lines[0]
        out[container.get_label()] = tuple(line.get_transform().transform(line.get_xydata())[0])
    return out


def test_token_efficiency_names_methods_in_a_legend_not_beside_the_points(full, tmp_path):
    results, _ = full
    cfg, res, summary = figure_inputs(results)
    fig = plots.fig_token_efficiency(res, cfg, summary, tmp_path / "te.png")
    assert is_png(tmp_path / "te.png")
    labels = [plots.method_label(m) for m in METHODS]
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == labels
    avg = summary[summary.benchmark == plots.AVERAGE].set_index(["method", "split", "metric"])
    for ax, split in zip(fig.axes, plots.SPLITS):
        # no free-floating text naming a method: each point is identified by its marker and colour only
        assert not [t.get_text() for t in ax.texts if any(label in t.get_text() for label in labels)]
        assert sorted(marker_positions(ax)) == sorted(labels)  # one marker per method
        # both axes from 0, up to past every interval
        assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
        assert ax.get_ylim()[1] >= 100 * max(avg.ci_high[(m, split, "pass@1")] for m in METHODS)
        assert ax.get_xlim()[1] >= max(avg.ci_high[(m, split, "mean_tokens")] for m in METHODS)
    # marker i of the legend is the marker and colour of the method's point
    handles = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    for container in fig.axes[0].containers:
        line, handle = container.lines[0], handles[container.get_label()]
        assert line.get_marker() == handle.get_marker() and line.get_color() == handle.get_color()


def test_token_efficiency_keeps_equal_points_visible(full, tmp_path):
    results, _ = full
    cfg, res, summary = figure_inputs(results)
    # HRPO exactly on GRPO's point (both axes, both splits); CoT far from everyone
    same = summary.copy()
    for metric in ("pass@1", "mean_tokens"):
        for split in plots.SPLITS:
            rows = (same.benchmark == plots.AVERAGE) & (same.split == split) & (same.metric == metric)
            grpo = same[rows & (same.method == "grpo")][["value", "ci_low", "ci_high"]].to_numpy()
            same.loc[rows & (same.method == "hrpo"), ["value", "ci_low", "ci_high"]] = grpo
    fig = plots.fig_token_efficiency(res, cfg, same, tmp_path / "te.png")
    for ax in fig.axes:
        pos = marker_positions(ax)
        gap = abs(pos["GRPO"][0] - pos["HRPO"][0])
        assert gap >= 0.9 * plots.DODGE_PT * fig.dpi / 72 and pos["GRPO"][1] == pos["HRPO"][1]
        cot = next(c for c in ax.containers if c.get_label() == "CoT").lines[0]
        assert pos["CoT"] == pytest.approx(tuple(ax.transData.transform(cot.get_xydata())[0]))  # not moved


def test_dodges_spread_only_markers_that_cover_each_other():
    assert plots._dodges([(10, 50), (10, 50), (40, 10)], 100, 100) == [-plots.DODGE_PT / 2, plots.DODGE_PT / 2, 0]
    assert plots._dodges([(10, 50), (30, 50), (50, 50)], 100, 100) == [0, 0, 0]
    three = plots._dodges([(10, 50), (11, 51), (12, 50)], 100, 100)
    assert three == [-plots.DODGE_PT, 0, plots.DODGE_PT]


def test_shared_y_range_unless_the_panels_differ_tenfold():
    assert plots._tops([60.0, 40.0]) == ([60.0, 60.0], True)
    assert plots._tops([90.0, 9.0]) == ([90.0, 9.0], False)
    assert plots._percent_top(25.0) == pytest.approx(28.75) and plots._percent_top(95.0) == 101.0
    assert plots._percent_top(0.5) == 5.0


def test_pass_at_k_axes_start_at_zero_and_hold_the_intervals(full, tmp_path):
    results, _ = full
    cfg, res, summary = figure_inputs(results)
    fig = plots.fig_pass_at_k(res, cfg, summary, tmp_path / "pk.png")
    assert is_png(tmp_path / "pk.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(BENCHMARKS)
    for ax, bench in zip(panels, res.benchmarks):
        assert ax.get_ylim()[0] == 0
        part = summary[(summary.benchmark == bench) & summary.metric.str.startswith("pass@")]
        assert ax.get_ylim()[1] >= 100 * part.ci_high.max()
        assert len(ax.containers) == len(METHODS)  # one line with error bars per method
        for container in ax.containers:  # bars are the summary's intervals
            segments = container.lines[2][0].get_segments()
            method = next(m for m in METHODS if plots.method_label(m) == container.get_label())
            rows = part[part.method == method].assign(k=lambda f: f.metric.str[5:].astype(int)).sort_values("k")
            assert [s[0][1] for s in segments] == pytest.approx(list(100 * rows.ci_low))
            assert [s[1][1] for s in segments] == pytest.approx(list(100 * rows.ci_high))
    # comparable benchmarks share one range ...
    assert len({ax.get_ylim() for ax in panels}) == 1
    assert plots.OWN_SCALES not in fig.legends[0].get_title().get_text()
    # ... a benchmark ten times lower gets its own, still from 0 and holding its intervals
    low = summary.copy()
    hard = (low.benchmark == "synthetic_test_ood") & low.metric.str.startswith("pass@")
    low.loc[hard, ["value", "ci_low", "ci_high"]] *= 0.1
    fig = plots.fig_pass_at_k(res, cfg, low, tmp_path / "pk.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    ood = panels[res.benchmarks.index("synthetic_test_ood")]
    assert ood.get_ylim()[0] == 0 and 100 * low[hard].ci_high.max() <= ood.get_ylim()[1] < panels[0].get_ylim()[1] / 3
    assert plots.OWN_SCALES in fig.legends[0].get_title().get_text()


def test_soft_position_axes_start_at_zero_and_hold_the_band(full, tmp_path):
    results, out = full
    cfg, res, _ = figure_inputs(results)
    positions = pd.read_csv(out / BACKBONE / "soft_position.csv")
    fig = plots.fig_soft_position(res, cfg, positions, tmp_path / "sp.png")
    assert is_png(tmp_path / "sp.png")
    for ax, split in zip(fig.axes, plots.SPLITS):
        tarpo = positions[(positions.method == "tarpo") & (positions.split == split)]
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= min(tarpo.ci_high.max(), 1.05)


def test_a_malformed_metrics_line_is_an_error_naming_file_and_line(tmp_path):
    from tarpo.io import BadInputError

    results = make_results(tmp_path / "results", methods=("cot", "grpo"), benchmarks=("synthetic_test_id",))
    metrics = results / BACKBONE / "grpo" / "seed0" / "checkpoint" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + "{not json\n")
    with pytest.raises(BadInputError, match=r"metrics\.jsonl:31: not valid JSON"):
        plots.Results(make_config(methods=("cot", "grpo"), benchmarks=("synthetic_test_id",)), results, BACKBONE)


def test_report_shows_the_tables_as_html():
    rules = (REPO / "workflow" / "rules" / "figures.smk").read_text()
    tables_rule = rules.split("rule tables:")[1].split("\nrule ")[0]
    for name in ("main", "paired"):
        assert re.search(r'report\(\s*f"\{FIGURES_DIR\}/tables/' + name + r'\.html",\s*caption=', tables_rule), name
    assert not re.search(r'report\(\s*f"[^"]*\.(csv|md|tex)"', rules)  # no raw table file as a report entry
    summarise_rule = rules.split("rule summarise:")[1].split("\nrule ")[0]
    assert summarise_rule.count('".html"') == 2  # main.html, paired.html per backbone
