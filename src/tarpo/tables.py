"""Tables (Markdown, CSV, LaTeX, HTML) and the results page, from the summaries of `tarpo.summary`.

- Main table: rows (backbone, method), columns (benchmark or split average) x
  (Pass@1, Pass@k for the largest k), in %: the mean over seeds and problems
  "± half the width of its 95% interval" (seed-level, `tarpo.stats`; the CSV
  holds the exact bounds, and the HTML shows them on hover). Bold marks the
  top of a column only where it beats every other method of the column
  (paired tests, Holm-adjusted over all pairs of the column); otherwise
  nothing is bold. A split's average ("ID avg", "OOD avg")
  is a column only where the split has more than one benchmark (the average
  of one benchmark would repeat its columns).
- Paired table: each method minus CoT and minus GRPO, Pass@1 in points, per
  benchmark and split average (same rule): delta [95% CI], p-value and Holm's
  adjusted p over the page's family; bold where the adjusted p < 0.05 with two
  seeds or more (with one seed nothing is bold: training noise unmeasured).
- Precision: per benchmark, problems x samples x seeds and the CI half-width
  obtained (median over methods); the variance components (seed, problem,
  seed x problem, sample) of each paired difference with GRPO and the smallest
  difference the run detects (`components_frame`).
- Ablation table (`tarpo.ablations` computes it): each ablation arm minus its
  method, Pass@1 in points, per benchmark and split average, paired by seed and
  problem, with Holm's adjustment over the backbone's arms; cells and bold as in
  the paired table.
- Results page (`results_page`): all of the above for every backbone, the
  lucky share, tokens and soft ratio / gate, and the machine it ran on.

Every table is a DataFrame of formatted cells first; Markdown comes from
`DataFrame.to_markdown` (tabulate), LaTeX from `Styler.to_latex` (booktabs
rules) and HTML (the Snakemake report shows it) from `Styler.to_html`.
"""

from __future__ import annotations

import datetime
import html
import math
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from tarpo import stats
from tarpo.config import AblationConfig, Config
from tarpo.io import atomic_write_text
from tarpo.provenance import code_version, describe
from tarpo.sizes import size_frame
from tarpo.summary import (
    AVERAGE,
    PAIRED_BASELINES,
    SPLIT_LABEL,
    SPLITS,
    Results,
    largest_k,
    method_label,
    method_order,
    read_paired,
    read_summary,
    shown_metrics,
)

TABLE_FORMATS = ("csv", "md", "tex", "html")
MISSING = "–"
TEX_MISSING = "--"
CI_NOTE = ("± = half the width of the 95% interval: a t interval whose variance holds the seed-to-seed "
           "(training) noise, the problems' and the samples' (Satterthwaite's degrees of freedom; the training "
           "seed is the unit of replication, `tarpo.stats`); exact bounds in the CSV. Bold: the top of its column "
           "where it beats every other method of the column by paired tests, Holm-adjusted over all pairs of the "
           "column; no bold where that is not established.")
BEHAVIOUR_TITLE = "Lucky share (correct answers from a wrong chain), mean tokens, soft ratio / gate [95% interval]"

# The HTML pages' look (the report shows them in a frame of their own).
_CSS = ("body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{padding:3px 8px;border-bottom:1px solid #ddd;white-space:nowrap} td{text-align:right}"
        "th{background:#f4f4f4;text-align:center} td.left{text-align:left} li{margin-bottom:0.2em}")


def _nan(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def averaged_splits(frame: pd.DataFrame) -> list[str]:
    """The splits of `frame` (rows with `benchmark` and `split`) with more than one benchmark: only those get
    an average column."""
    if frame.empty:
        return []
    part = frame[frame.benchmark != AVERAGE]
    return [s for s in SPLITS if part[part.split == s].benchmark.nunique() > 1]


# ---------------------------------------------------------------- rendering a frame of formatted cells


def to_markdown(frame: pd.DataFrame, left: int = 1) -> str:
    """A pipe table of `frame`'s string cells (the first `left` columns left-aligned, the rest right-aligned),
    the cells as they are (no number parsing)."""
    align = ["left"] * left + ["right"] * (len(frame.columns) - left)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def to_latex(frame: pd.DataFrame, left: int = 1, breaks: Sequence[int] = ()) -> str:
    """A booktabs `tabular` of `frame` (\\usepackage{booktabs}): the first `left` columns are names (escaped),
    the others LaTeX already; with MultiIndex columns, each top-level label spans its columns. A \\midrule
    goes before each row position in `breaks`."""
    styler = frame.style.hide(axis="index").format_index(escape="latex", axis=1)
    styler = styler.format(escape="latex", subset=list(frame.columns[:left]))
    text = styler.to_latex(hrules=True, multicol_align="c", column_format="l" * left + "r" * (len(frame.columns)
                                                                                            - left))
    if breaks:
        lines = text.splitlines()
        body = lines.index("\\midrule") + 1
        for i in sorted(breaks, reverse=True):
            lines.insert(body + i, "\\midrule")
        text = "\n".join(lines) + "\n"
    return text


def to_html(frame: pd.DataFrame, uuid: str, left: int = 1, bold: pd.DataFrame | None = None,
            hover: pd.DataFrame | None = None) -> str:
    """An HTML table of `frame` (cells escaped): bold where `bold` is True, `hover` as the cells' titles."""
    styler = frame.style.hide(axis="index").set_uuid(uuid).format(escape="html").format_index(escape="html", axis=1)
    styler = styler.set_td_classes(pd.DataFrame([["left"] * left + [""] * (len(frame.columns) - left)]
                                                * len(frame), index=frame.index, columns=frame.columns))
    if bold is not None:
        styler = styler.apply(lambda _: bold.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    if hover is not None:
        styler = styler.set_tooltips(hover, as_title_attribute=True)
    return styler.to_html()


def html_page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _html_notes(notes: Sequence[str]) -> str:
    return "<ul>\n" + "".join(f"<li>{html.escape(n)}</li>\n" for n in notes) + "</ul>" if notes else ""


# ---------------------------------------------------------------- the main table


@dataclass
class MainTable:
    """Values, interval bounds (all in %) and best flags, each a frame with rows (backbone, method) and
    columns (group, metric)."""

    value: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    best: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.value.empty

    @property
    def many_backbones(self) -> bool:
        return self.value.index.get_level_values("backbone").nunique() > 1


def main_table(summary: pd.DataFrame, backbones: Sequence[str] | None = None) -> MainTable:
    """Groups: every benchmark (ID, then OOD), then "ID avg", "OOD avg" for the splits with more than one
    benchmark. Missing entries are NaN."""
    if summary.empty:
        empty = pd.DataFrame()
        return MainTable(empty, empty, empty, empty)
    metrics = shown_metrics(largest_k(summary))
    groups: list[tuple[str, str, str]] = []  # (column group label, benchmark, split)
    for split in SPLITS:
        part = summary[(summary.split == split) & (summary.benchmark != AVERAGE)]
        groups += [(b, b, split) for b in dict.fromkeys(part.benchmark)]
    groups += [(f"{SPLIT_LABEL[split]} avg", AVERAGE, split) for split in averaged_splits(summary)]
    backbones = list(backbones) if backbones else list(dict.fromkeys(summary.backbone))
    keys = [(bench, split, metric) for _, bench, split in groups for metric in metrics]
    index, frames = [], {"value": [], "ci_low": [], "ci_high": [], "best": []}
    for backbone in backbones:
        sub = summary[summary.backbone == backbone]
        for method in method_order(sub.method.unique()):
            rows = sub[sub.method == method].set_index(["benchmark", "split", "metric"])
            index.append((backbone, method))
            for field, out in frames.items():
                if field == "best":
                    out.append([bool(rows[field].get(key, False)) for key in keys])
                else:
                    out.append([100.0 * rows[field].get(key, math.nan) for key in keys])
    columns = pd.MultiIndex.from_tuples([(label, metric.replace("pass", "Pass")) for label, _, _ in groups
                                         for metric in metrics], names=["group", "metric"])
    idx = pd.MultiIndex.from_tuples(index, names=["backbone", "method"])
    made = {field: pd.DataFrame(data, index=idx, columns=columns) for field, data in frames.items()}
    return MainTable(made["value"], made["ci_low"], made["ci_high"], made["best"].astype(bool))


def _pm(value: float, low: float, high: float, fmt: str = "md", bold: bool = False) -> str:
    """A main-table cell in %, one decimal: "value ± half-width" (no ± without an interval), in `fmt`
    ("md": bold with **, "tex": \\textbf on the value and a small ±, "html": plain, bold by style)."""
    if _nan(value):
        return TEX_MISSING if fmt == "tex" else MISSING
    text = f"{value:.1f}"
    half = "" if _nan(low) or _nan(high) else f"{(high - low) / 2:.1f}"
    if fmt == "tex":
        text = f"\\textbf{{{text}}}" if bold else text
        return f"{text} {{\\scriptsize$\\pm$ {half}}}" if half else text
    text = f"{text} ± {half}" if half else text
    return f"**{text}**" if bold and fmt == "md" else text


def _flat_columns(table: pd.DataFrame) -> list[str]:
    return [f"{group} {metric}" for group, metric in table.columns]


def _main_cells(table: MainTable, fmt: str) -> pd.DataFrame:
    """The formatted value cells, same index and columns as `table.value`."""
    return pd.DataFrame([[_pm(table.value.loc[key, col], table.low.loc[key, col], table.high.loc[key, col], fmt,
                              bool(table.best.loc[key, col])) for col in table.value.columns]
                         for key in table.value.index], index=table.value.index, columns=table.value.columns)


def _names(index: pd.Index, many: bool, blank_repeats: bool = False) -> pd.DataFrame:
    """The Backbone (with several) and Method columns of a main table's rows."""
    backbones = [b for b, _ in index]
    if blank_repeats:
        backbones = [b if i == 0 or b != backbones[i - 1] else "" for i, b in enumerate(backbones)]
    names = {"Backbone": backbones} if many else {}
    names["Method"] = [method_label(m) for _, m in index]
    return pd.DataFrame(names)


def table_csv(table: MainTable) -> str:
    parts = []
    for field, frame in (("", table.value), (" ci_low", table.low), (" ci_high", table.high), (" best", table.best)):
        flat = frame.copy()
        flat.columns = [f"{c}{field}" for c in _flat_columns(frame)]
        parts.append(flat)
    wide = pd.concat(parts, axis=1)
    order = [f"{c}{field}" for c in _flat_columns(table.value) for field in ("", " ci_low", " ci_high", " best")]
    return wide[order].reset_index().to_csv(index=False, float_format="%.4f")


def main_frame(table: MainTable, fmt: str = "md") -> pd.DataFrame:
    """The main table as a frame of formatted cells: Backbone (with several), Method, then one column per
    (group, metric), flat ("gsm8k Pass@1") for Markdown, the two levels for LaTeX and HTML."""
    names = _names(table.value.index, table.many_backbones, blank_repeats=fmt == "tex")
    cells = _main_cells(table, fmt).reset_index(drop=True)
    if fmt == "md":
        cells.columns = _flat_columns(table.value)
    else:
        names.columns = pd.MultiIndex.from_tuples([("", c) for c in names.columns])
        cells.columns = pd.MultiIndex.from_tuples(list(table.value.columns))
    return pd.concat([names, cells], axis=1)


def table_markdown(table: MainTable, title: str, notes: Sequence[str] = ()) -> str:
    frame = main_frame(table, "md")
    lines = [f"**{title}**", "", to_markdown(frame, left=2 if table.many_backbones else 1).rstrip(), ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def table_latex(table: MainTable, title: str, notes: Sequence[str] = ()) -> str:
    """A booktabs `tabular` (\\usepackage{booktabs}), benchmark names spanning their Pass@1 / Pass@k columns,
    a rule between backbones."""
    backbones = list(table.value.index.get_level_values("backbone"))
    breaks = [i for i in range(1, len(backbones)) if backbones[i] != backbones[i - 1]]
    out = [f"% {title}", "% Requires \\usepackage{booktabs}. " + CI_NOTE.replace("CSV", "main.csv")]
    out += [f"% {note}" for note in notes if note != CI_NOTE]
    return "\n".join(out) + "\n" + to_latex(main_frame(table, "tex"), left=2 if table.many_backbones else 1,
                                            breaks=breaks)


def table_html(table: MainTable, title: str, notes: Sequence[str] = (), summary: pd.DataFrame | None = None) -> str:
    """A page with the main table (the exact 95% interval on hover), its notes and the lucky share / tokens /
    soft ratio table."""
    body = [f"<h3>{html.escape(title)}</h3>"]
    if table.empty:
        body.append("<p>No evaluation results found.</p>")
    else:
        frame = main_frame(table, "html")
        left = 2 if table.many_backbones else 1
        pad = pd.DataFrame(False, index=frame.index, columns=frame.columns[:left])
        best = pd.concat([pad, table.best.reset_index(drop=True).set_axis(frame.columns[left:], axis=1)], axis=1)
        hover = pd.DataFrame(
            [["" if _nan(lo) or _nan(hi) else f"95% interval [{lo:.1f}, {hi:.1f}]"
              for lo, hi in zip(table.low.loc[key], table.high.loc[key])] for key in table.value.index],
            columns=frame.columns[left:])
        body.append(to_html(frame, "main", left, bold=best, hover=hover))
    body.append(_html_notes(notes))
    if summary is not None and not summary.empty:
        body += [f"<h3>{html.escape(BEHAVIOUR_TITLE)}</h3>",
                 to_html(behaviour_frame(summary), "behaviour", left=3 if summary.backbone.nunique() > 1 else 2)]
    return html_page(title, body)


def main_title(summary: pd.DataFrame, what: str) -> str:
    k = largest_k(summary) if not summary.empty else 1
    pk = f" / Pass@{k}" if k > 1 else ""
    seeds = int(summary.n_seeds.max()) if not summary.empty and summary.n_seeds.notna().any() else 1
    over = f"mean over {seeds} seeds and the problems" if seeds > 1 else "mean over the problems (1 seed)"
    averaged = averaged_splits(summary)
    avg = (f"; {' / '.join(SPLIT_LABEL[s] for s in averaged)} avg = unweighted mean over the split's benchmarks"
           if averaged else "")
    return f"{what}: Pass@1{pk} (%) per benchmark, {over}, ± half-width of the 95% interval{avg}"


def write_main(table: MainTable, directory: Path, title: str, notes: Sequence[str] = (),
               summary: pd.DataFrame | None = None) -> None:
    """main.{csv,md,tex,html}; with `summary`, main.md and main.html also get the lucky share / tokens / soft
    ratio table."""
    directory = Path(directory)
    notes = [CI_NOTE, *notes]
    if table.empty:
        atomic_write_text(directory / "main.csv", "backbone,method\n")
        atomic_write_text(directory / "main.md", f"**{title}**\n\nNo evaluation results found.\n"
                          + "".join(f"- {n}\n" for n in notes[1:]))
        atomic_write_text(directory / "main.tex", f"% no evaluation results found: {title}\n")
        atomic_write_text(directory / "main.html", table_html(table, title, notes[1:]))
        return
    atomic_write_text(directory / "main.csv", table_csv(table))
    md = table_markdown(table, title, notes)
    if summary is not None and not summary.empty:
        md += f"\n**{BEHAVIOUR_TITLE}**\n\n" + behaviour_markdown(summary)
    atomic_write_text(directory / "main.md", md)
    atomic_write_text(directory / "main.tex", table_latex(table, title, notes))
    atomic_write_text(directory / "main.html", table_html(table, title, notes, summary))


# ---------------------------------------------------------------- the paired table


def _p(p: float, tex: bool = False) -> str:
    text = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return f"${text}$" if tex else text


def _adjusted(p: float, tex: bool = False) -> str:
    if _nan(p):
        return ""
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return f", Holm ${text}$" if tex else f", Holm {text}"


def _delta(row: pd.Series, fmt: str = "md") -> str:
    d, lo, hi = 100 * row.delta, 100 * row.ci_low, 100 * row.ci_high
    holm = _adjusted(getattr(row, "p_holm", math.nan), tex=fmt == "tex")
    if fmt == "tex":
        text = f"${d:+.1f}$ {{\\scriptsize[${lo:+.1f}$, ${hi:+.1f}$] {_p(row.p_value, tex=True)}{holm}}}"
        return f"\\textbf{{{text}}}" if row.significant else text
    text = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] {_p(row.p_value)}{holm}"
    return f"**{text}**" if row.significant and fmt == "md" else text


@dataclass
class PairedBlock:
    """One backbone's comparisons with one baseline: cells per method (rows) and benchmark / split average
    (columns)."""

    backbone: str
    baseline: str
    rows: pd.DataFrame  # the paired.csv rows
    columns: list[tuple[str, str, str]]  # (benchmark or AVERAGE, split, label)

    def title(self, minus: str = "−") -> str:
        return f"{self.backbone}: method {minus} {method_label(self.baseline)}, Pass@1 (points)"

    def frame(self, fmt: str = "md") -> pd.DataFrame:
        """Method, then one column per benchmark / split average: formatted cells."""
        out = []
        for method in method_order(self.rows.method.unique()):
            rows = self.rows[self.rows.method == method].set_index(["benchmark", "split"])
            out.append([method_label(method)] + [_delta(rows.loc[(b, s)], fmt) if (b, s) in rows.index
                                                 else (TEX_MISSING if fmt == "tex" else MISSING)
                                                 for b, s, _ in self.columns])
        return pd.DataFrame(out, columns=["Method"] + [label for _, _, label in self.columns])

    def significant(self) -> pd.DataFrame:
        out = []
        for method in method_order(self.rows.method.unique()):
            rows = self.rows[self.rows.method == method].set_index(["benchmark", "split"])
            out.append([False] + [bool(rows.loc[(b, s)].significant) if (b, s) in rows.index else False
                                  for b, s, _ in self.columns])
        return pd.DataFrame(out, columns=["Method"] + [label for _, _, label in self.columns])


def difference_columns(block: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(benchmark, split, label) columns of a block of differences: its benchmarks split by split, then each
    split's average where the block has one."""
    cols = [(b, s, b) for s in SPLITS
            for b in dict.fromkeys(block[(block.split == s) & (block.benchmark != AVERAGE)].benchmark)]
    cols += [(AVERAGE, s, f"{SPLIT_LABEL[s]} avg") for s in averaged_splits(block)
             if ((block.split == s) & (block.benchmark == AVERAGE)).any()]
    return cols


def paired_blocks(paired: pd.DataFrame, backbones: Sequence[str]) -> Iterator[PairedBlock]:
    """The vs-baseline comparisons per backbone and baseline; split averages only for splits with more than one
    benchmark."""
    rows = paired[paired.comparison.str.startswith("vs_")] if not paired.empty else paired
    for backbone in backbones:
        sub = rows[rows.backbone == backbone] if not rows.empty else rows
        for baseline in PAIRED_BASELINES:
            block = sub[sub.baseline == baseline] if not sub.empty else sub
            if block.empty:
                continue
            yield PairedBlock(backbone, baseline, block, difference_columns(block))


PAIRED_NOTE = ("Pass@1 difference in points (method minus baseline), mean over the paired problems and seeds "
               "(seed s of both methods paired); [95% interval: t with Satterthwaite's degrees of freedom, its "
               "variance holding the seed-to-seed noise of the difference, the problems' and the samples'], the "
               "two-sided p-value, and Holm's adjusted p over the family of every vs-CoT and vs-GRPO test on "
               "this page (a split average of one benchmark is that benchmark's test, counted once). Bold: "
               "established, i.e. adjusted p < 0.05 with two seeds or more; with one seed nothing is bold, "
               "since the training noise is not measured.")
NO_PAIRED = "No paired comparison: it needs CoT or GRPO and another method with per-problem results."


def paired_markdown(paired: pd.DataFrame, backbones: Sequence[str], heading: str = "**") -> str:
    """One table per backbone and baseline (`heading`: the Markdown wrapping of each table's title)."""
    out = []
    for block in paired_blocks(paired, backbones):
        close = heading if heading == "**" else ""
        out += [f"{heading}{block.title()}{close}", "", to_markdown(block.frame("md")).rstrip(), ""]
    if not out:
        return NO_PAIRED + "\n"
    return "\n".join(out + [f"- {PAIRED_NOTE}"]) + "\n"


def paired_latex(paired: pd.DataFrame, backbones: Sequence[str]) -> str:
    out = ["% Requires \\usepackage{booktabs}. " + PAIRED_NOTE]
    for block in paired_blocks(paired, backbones):
        frame = block.frame("tex").rename(columns={"Method": f"{block.backbone}: method - "
                                                              f"{method_label(block.baseline)}"})
        out += [f"% {block.title('minus')}", to_latex(frame)]
    return "\n".join(out) + "\n"


def paired_html(paired: pd.DataFrame, backbones: Sequence[str]) -> str:
    body = []
    for i, block in enumerate(paired_blocks(paired, backbones)):
        body += [f"<h3>{html.escape(block.title())}</h3>",
                 to_html(block.frame("html"), f"paired{i}", bold=block.significant())]
    body.append(_html_notes([PAIRED_NOTE]) if body else f"<p>{html.escape(NO_PAIRED)}</p>")
    return html_page("Paired comparisons", body)


def write_paired(paired: pd.DataFrame, backbones: Sequence[str], directory: Path) -> None:
    atomic_write_text(Path(directory) / "paired.md", paired_markdown(paired, backbones))
    atomic_write_text(Path(directory) / "paired.tex", paired_latex(paired, backbones))
    atomic_write_text(Path(directory) / "paired.html", paired_html(paired, backbones))


# ---------------------------------------------------------------- the ablation table: each arm minus its method

ABLATION_NOTE = ("Pass@1 difference in points (arm minus its method: the method trained with the arm's changes, "
                 "minus the method as configured), mean over the paired problems and seeds (seed s of both "
                 "paired); [95% interval: t with Satterthwaite's degrees of freedom, its variance holding the "
                 "seed-to-seed noise of the difference, the problems' and the samples'], the two-sided p-value, and "
                 "Holm's adjusted p over the family of every arm's tests on this backbone (a split average of one "
                 "benchmark is that benchmark's test, counted once). Bold: established, i.e. adjusted p < 0.05 with "
                 "two seeds or more.")
NO_ABLATION = "No ablation comparison yet: it needs per-problem results of an arm and its method."


def changes(arm: AblationConfig) -> str:
    """An arm's overrides as `key=value, ...` (what the table's `Changes` column shows)."""
    return ", ".join(f"{k}={v}" for k, v in arm.train.items()) or "(none)"


@dataclass
class AblationBlock:
    """One backbone's ablation comparisons: a row per arm, a column per benchmark / split average."""

    backbone: str
    rows: pd.DataFrame  # the ablations.csv rows (PAIRED_COLUMNS, comparison "ablation")
    columns: list[tuple[str, str, str]]
    arms: dict[str, AblationConfig]

    def title(self, minus: str = "−") -> str:
        return f"{self.backbone}: ablation arm {minus} its method, Pass@1 (points)"

    def _arms(self) -> list[str]:
        present = set(self.rows.method)
        return [a for a in self.arms if a in present] + sorted(present - set(self.arms))

    def frame(self, fmt: str = "md") -> pd.DataFrame:
        missing = TEX_MISSING if fmt == "tex" else MISSING
        out = []
        for arm in self._arms():
            rows = self.rows[self.rows.method == arm].set_index(["benchmark", "split"])
            spec = self.arms.get(arm)
            out.append([arm, method_label(rows.baseline.iloc[0]), changes(spec) if spec else missing]
                       + [_delta(rows.loc[(b, s)], fmt) if (b, s) in rows.index else missing
                          for b, s, _ in self.columns])
        return pd.DataFrame(out, columns=["Arm", "Method", "Changes"] + [label for _, _, label in self.columns])

    def significant(self) -> pd.DataFrame:
        out = []
        for arm in self._arms():
            rows = self.rows[self.rows.method == arm].set_index(["benchmark", "split"])
            out.append([False] * 3 + [bool(rows.loc[(b, s)].significant) if (b, s) in rows.index else False
                                      for b, s, _ in self.columns])
        return pd.DataFrame(out, columns=["Arm", "Method", "Changes"] + [label for _, _, label in self.columns])


def ablation_blocks(rows: pd.DataFrame, backbones: Sequence[str], arms: dict[str, AblationConfig]
                    ) -> Iterator[AblationBlock]:
    for backbone in backbones:
        block = rows[rows.backbone == backbone] if not rows.empty else rows
        if block.empty:
            continue
        yield AblationBlock(backbone, block, difference_columns(block), arms)


def ablation_markdown(rows: pd.DataFrame, backbones: Sequence[str], arms: dict[str, AblationConfig],
                      heading: str = "**") -> str:
    out = []
    for block in ablation_blocks(rows, backbones, arms):
        close = heading if heading == "**" else ""
        out += [f"{heading}{block.title()}{close}", "", to_markdown(block.frame("md"), left=3).rstrip(), ""]
    if not out:
        return NO_ABLATION + "\n"
    return "\n".join(out + [f"- {ABLATION_NOTE}"]) + "\n"


def ablation_latex(rows: pd.DataFrame, backbones: Sequence[str], arms: dict[str, AblationConfig]) -> str:
    out = ["% Requires \\usepackage{booktabs}. " + ABLATION_NOTE]
    for block in ablation_blocks(rows, backbones, arms):
        out += [f"% {block.title('minus')}", to_latex(block.frame("tex"), left=3)]
    return "\n".join(out) + "\n"


def ablation_html(rows: pd.DataFrame, backbones: Sequence[str], arms: dict[str, AblationConfig]) -> str:
    body = []
    for i, block in enumerate(ablation_blocks(rows, backbones, arms)):
        body += [f"<h3>{html.escape(block.title())}</h3>",
                 to_html(block.frame("html"), f"ablations{i}", left=3, bold=block.significant())]
    body.append(_html_notes([ABLATION_NOTE]) if body else f"<p>{html.escape(NO_ABLATION)}</p>")
    return html_page("Ablations", body)


# ---------------------------------------------------------------- precision: the CI half-width per benchmark


def precision_frame(summary: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per backbone and benchmark: problems, samples per problem, seeds, and the median (over methods)
    half-width in points of the Pass@1 interval and of the paired difference to CoT."""
    rows = []
    if summary.empty:
        return pd.DataFrame(columns=["backbone", "benchmark", "split", "problems", "samples", "seeds",
                                     "pass1_half_width", "vs_cot_half_width"])
    for (backbone, bench, split), part in summary[summary.benchmark != AVERAGE].groupby(
            ["backbone", "benchmark", "split"], sort=False):
        def metric(name: str) -> pd.DataFrame:
            return part[part.metric == name]

        p1 = metric("pass@1")
        halves = (p1.ci_high - p1.ci_low).dropna() / 2 * 100
        vs = paired[(paired.backbone == backbone) & (paired.benchmark == bench)
                    & (paired.comparison == "vs_cot")] if not paired.empty else paired
        vs_half = ((vs.ci_high - vs.ci_low) / 2 * 100) if not vs.empty else pd.Series(dtype=float)
        rows.append((backbone, bench, split, _first(metric("n_problems")), _first(metric("k")),
                     int(p1.n_seeds.max()) if not p1.empty else 0,
                     float(np.median(halves)) if len(halves) else math.nan,
                     float(np.median(vs_half)) if len(vs_half) else math.nan))
    return pd.DataFrame(rows, columns=["backbone", "benchmark", "split", "problems", "samples", "seeds",
                                       "pass1_half_width", "vs_cot_half_width"])


def _first(part: pd.DataFrame) -> int:
    return int(part.value.iloc[0]) if not part.empty else 0


def precision_notes(precision: pd.DataFrame) -> list[str]:
    """One line per benchmark, for the notes under a table."""
    out = []
    for row in precision.itertuples():
        if _nan(row.pass1_half_width):
            continue
        vs = f"; paired difference to CoT ± {row.vs_cot_half_width:.1f}" if not _nan(row.vs_cot_half_width) else ""
        seeds = f" x {row.seeds} seeds" if row.seeds != 1 else " x 1 seed"
        out.append(f"{row.benchmark}: {row.problems} problems x {row.samples} samples{seeds}; Pass@1 interval "
                   f"± {row.pass1_half_width:.1f} points (median over methods){vs}")
    return out


def precision_markdown(precision: pd.DataFrame) -> str:
    many = precision.backbone.nunique() > 1
    rows = []
    for row in precision.itertuples():
        rows.append(([row.backbone] if many else []) + [
            row.benchmark, SPLIT_LABEL.get(row.split, row.split), str(row.problems), str(row.samples),
            str(row.seeds), MISSING if _nan(row.pass1_half_width) else f"{row.pass1_half_width:.1f}",
            MISSING if _nan(row.vs_cot_half_width) else f"{row.vs_cot_half_width:.1f}"])
    head = (["Backbone"] if many else []) + ["Benchmark", "Split", "Problems", "Samples / problem", "Seeds",
                                             "Pass@1 CI ± (points)", "Paired Δ vs CoT CI ± (points)"]
    return to_markdown(pd.DataFrame(rows, columns=head), left=len(head) - 5)


# ---------------------------------------------------------------- variance components: what the run can detect

COMPONENT_COLUMNS = ["backbone", "benchmark", "split", "comparison", "seeds", "problems", "samples", "sd_seed",
                     "sd_problem", "sd_interaction", "sd_sample", "seed_sd", "se", "df", "detectable",
                     "detectable_2x_problems", "detectable_2x_seeds"]


def components_frame(paired: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, benchmark and paired comparison with GRPO (or, without GRPO, with CoT): the variance
    components of the Pass@1 difference as sds in points (seed: training run to run; problem: method x
    problem; interaction: seed x problem; sample: one sample's 0/1 noise), the sd over seeds of the per-seed
    difference, the standard error and df of this run's difference, and the smallest difference it detects
    with 80% power at 95% (and with twice the problems or twice the seeds)."""
    if paired.empty or "var_seed" not in paired:
        return pd.DataFrame(columns=COMPONENT_COLUMNS)
    rows = paired[paired.comparison.isin(["vs_grpo", "vs_cot"]) & (paired.benchmark != AVERAGE)
                  & paired.var_seed.notna()]
    if (rows.comparison == "vs_grpo").any():
        rows = rows[rows.comparison == "vs_grpo"]
    out = []
    for row in rows.itertuples():
        seeds, problems, k = int(row.n_seeds), int(row.n_problems), int(row.k)
        comp = stats.Components(row.var_seed, row.var_problem, row.var_interaction, row.var_sample, seeds,
                                problems, k)

        def sd(v: float) -> float:
            return 100 * math.sqrt(v) if not _nan(v) else math.nan

        out.append((row.backbone, row.benchmark, row.split,
                    f"{method_label(row.method)} − {method_label(row.baseline)}", seeds, problems, k,
                    sd(row.var_seed), sd(row.var_problem), sd(row.var_interaction), sd(row.var_sample),
                    100 * row.seed_sd, 100 * row.se, row.df,
                    100 * stats.detectable_difference(row.se, row.df),
                    100 * comp.detectable(seeds, 2 * problems, k), 100 * comp.detectable(2 * seeds, problems, k)))
    return pd.DataFrame(out, columns=COMPONENT_COLUMNS)


def components_markdown(frame: pd.DataFrame) -> str:
    many = frame.backbone.nunique() > 1

    def f(v: float, digits: int = 1) -> str:
        return MISSING if _nan(v) else f"{v:.{digits}f}"

    rows = [([r.backbone] if many else []) + [
        r.benchmark, r.comparison, f"{r.seeds} x {r.problems} x {r.samples}", f(r.sd_seed), f(r.sd_problem),
        f(r.sd_interaction), f(r.sd_sample), f(r.seed_sd), f(r.se, 2), f(r.df), f(r.detectable),
        f(r.detectable_2x_problems), f(r.detectable_2x_seeds)] for r in frame.itertuples()]
    head = (["Backbone"] if many else []) + [
        "Benchmark", "Difference", "Seeds x problems x samples", "sd seed", "sd problem", "sd seed x problem",
        "sd sample", "sd of per-seed Δ", "SE of Δ", "df", "Detectable Δ", "… 2x problems", "… 2x seeds"]
    return to_markdown(pd.DataFrame(rows, columns=head), left=3 if many else 2)


def seed_table(cfg: Config, results: Path, backbones: Sequence[str]) -> pd.DataFrame:
    """Pass@1 (%) of every method on every benchmark, per seed (from the evaluation JSONs): the run-to-run
    spread the intervals hold."""
    out = []
    for backbone in backbones:
        res = Results(cfg, results, backbone)
        for method in res.methods:
            for bench in res.benchmarks:
                runs = res.evals.get((method, bench), {})
                values = [runs[s].get("pass@1") for s in res.seeds if s in runs]
                if not values or any(not isinstance(v, (int, float)) for v in values):
                    continue
                spread = f"{100 * float(np.std(values, ddof=1)):.1f}" if len(values) > 1 else MISSING
                out.append([backbone, method_label(method), bench]
                           + [f"{100 * runs[s]['pass@1']:.1f}" if s in runs else MISSING for s in res.seeds]
                           + [spread])
    seeds = list(cfg.seeds)
    return pd.DataFrame(out, columns=["Backbone", "Method", "Benchmark"] + [f"seed {s}" for s in seeds]
                        + ["sd over seeds"])


# ---------------------------------------------------------------- lucky share, tokens, soft ratio / gate


def _metric_text(rows: pd.DataFrame, metric: str, scale: float, digits: int) -> str:
    part = rows[rows.metric == metric]
    if part.empty:
        return MISSING
    row = part.iloc[0]
    value = f"{scale * row.value:.{digits}f}"
    if _nan(row.ci_low) or _nan(row.ci_high):
        return value
    return f"{value} [{scale * row.ci_low:.{digits}f}, {scale * row.ci_high:.{digits}f}]"


def behaviour_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per backbone (with several), method and benchmark: lucky share (%), mean generated tokens, soft ratio /
    HRPO gate, formatted cells."""
    many = summary.backbone.nunique() > 1
    out = []
    part = summary[summary.benchmark != AVERAGE]
    for backbone in dict.fromkeys(part.backbone):
        sub = part[part.backbone == backbone]
        for method in method_order(sub.method.unique()):
            rows_m = sub[sub.method == method]
            for bench in dict.fromkeys(rows_m.benchmark):
                rows = rows_m[rows_m.benchmark == bench]
                mode = MISSING
                if (rows.metric == "soft_ratio").any():
                    mode = f"soft {rows[rows.metric == 'soft_ratio'].value.iloc[0]:.3f}"
                elif (rows.metric == "mean_gate").any():
                    mode = f"gate a = {rows[rows.metric == 'mean_gate'].value.iloc[0]:.4f}"
                out.append(([backbone] if many else []) + [
                    method_label(method), bench, _metric_text(rows, "lucky_share", 100, 1),
                    _metric_text(rows, "mean_tokens", 1, 1), mode])
    head = (["Backbone"] if many else []) + ["Method", "Benchmark", "Lucky share (%)", "Mean tokens",
                                             "Soft ratio / gate"]
    return pd.DataFrame(out, columns=head)


def behaviour_markdown(summary: pd.DataFrame) -> str:
    """`behaviour_frame` as a Markdown table."""
    frame = behaviour_frame(summary)
    return to_markdown(frame, left=len(frame.columns) - 3)


# ---------------------------------------------------------------- the results page


ONE_SEED_NOTE = ("**One training seed: the training noise is not measured.** The intervals below hold the "
                 "problems' and the samples' noise only, and no difference between methods is marked established "
                 "(nothing is bold). Runs of the same config differ by more than these intervals: the default "
                 "config's 3-seed run (docs/results.md, 'Per seed' and 'Variance components') measures the "
                 "seed-to-seed sd. Set `seeds: [0, 1, 2]` or more for a verdict.")


def travel_note(summary: pd.DataFrame) -> str:
    """How far absolute numbers move from run to run (and so across CPUs): the seed sd of Pass@1 this run
    measured (median and largest over methods and benchmarks)."""
    part = summary[(summary.metric == "pass@1") & (summary.benchmark != AVERAGE)] if not summary.empty else summary
    spread = (100 * part.seed_sd.dropna()) if "seed_sd" in part else pd.Series(dtype=float)
    text = ("Absolute numbers are not portable: float reductions differ between CPU generations (and BLAS "
            "builds), so the same config and seeds give other trajectories on another CPU, from the warm-started "
            "backbone on. ")
    if spread.empty:
        return text + "This run has one seed, so it cannot say by how much; a verdict needs several seeds."
    return text + (f"Expect them to move on the scale of the seed-to-seed spread this run measured: an sd of "
                   f"{spread.median():.1f} points of Pass@1 (median over methods and benchmarks; largest "
                   f"{spread.max():.1f}). A comparison marked established here holds across seeds, which is "
                   f"what carries over to another machine.")


def _machines(cfg: Config, results: Path) -> list[str]:
    """The machines the evaluations ran on (from their JSONs), with the dates."""
    seen: dict[tuple, list[str]] = {}
    for backbone in cfg.backbones:
        res = Results(cfg, results, backbone)
        for runs in res.evals.values():
            for metrics in runs.values():
                m = metrics.get("machine")
                if isinstance(m, dict):
                    pins = m.get("numerics")
                    numerics = (("pinned: " + ", ".join(f"{k}={v}" for k, v in pins.items())) if pins
                                else f"native ({m['cpu_capability']})" if m.get("cpu_capability") else None)
                    key = (m.get("platform"), m.get("cpus"), m.get("torch"), m.get("device"), numerics)
                    seen.setdefault(key, []).append(str(m.get("date", "")))
    lines = []
    for (plat, cpus, torch_version, device, numerics), dates in seen.items():
        dates = sorted(d for d in dates if d)
        when = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "date unknown"
        how = f", CPU numerics {numerics}" if numerics and device == "cpu" else ""
        lines.append(f"{plat}, {cpus} CPUs, torch {torch_version}, device {device}{how} ({len(dates) or '?'} "
                     f"evaluations, {when})")
    return lines


def _eval_codes(cfg: Config, results: Path) -> list[dict]:
    """The code each evaluation was made with (its JSON's `code`; older ones have none)."""
    return [metrics["code"] for backbone in cfg.backbones for runs in Results(cfg, results, backbone).evals.values()
            for metrics in runs.values() if isinstance(metrics.get("code"), dict)]


def results_page(cfg: Config, results: Path, path: Path) -> str:
    """The Markdown results page of a run (README, "Results"): main table with CIs, paired comparisons,
    lucky share / tokens / soft ratio, precision, and the machine. Written to `path`; returns the text."""
    results = Path(results)
    summaries, paireds, missing = [], [], []
    for backbone in cfg.backbones:
        s_path, p_path = results / backbone / "summary.csv", results / backbone / "paired.csv"
        if s_path.exists() and s_path.stat().st_size:
            summaries.append(read_summary(s_path))
            paireds.append(read_paired(p_path))
        else:
            missing.append(backbone)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(
        columns=["backbone", "method", "benchmark", "split", "metric", "value", "ci_low", "ci_high", "n_seeds",
                 "best"])
    paired = pd.concat(paireds, ignore_index=True) if paireds else pd.DataFrame()
    found = [b for b in cfg.backbones if b not in missing]
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    today = datetime.date.today().isoformat()
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines = [
        f"# Results: config `{cfg.name}`", "",
        f"Generated by the pipeline (`snakemake all`, rule `results_page`) on {today} from "
        f"`{results.as_posix()}/{{backbone}}/summary.csv` and `paired.csv`; do not edit by hand, rerun the "
        "pipeline.", "",
        "## Setup", "",
        f"- Config `{cfg.name}`; backbones: {', '.join(found) or 'none summarised yet'}; methods: "
        f"{', '.join(method_label(m) for m in method_order([*cfg.baselines, *cfg.methods]))}; "
        f"seeds: {seeds} (every method trained and evaluated once per seed; CoT evaluated once per seed).",
        f"- Sampling: k = {cfg.evaluate.k} samples per problem at temperature {cfg.evaluate.temperature}, "
        f"at most {cfg.evaluate.max_new_tokens} new tokens.",
    ]
    machines = _machines(cfg, results)
    lines += [f"- Evaluations ran on: {m}." for m in machines] or ["- Evaluations ran on: no record (older results)."]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines += [f"- This page was generated on {platform.platform()}, {cpus} CPUs, Python "
              f"{platform.python_version()}, torch {torch_version}, {today}, from "
              f"{describe(code_version(ignore=(str(path),)))}."]  # the page itself is not a change of code
    made_with = sorted({describe(code) for code in _eval_codes(cfg, results)})
    lines += [f"- Evaluations were made with: {'; '.join(made_with) or 'no record (older results)'}."]
    if missing:
        lines.append(f"- No summary yet for: {', '.join(missing)}.")
    lines += ["", "## Main results", ""]
    table = main_table(summary, found)
    if len(cfg.seeds) < 2:
        lines += [ONE_SEED_NOTE, ""]
    if table.empty:
        lines.append("No evaluation results found.")
    else:
        lines.append(table_markdown(table, main_title(summary, f"Config {cfg.name}"), [CI_NOTE]).rstrip())
        seeds_frame = seed_table(cfg, results, found)
        if len(cfg.seeds) > 1 and not seeds_frame.empty:
            if len(found) == 1:
                seeds_frame = seeds_frame.drop(columns="Backbone")
            lines += ["", "### Per seed", "",
                      "Pass@1 (%) of each training seed (same problems and sampling settings): the run-to-run "
                      "spread the intervals above hold.", "",
                      to_markdown(seeds_frame, left=2 if len(found) == 1 else 3).rstrip()]
        lines += ["", travel_note(summary)]
    lines += ["", "## Paired comparisons", "",
              "Each trained method against CoT (the untrained backbone) and against GRPO (explicit RL), on the "
              "same problems and, where both have them, the same seeds. A difference is established (bold) only "
              "where its Holm-adjusted p < 0.05 over the page's family and the run has two seeds or more.", ""]
    lines.append(paired_markdown(paired, found, heading="### ").rstrip() if not paired.empty
                 else "No paired comparison (needs per-problem results of two methods).")
    lines += ["", "## Lucky share, tokens, soft ratio / gate", "",
              "Lucky share: among correct samples, the share whose reasoning chain (the number after each `=`) "
              "differs from the gold solution's: a right answer from wrong steps. Only where the gold has "
              "such a chain (the synthetic task); ATP-Latent's chain is what its decoder reads from the latent "
              "steps. Mean tokens: generated tokens per sample (ATP-Latent: active latents + answer tokens). "
              "[95% interval]", ""]
    lines.append(behaviour_markdown(summary).rstrip() if not summary.empty else "No results.")
    lines += ["", "## Precision: what difference can this run detect?", "",
              "Half-width of the 95% intervals per benchmark (median over methods). A difference between two "
              "methods smaller than the paired half-width is within noise at this size (problems x samples x "
              "seeds).", ""]
    precision = precision_frame(summary, paired)
    lines.append(precision_markdown(precision).rstrip() if not precision.empty else "No results.")
    comps = components_frame(paired)
    if not comps.empty:
        lines += ["", "### Variance components of the paired differences", "",
                  "Pass@1 difference of each method minus GRPO, in points: the sd of its parts, per cell "
                  "(seed: training run to run; problem: method x problem; seed x problem; sample: one sample's "
                  "0/1 noise), the sd over seeds of the per-seed difference, the standard error and degrees of "
                  "freedom of this run's difference, and the smallest true difference it detects with 80% "
                  "power at 95% (two-sided, before Holm's adjustment), here and with twice the problems or "
                  "twice the seeds. Seeds shrink the seed term, problems only the others. With one seed the "
                  "seed term is not measured (–).", "",
                  components_markdown(comps).rstrip()]
    if len(found) > 1:
        lines += ["", "## Across backbones: do the differences change with the model?", "",
                  f"Each paired difference (Pass@1 points) at `{found[0]}` and at each other backbone, and its change: "
                  "the backbone's difference minus the reference's, over the same problems, seed s of one with seed s "
                  "of the other (independent trainings, so the interval holds the training noise of both), Holm "
                  "over the table's changes; bold where established (`tarpo.sizes`).", "",
                  size_markdown(size_frame(cfg, results, found)).rstrip()]
    if cfg.ablations:
        lines += ["", "## Ablations", "", ablation_section(cfg, results, list(cfg.backbones)).rstrip()]
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(Path(path), text)
    return text


def size_markdown(frame: pd.DataFrame) -> str:
    """The page's table of `tarpo.sizes.size_frame`: per difference and benchmark, its value at the reference
    backbone and at the other, and the change with its interval (bold where established)."""
    if frame.empty:
        return "No difference is measured at two backbones.\n"
    out = []
    for _, row in frame.iterrows():
        bench = row.benchmark if row.benchmark != AVERAGE else f"{row.split} average"
        out.append({"Difference": f"{method_label(row.method)} − {method_label(row.baseline)}",
                    "Benchmark": bench,
                    row.reference: f"{100 * row.delta_reference:+.1f}",
                    row.backbone: f"{100 * row.delta_backbone:+.1f}",
                    f"{row.backbone} − {row.reference}": _delta(row)})
    return to_markdown(pd.DataFrame(out).fillna(""), left=2).rstrip() + "\n"


def ablation_section(cfg: Config, results: Path, backbones: Sequence[str]) -> str:
    """The page's ablation section: every backbone's `{backbone}/ablations.csv` (rule ablations_table)."""
    frames = [read_paired(Path(results) / b / "ablations.csv") for b in backbones]
    rows = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) \
        else pd.DataFrame()
    intro = ("Each arm of the config's `ablations` is its method trained with the changes listed, on the same "
             "seeds, evaluated on the same benchmarks; the table gives arm minus method, paired by seed and "
             "problem. Arms are not in the tables above.")
    return intro + "\n\n" + ablation_markdown(rows, backbones, cfg.ablations, heading="### ")

