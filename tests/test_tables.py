"""`tarpo.tables`: the main and paired tables in Markdown (DataFrame.to_markdown), LaTeX (Styler.to_latex) and
HTML (Styler.to_html), from hand-made summary frames whose every number is known."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from tarpo import tables
from tarpo.summary import AVERAGE, PAIRED_COLUMNS, SUMMARY_COLUMNS

METHODS = ("cot", "grpo", "tarpo")
LABELS = {"cot": "CoT", "grpo": "GRPO", "tarpo": "TARPO"}
ONE_EACH = {"synthetic_test_id": "id", "synthetic_test_ood": "ood"}
TWO_EACH = {"synthetic_test_id": "id", "gsm8k": "id", "synthetic_test_ood": "ood", "math_500": "ood"}


def value(method: str, bench: str, metric: str) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) as fractions: distinct for every cell, an asymmetric interval."""
    base = 0.2 + 0.15 * METHODS.index(method) + 0.01 * len(bench) + (0.1 if metric == "pass@4" else 0.0)
    return base, base - 0.031, base + 0.047


def make_summary(benchmarks: dict[str, str], backbone: str = "tiny", best: tuple[str, str, str] | None = None):
    """Summary rows as `tarpo.summary.summary_and_paired` writes them: each benchmark, then each split's
    average (also for a split with one benchmark); `best` = (method, benchmark, metric) marked best."""
    rows = []
    for method in METHODS:
        for bench, split in [*benchmarks.items(), *[(AVERAGE, s) for s in dict.fromkeys(benchmarks.values())]]:
            for metric in ("pass@1", "pass@4"):
                v, lo, hi = value(method, bench, metric)
                rows.append((backbone, method, bench, split, metric, v, lo, hi, 1, best == (method, bench, metric),
                             float("nan")))
            if bench != AVERAGE:
                rows.append((backbone, method, bench, split, "mean_tokens", 40.0 + METHODS.index(method), 39.0,
                             41.5, 1, False, float("nan")))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def make_paired(benchmarks: dict[str, str], backbone: str = "tiny"):
    rows = []
    for baseline in ("cot", "grpo"):
        for method in METHODS:
            if method in (baseline, "cot"):
                continue
            for bench, split in [*benchmarks.items(), *[(AVERAGE, s) for s in dict.fromkeys(benchmarks.values())]]:
                rows.append({"backbone": backbone, "comparison": f"vs_{baseline}", "method": method,
                             "baseline": baseline, "benchmark": bench, "split": split, "metric": "pass@1",
                             "delta": 0.05, "ci_low": 0.01, "ci_high": 0.09, "p_value": 0.004, "p_holm": 0.02,
                             "significant": True, "n_problems": 100, "n_seeds": 3})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables_, lines = [], []
    for ln in [*text.splitlines(), ""]:
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
            assert set("".join(split[1])) <= set(":-"), split[1]
            assert all(len(row) == len(split[0]) for row in split)
            tables_.append((split[0], split[2:]))
            lines = []
    return tables_


class Cells(HTMLParser):
    """Rows of <th>/<td> texts and the cells' attributes, from an HTML page."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[tuple[str, dict[str, str]]]] = []
        self._cell: tuple[list[str], dict[str, str]] | None = None
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ([], {k: v or "" for k, v in attrs})
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell[0]).strip(), self._cell[1]))
            self._cell = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0].append(data)
        elif self._in_style:
            self.style += data


def parse_html(text: str) -> Cells:
    parser = Cells()
    parser.feed(text)
    return parser


def groups(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(tables.main_table(summary).value.columns.get_level_values("group")))


# ---------------------------------------------------------------- split averages


@pytest.mark.parametrize("benchmarks, averaged", [
    (ONE_EACH, []),
    ({"synthetic_test_id": "id", "gsm8k": "id", "synthetic_test_ood": "ood"}, ["ID avg"]),
    (TWO_EACH, ["ID avg", "OOD avg"]),
])
def test_split_averages_only_where_a_split_has_several_benchmarks(benchmarks, averaged, tmp_path):
    summary, paired = make_summary(benchmarks), make_paired(benchmarks)
    assert groups(summary) == [*benchmarks, *averaged]
    table = tables.main_table(summary)
    title = tables.main_title(summary, "Backbone tiny")
    assert ("avg = unweighted mean" in title) == bool(averaged)
    tables.write_main(table, tmp_path, title, [], summary)
    tables.write_paired(paired, ["tiny"], tmp_path)
    header, _ = md_tables((tmp_path / "main.md").read_text())[0]
    assert [h for h in header if " avg " in h] == [f"{g} Pass@{j}" for g in averaged for j in (1, 4)]
    csv = pd.read_csv(tmp_path / "main.csv")
    assert {c.split(" Pass@")[0] for c in csv.columns if " avg " in c} == set(averaged)
    tex = (tmp_path / "main.tex").read_text()
    assert all((f"{{{g}}}" in tex) == (g in averaged) for g in ("ID avg", "OOD avg"))
    html_heads = [text for row in parse_html((tmp_path / "main.html").read_text()).rows for text, _ in row]
    assert all((g in html_heads) == (g in averaged) for g in ("ID avg", "OOD avg"))
    for block in md_tables((tmp_path / "paired.md").read_text()):  # vs CoT, vs GRPO
        assert block[0] == ["Method", *benchmarks, *averaged]
    assert all((f"{g}" in (tmp_path / "paired.tex").read_text()) == (g in averaged) for g in ("ID avg", "OOD avg"))


# ---------------------------------------------------------------- Markdown


def test_markdown_table_parses_back_to_the_summary_values():
    summary = make_summary(TWO_EACH, best=("tarpo", "gsm8k", "pass@1"))
    text = tables.table_markdown(tables.main_table(summary), "Title", ["a note"])
    assert text.startswith("**Title**\n\n| Method") and text.rstrip().endswith("- a note")
    (header, rows), = md_tables(text)
    assert [r[0] for r in rows] == [LABELS[m] for m in METHODS]  # one row per method, in order
    assert len(header) == 1 + 2 * (len(TWO_EACH) + 2)
    s = summary.set_index(["method", "benchmark", "split", "metric"])
    for row, method in zip(rows, METHODS):
        for col, cell in zip(header[1:], row[1:]):
            group, metric = col.rsplit(" ", 1)
            bench, split = ((AVERAGE, {"ID avg": "id", "OOD avg": "ood"}[group]) if group.endswith(" avg")
                            else (group, TWO_EACH[group]))
            key = (method, bench, split, metric.lower())
            shown, half = cell.strip("*").split(" ± ")
            assert float(shown) == pytest.approx(100 * s.value[key], abs=0.05), (method, col)
            assert float(half) == pytest.approx(100 * (s.ci_high[key] - s.ci_low[key]) / 2, abs=0.05)
            assert cell.startswith("**") == (method == "tarpo" and col == "gsm8k Pass@1")


def test_markdown_missing_cells_and_two_backbones():
    summary = pd.concat([make_summary(ONE_EACH), make_summary(ONE_EACH, backbone="big")], ignore_index=True)
    summary = summary[~((summary.backbone == "big") & (summary.method == "grpo")
                        & (summary.benchmark == "synthetic_test_ood"))]
    (header, rows), = md_tables(tables.table_markdown(tables.main_table(summary, ["tiny", "big"]), "T"))
    assert header[:2] == ["Backbone", "Method"]
    assert [r[:2] for r in rows] == [[b, LABELS[m]] for b in ("tiny", "big") for m in METHODS]
    assert rows[4][header.index("synthetic_test_ood Pass@1")] == tables.MISSING
    assert rows[1][header.index("synthetic_test_ood Pass@1")] != tables.MISSING


def test_behaviour_and_precision_tables_are_pipe_tables():
    summary = make_summary(ONE_EACH)
    (header, rows), = md_tables(tables.behaviour_markdown(summary))
    assert header == ["Method", "Benchmark", "Lucky share (%)", "Mean tokens", "Soft ratio / gate"]
    assert rows[0] == ["CoT", "synthetic_test_id", tables.MISSING, "40.0 [39.0, 41.5]", tables.MISSING]
    precision = tables.precision_frame(summary, make_paired(ONE_EACH))
    (header, rows), = md_tables(tables.precision_markdown(precision))
    assert header[0] == "Benchmark" and [r[0] for r in rows] == list(ONE_EACH)


# ---------------------------------------------------------------- LaTeX


def test_latex_is_a_booktabs_tabular_with_spanning_benchmark_headers():
    summary = make_summary(TWO_EACH, best=("tarpo", "gsm8k", "pass@1"))
    tex = tables.table_latex(tables.main_table(summary), "Title_x", ["note"])
    assert tex.startswith("% Title_x\n% Requires \\usepackage{booktabs}")
    body = tex[tex.index("\\begin{tabular}"):]
    assert body.startswith("\\begin{tabular}{l" + "r" * 12 + "}")
    assert [body.count(r) for r in ("\\toprule", "\\midrule", "\\bottomrule")] == [1, 1, 1]
    assert "\\multicolumn{2}{c}{synthetic\\_test\\_id}" in body and "\\multicolumn{2}{c}{OOD avg}" in body
    lines = body.splitlines()
    rows = lines[lines.index("\\midrule") + 1:lines.index("\\bottomrule")]
    assert [r.split(" & ")[0] for r in rows] == [LABELS[m] for m in METHODS]
    v, lo, hi = value("tarpo", "gsm8k", "pass@1")
    cell = rows[2].split(" & ")[3]  # TARPO, gsm8k Pass@1
    assert cell == f"\\textbf{{{100 * v:.1f}}} {{\\scriptsize$\\pm$ {100 * (hi - lo) / 2:.1f}}}"
    assert rows[0].endswith("\\\\") and "\\textbf" not in rows[0]


def test_latex_separates_backbones_with_a_rule():
    summary = pd.concat([make_summary(ONE_EACH, backbone="qwen_1"), make_summary(ONE_EACH, backbone="big")],
                        ignore_index=True)
    tex = tables.table_latex(tables.main_table(summary, ["qwen_1", "big"]), "T")
    assert "Backbone & Method" in tex and tex.count("\\midrule") == 2
    lines = tex.splitlines()
    first = lines.index("\\midrule")
    rows = lines[first + 1:lines.index("\\bottomrule")]
    assert rows[len(METHODS)] == "\\midrule"
    names = [r.split(" & ")[0] for r in rows if r != "\\midrule"]
    assert names == ["qwen\\_1", "", "", "big", "", ""]  # escaped, once per block


def test_paired_latex_cells_and_escaping():
    tex = tables.paired_latex(make_paired(ONE_EACH), ["tiny"])
    assert tex.count("\\begin{tabular}") == 2 and "tiny: method - CoT & synthetic\\_test\\_id" in tex
    assert "\\textbf{$+5.0$ {\\scriptsize[$+1.0$, $+9.0$] $p=0.004$, Holm $0.020$}}" in tex


# ---------------------------------------------------------------- HTML (the report)


def test_html_shows_the_table_with_exact_intervals_and_bold_best():
    summary = make_summary(ONE_EACH, best=("tarpo", "synthetic_test_ood", "pass@4"))
    page = tables.table_html(tables.main_table(summary), "A <title>", ["note & more"], summary)
    assert page.startswith("<!DOCTYPE html>") and "A &lt;title&gt;" in page and "note &amp; more" in page
    cells = parse_html(page)
    body = [row for row in cells.rows if row and row[0][1].get("class", "").startswith("data")]
    main_rows = body[:len(METHODS)]
    assert [row[0][0] for row in main_rows] == [LABELS[m] for m in METHODS]
    v, lo, hi = value("cot", "synthetic_test_id", "pass@1")
    text, attrs = main_rows[0][1]
    assert text == f"{100 * v:.1f} ± {100 * (hi - lo) / 2:.1f}"
    assert attrs["title"] == f"95% interval [{100 * lo:.1f}, {100 * hi:.1f}]"
    bold = set(re.findall(r"#(T_main_row\d+_col\d+)[^{]*\{\s*font-weight: bold", cells.style))
    assert bold == {"T_main_row2_col4"}  # TARPO, synthetic_test_ood Pass@4
    assert any(row[0][0] == "CoT" and row[1][0] == "synthetic_test_id" for row in body[len(METHODS):])  # tokens


def test_paired_html_and_empty_pages():
    page = tables.paired_html(make_paired(TWO_EACH), ["tiny"])
    cells = parse_html(page)
    assert "tiny: method − CoT, Pass@1 (points)" in page and "<table" in page
    heads = [t for row in cells.rows for t, a in row if "col_heading" in a.get("class", "")]
    assert heads.count("OOD avg") == 2
    assert "No paired comparison" in tables.paired_html(pd.DataFrame(columns=PAIRED_COLUMNS), ["tiny"])
    empty = tables.table_html(tables.main_table(pd.DataFrame(columns=SUMMARY_COLUMNS)), "T")
    assert "No evaluation results found" in empty
