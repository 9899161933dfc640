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

from tarpo import plots
from tarpo.config import load_config

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "tiny"
METHODS = ("cot", "grpo", "hrpo", "lepo", "tarpo")
# benchmark -> split: two ID benchmarks (so the ID average is a real mean) and one OOD
BENCHMARKS = {"synthetic_test_id": "id", "gsm8k": "id", "synthetic_test_ood": "ood"}
K = 4
# Pass@1 per method and benchmark; pass@j = 1 - (1 - pass@1)^j (any increasing curve will do)
PASS1 = {
    "cot": {"synthetic_test_id": 0.30, "gsm8k": 0.20, "synthetic_test_ood": 0.10},
    "grpo": {"synthetic_test_id": 0.50, "gsm8k": 0.40, "synthetic_test_ood": 0.20},
    "hrpo": {"synthetic_test_id": 0.52, "gsm8k": 0.41, "synthetic_test_ood": 0.22},
    "lepo": {"synthetic_test_id": 0.45, "gsm8k": 0.43, "synthetic_test_ood": 0.18},
    "tarpo": {"synthetic_test_id": 0.55, "gsm8k": 0.42, "synthetic_test_ood": 0.25},
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


def pass_at(p1: float, j: int) -> float:
    return 1 - (1 - p1) ** j


def make_config(methods=METHODS, benchmarks=tuple(BENCHMARKS)):
    return load_config({
        "name": "fake",
        "backbones": {BACKBONE: {"kind": "embedded", "warm_start_dataset": "synthetic"}},
        "methods": {m: {} for m in methods if m != "cot"},
        "baselines": ["cot"] if "cot" in methods else [],
        "evaluate": {"benchmarks": list(benchmarks), "k": K},
    })


def make_results(root: Path, methods=METHODS, benchmarks=tuple(BENCHMARKS), steps: int = 30) -> Path:
    """Fake results/{backbone}/{method}/{eval,checkpoint} for `methods` x `benchmarks`."""
    rng = np.random.default_rng(0)
    for m in methods:
        base = root / BACKBONE / m
        for b in benchmarks:
            p1 = PASS1[m][b]
            metrics = {"benchmark": b, "method": m, "backbone": BACKBONE, "kind": "math",
                       "distribution": BENCHMARKS[b], "ood": BENCHMARKS[b] == "ood", "n_problems": 8, "k": K,
                       "n_samples": 8 * K, "mean_tokens": TOKENS[m] + (10.0 if BENCHMARKS[b] == "ood" else 0.0),
                       "mean_thinking_tokens": TOKENS[m] - 5, **{f"pass@{j}": pass_at(p1, j) for j in (1, 2, 4)}}
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


def md_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the pipe table in a markdown file."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def number(cell: str) -> float:
    return float(cell.strip("*")) if cell != plots.MISSING else math.nan


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every method on every benchmark, summarised once for the tests below."""
    root = tmp_path_factory.mktemp("full")
    results, out = make_results(root / "results"), root / "results" / "figures"
    plots.summarise(make_config(), results, out)
    return results, out


def test_every_output_is_written_and_parses(full):
    results, out = full
    summary = pd.read_csv(results / BACKBONE / "summary.csv")
    assert list(summary.columns) == ["backbone", "method", "benchmark", "split", "metric", "value"]
    assert set(summary.method) == set(METHODS)
    for name in plots.FIGURES:
        png = out / BACKBONE / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    for where in (out / BACKBONE / "tables", out / "tables"):
        table = pd.read_csv(where / "main.csv")
        assert list(table.method) == list(METHODS)
        tex = (where / "main.tex").read_text()
        assert tex.count("\\begin{tabular}") == 1 and "\\bottomrule" in tex and "synthetic\\_test\\_id" in tex
        assert tex.count("\\\\") == 2 + len(METHODS)  # benchmark row, metric row, one row per method
    assert not list(results.rglob(".*.tmp*"))


def test_summary_holds_the_inputs_and_split_averages(full):
    results, _ = full
    s = pd.read_csv(results / BACKBONE / "summary.csv").set_index(["method", "benchmark", "split", "metric"]).value
    for m in METHODS:
        for b, split in BENCHMARKS.items():
            assert s[(m, b, split, "pass@1")] == pytest.approx(PASS1[m][b])
            assert s[(m, b, split, f"pass@{K}")] == pytest.approx(pass_at(PASS1[m][b], K))
        assert s[(m, plots.AVERAGE, "id", "pass@1")] == pytest.approx((PASS1[m]["synthetic_test_id"]
                                                                        + PASS1[m]["gsm8k"]) / 2)
        assert s[(m, plots.AVERAGE, "ood", "mean_tokens")] == pytest.approx(TOKENS[m] + 10)


def test_markdown_table_numbers_equal_the_inputs_and_best_is_bold(full):
    _, out = full
    header, rows = md_table(out / BACKBONE / "tables" / "main.md")
    ids = [b for b, s in BENCHMARKS.items() if s == "id"]
    expected_cols = ["Method"] + [f"{b} Pass@{j}" for b in BENCHMARKS for j in (1, K)] + \
        [f"{g} avg Pass@{j}" for g in ("ID", "OOD") for j in (1, K)]
    assert header == expected_cols
    assert [r[0] for r in rows] == [plots.METHOD_LABEL[m] for m in METHODS]
    for row, m in zip(rows, METHODS):
        want = [100 * pass_at(PASS1[m][b], j) for b in BENCHMARKS for j in (1, K)]
        want += [100 * np.mean([pass_at(PASS1[m][b], j) for b in ids]) for j in (1, K)]
        want += [100 * pass_at(PASS1[m]["synthetic_test_ood"], j) for j in (1, K)]
        assert [number(c) for c in row[1:]] == pytest.approx(want, abs=0.005)
    for col in range(1, len(header)):
        values = [number(r[col]) for r in rows]
        bold = [r[col].startswith("**") and r[col].endswith("**") for r in rows]
        assert bold == [v == max(values) for v in values], header[col]
    # by hand: TARPO is best on synthetic_test_id Pass@1 (55.00), LEPO on gsm8k Pass@1 (43.00)
    assert rows[METHODS.index("tarpo")][1] == "**55.00**" and rows[METHODS.index("lepo")][3] == "**43.00**"
    # ID avg Pass@1: HRPO (0.52 + 0.41) / 2 = 46.50 and TARPO (0.55 + 0.42) / 2 = 48.50 (best)
    id_avg = header.index("ID avg Pass@1")
    assert rows[METHODS.index("hrpo")][id_avg] == "46.50" and rows[METHODS.index("tarpo")][id_avg] == "**48.50**"
    tex = (out / BACKBONE / "tables" / "main.tex").read_text()
    assert "TARPO & \\textbf{55.00}" in tex


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
    shutil.rmtree(results / BACKBONE / "lepo" / "checkpoint")
    out = results / "figures"
    plots.summarise(make_config(), results, out)
    for name in plots.FIGURES:
        assert (out / BACKBONE / f"{name}.png").stat().st_size > 5_000
    header, rows = md_table(out / BACKBONE / "tables" / "main.md")
    assert [r[0] for r in rows] == ["CoT", "GRPO", "HRPO", "LEPO"]
    hrpo = rows[2]
    assert hrpo[header.index("synthetic_test_id Pass@1")] == "**52.00**"  # best once TARPO is missing
    assert hrpo[header.index("gsm8k Pass@1")] == plots.MISSING
    assert hrpo[header.index("ID avg Pass@1")] == plots.MISSING  # never an average over fewer benchmarks
    md = (out / BACKBONE / "tables" / "main.md").read_text()
    assert "TARPO: no evaluation results yet" in md and "HRPO: no result on gsm8k, synthetic_test_ood (so no average" in md
    assert pd.read_csv(out / BACKBONE / "soft_position.csv").method.unique().tolist() == ["lepo"]
    assert "no training metrics" in capsys.readouterr().out


def test_nothing_at_all_still_writes_every_output(tmp_path):
    out = tmp_path / "figures"
    plots.summarise(make_config(), tmp_path / "results", out)
    for name in plots.FIGURES:
        assert (out / BACKBONE / f"{name}.png").exists()
    for fmt in plots.TABLE_FORMATS:
        assert (out / BACKBONE / "tables" / f"main.{fmt}").exists() and (out / "tables" / f"main.{fmt}").exists()
    assert "No evaluation results" in (out / BACKBONE / "tables" / "main.md").read_text()


def test_ties_are_all_bold_and_a_column_without_a_loser_has_no_best():
    index = pd.MultiIndex.from_tuples([("a", "cot"), ("a", "grpo"), ("a", "tarpo"), ("b", "cot")],
                                      names=["backbone", "method"])
    cols = pd.MultiIndex.from_tuples([("x", "Pass@1"), ("y", "Pass@1")], names=["group", "metric"])
    table = pd.DataFrame([[10.0, 5.0], [20.001, 5.0], [19.999, math.nan], [1.0, 3.0]], index=index, columns=cols)
    mask = plots.best_mask(table)
    assert mask[("x", "Pass@1")].tolist() == [False, True, True, False]  # 20.00 == 20.00 as shown; b has one row
    assert not mask[("y", "Pass@1")].any()  # all equal within a: nothing is best


def test_combined_table_groups_backbones(tmp_path):
    results = make_results(tmp_path / "results")
    cfg = make_config()
    plots.summarise_backbone(cfg, results, tmp_path / "figures", BACKBONE)
    other = pd.read_csv(results / BACKBONE / "summary.csv")
    other["backbone"] = "big"
    other.loc[other.metric.str.startswith("pass@"), "value"] *= 0.5
    (results / "big").mkdir()
    other.to_csv(results / "big" / "summary.csv", index=False)
    cfg.backbones["big"] = cfg.backbones[BACKBONE]
    plots.combined_table(cfg, results, tmp_path / "figures")
    header, rows = md_table(tmp_path / "figures" / "tables" / "main.md")
    assert header[:2] == ["Backbone", "Method"] and [r[0] for r in rows] == [BACKBONE] * 5 + ["big"] * 5
    col = header.index("synthetic_test_id Pass@1")
    # best is per backbone: TARPO in both blocks
    assert [r[col].startswith("**") for r in rows] == [m == "tarpo" for m in METHODS] * 2
    assert rows[9][col] == "**27.50**"
    assert (tmp_path / "figures" / "tables" / "main.tex").read_text().count("\\midrule") == 2


def test_cli_summarises_one_backbone(tmp_path):
    from tarpo.cli import main

    results = make_results(tmp_path / "results", methods=("cot", "tarpo"))
    cfg = {"name": "fake", "methods": {"tarpo": {}}, "baselines": ["cot"],
           "evaluate": {"benchmarks": list(BENCHMARKS), "k": K}}
    args = ["summarise", "--config-json", json.dumps(cfg), "--results", str(results), "--out",
            str(tmp_path / "figures")]
    assert main(args + ["--backbone", BACKBONE]) == 0
    assert (results / BACKBONE / "summary.csv").exists() and (tmp_path / "figures" / BACKBONE / "pass_at_k.png").exists()
    assert not (tmp_path / "figures" / "tables").exists()  # one backbone: no all-backbone table
    assert main(args + ["--combined"]) == 0
    assert (tmp_path / "figures" / "tables" / "main.md").exists()
    assert main(args + ["--backbone", "nope"]) == 2


def test_workflow_declares_every_figure_with_a_caption():
    rules = (REPO / "workflow" / "rules" / "figures.smk").read_text()
    for name in plots.FIGURES:
        assert f'"{name}"' in rules or f"{name}.png" in rules, name
        caption = REPO / "workflow" / "report" / f"{name}.rst"
        assert caption.exists() and caption.read_text().strip(), caption
    assert (REPO / "workflow" / "report" / "workflow.rst").exists()
    assert re.search(r'include:\s*"workflow/rules/figures.smk"', (REPO / "Snakefile").read_text())
