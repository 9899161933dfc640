"""`tarpo summarise`: the tables and figures of a run, from its evaluation and training outputs.

Reads, for each backbone (every file is optional; what is missing is skipped
with a note, never an error):

    results/{backbone}/{method}/eval/{benchmark}.json           metrics (pass@j, mean_tokens, ...)
    results/{backbone}/{method}/eval/{benchmark}.samples.jsonl  per-sample soft flags (tarpo, lepo)
    results/{backbone}/{method}/checkpoint/metrics.jsonl        training metrics per step

and writes

    results/{backbone}/summary.csv              long format: backbone, method, benchmark, split, metric, value
                                                (one row per eval metric; benchmark "average" rows hold the
                                                unweighted mean over a split's benchmarks)
    {out}/{backbone}/tables/main.{csv,md,tex}   method x benchmark Pass@1 / Pass@k (%), ID and OOD averages,
                                                best per column in bold
    {out}/{backbone}/{figure}.png               FIGURES below
    {out}/{backbone}/soft_position.csv          the soft ratio per relative-position bin behind soft_position.png
    {out}/tables/main.{csv,md,tex}              every backbone in one table (`combined_table`, from the
                                                summary.csv files)

Averages follow the paper: the unweighted mean over a split's benchmarks. A
method that lacks one of the split's benchmarks gets no average (shown as
"–"), so an average is never taken over a different set of benchmarks.

Every declared output is always written (a figure whose data is missing says
so in place of the plot), so the workflow can declare them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from tarpo.config import Config  # noqa: E402
from tarpo.io import atomic_write_text  # noqa: E402

# Figure names: {out}/{backbone}/{name}.png. The workflow declares each with a
# caption workflow/report/{name}.rst (a test checks they agree).
FIGURES = ("training_dynamics", "pass_at_k", "token_efficiency", "soft_position")
TABLE_FORMATS = ("csv", "md", "tex")

METHOD_ORDER = ("cot", "grpo", "hrpo", "lepo", "tarpo")
METHOD_LABEL = {"cot": "CoT", "grpo": "GRPO", "hrpo": "HRPO", "lepo": "LEPO", "tarpo": "TARPO"}
_CB = sns.color_palette("colorblind", 10)
PALETTE = {"cot": _CB[7], "grpo": _CB[0], "hrpo": _CB[2], "lepo": _CB[4], "tarpo": _CB[3]}
# Markers and sizes: methods with equal values are drawn on top of each other,
# so each has its own shape and earlier methods are drawn larger (nested shapes stay visible).
MARKERS = {"cot": "o", "grpo": "s", "hrpo": "^", "lepo": "D", "tarpo": "P"}
SPLITS = ("id", "ood")
SPLIT_LABEL = {"id": "ID", "ood": "OOD"}
AVERAGE = "average"  # the benchmark name of split-average rows in summary.csv
N_POSITION_BINS = 10
DPI = 150
MISSING = "–"

# Training dynamics panels: (metrics.jsonl key, panel title, y label).
DYNAMICS = (
    ("reward_mean", "Reward", "mean reward (fraction correct)"),
    ("kl", "KL to the reference policy", "KL per token (nats)"),
    ("completion_length", "Completion length", "tokens per completion"),
    ("soft_ratio", "Soft ratio (TARPO, LEPO)", "soft steps / thinking steps"),
    ("action_entropy", "Action entropy (TARPO)", "router entropy (nats)"),
    ("mean_gate", "HRPO gate a", "mean a (1 = fully explicit)"),
)

UNIT_INTERVAL = {"reward_mean", "soft_ratio", "mean_gate"}  # metrics that are fractions in [0, 1]

# ---------------------------------------------------------------- names and order


def method_label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def method_order(methods: Iterable[str]) -> list[str]:
    """Known methods in the paper's order (cot, grpo, hrpo, lepo, tarpo), any others after them by name."""
    methods = set(methods)
    return [m for m in METHOD_ORDER if m in methods] + sorted(methods - set(METHOD_ORDER))


def palette(methods: Iterable[str]) -> dict[str, Any]:
    extra = iter(c for i, c in enumerate(_CB) if i not in (0, 2, 3, 4, 7))
    return {m: PALETTE.get(m) or next(extra, (0.3, 0.3, 0.3)) for m in method_order(methods)}


def style(method: str, methods: Sequence[str]) -> dict[str, Any]:
    """Line/marker keyword arguments of `method` among the `methods` drawn in one panel."""
    rank = method_order(methods).index(method) if method in methods else 0
    shrink = rank / max(len(methods) - 1, 1)
    return {"marker": MARKERS.get(method, "v"), "ms": 10 - 3.5 * shrink, "lw": 3.2 - 1.6 * shrink}


def configured_methods(cfg: Config) -> list[str]:
    return method_order([*cfg.baselines, *cfg.methods])


# ---------------------------------------------------------------- reading results


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _split_of(metrics: dict[str, Any], benchmark: str, cfg: Config) -> str:
    """'id' or 'ood': the eval JSON's own flag, else the benchmark registry."""
    if metrics.get("distribution") in SPLITS:
        return metrics["distribution"]
    if "ood" in metrics:
        return "ood" if metrics["ood"] else "id"
    from tarpo.data.benchmarks import get_benchmark

    return "ood" if get_benchmark(benchmark, cfg.datasets).ood else "id"


class Results:
    """Everything found for one backbone, plus notes on what was not."""

    def __init__(self, cfg: Config, results: Path, backbone: str):
        self.backbone = backbone
        self.notes: list[str] = []
        self.evals: dict[tuple[str, str], dict[str, Any]] = {}  # (method, benchmark) -> eval JSON
        self.split: dict[str, str] = {}  # benchmark -> id | ood
        self.training: dict[str, pd.DataFrame] = {}  # method -> per-step metrics
        self.samples_paths: dict[tuple[str, str], Path] = {}
        root = Path(results) / backbone
        methods = configured_methods(cfg)
        for method in methods:
            found = []
            for bench in cfg.evaluate.benchmarks:
                path = root / method / "eval" / f"{bench}.json"
                if not path.exists():
                    continue
                metrics = json.loads(path.read_text())
                self.evals[(method, bench)] = metrics
                self.split.setdefault(bench, _split_of(metrics, bench, cfg))
                found.append(bench)
                samples = path.with_name(f"{bench}.samples.jsonl")
                if samples.exists():
                    self.samples_paths[(method, bench)] = samples
            missing = [b for b in cfg.evaluate.benchmarks if b not in found]
            if missing:
                self.notes.append(f"{backbone}/{method}: no evaluation on {', '.join(missing)}")
            if method in cfg.methods:
                path = root / method / "checkpoint" / "metrics.jsonl"
                if path.exists() and path.stat().st_size:
                    frame = pd.DataFrame(_read_jsonl(path))
                    if "step" in frame:
                        self.training[method] = frame.sort_values("step")
                else:
                    self.notes.append(f"{backbone}/{method}: no training metrics ({path})")
        self.methods = method_order({m for m, _ in self.evals})  # methods with at least one evaluation
        self.benchmarks = [b for split in SPLITS for b in cfg.evaluate.benchmarks if self.split.get(b) == split]

    def benchmarks_of(self, split: str) -> list[str]:
        return [b for b in self.benchmarks if self.split[b] == split]

    def samples(self, method: str, benchmark: str) -> Iterator[dict[str, Any]]:
        """The samples file's rows, streamed with only the fields the figures read (a paper-scale file holds
        token ids and completions of hundreds of thousands of samples); nothing when there is no file."""
        path = self.samples_paths.get((method, benchmark))
        if path is None:
            return
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    yield {"n_thinking": row.get("n_thinking", 0), "soft": row.get("soft") or []}


# ---------------------------------------------------------------- the long summary


def summary_frame(res: Results) -> pd.DataFrame:
    """Long format (backbone, method, benchmark, split, metric, value), split averages included."""
    rows = []
    for (method, bench), metrics in res.evals.items():
        for metric, value in metrics.items():
            if metric.startswith("pass@") or metric in ("mean_tokens", "mean_thinking_tokens", "soft_ratio",
                                                         "mean_gate", "n_problems", "k"):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                    rows.append((res.backbone, method, bench, res.split[bench], metric, float(value)))
    frame = pd.DataFrame(rows, columns=["backbone", "method", "benchmark", "split", "metric", "value"])
    averages = []
    for split in SPLITS:
        benches = res.benchmarks_of(split)
        if not benches:
            continue
        part = frame[(frame.split == split) & (frame.metric != "k") & (frame.metric != "n_problems")]
        for (method, metric), group in part.groupby(["method", "metric"]):
            if set(group.benchmark) >= set(benches):  # only over the split's full set of benchmarks
                averages.append((res.backbone, method, AVERAGE, split, metric, float(group.value.mean())))
    frame = pd.concat([frame, pd.DataFrame(averages, columns=frame.columns)], ignore_index=True)
    order = {m: i for i, m in enumerate(method_order(frame.method.unique()))}
    bench_order = {b: i for i, b in enumerate(res.benchmarks)}
    frame["_m"] = frame.method.map(order)
    frame["_b"] = [bench_order.get(b, len(bench_order) + SPLITS.index(s)) for b, s in zip(frame.benchmark, frame.split)]
    return frame.sort_values(["_m", "_b", "metric"]).drop(columns=["_m", "_b"]).reset_index(drop=True)


def read_summary(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"backbone": str, "method": str, "benchmark": str, "split": str, "metric": str})


# ---------------------------------------------------------------- the main table


def largest_k(summary: pd.DataFrame) -> int:
    ks = [int(m.split("@", 1)[1]) for m in summary.metric.unique() if m.startswith("pass@")]
    return max(ks) if ks else 1


def main_table(summary: pd.DataFrame, backbones: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows (backbone, method), columns (group, metric) in percent; groups: benchmarks, then "ID avg", "OOD avg".

    Pass@k is the largest k evaluated. Missing entries are NaN."""
    if summary.empty:
        return pd.DataFrame()
    k = largest_k(summary)
    metrics = ["pass@1"] + ([f"pass@{k}"] if k > 1 else [])
    groups: list[tuple[str, str, str]] = []  # (column group label, benchmark, split)
    for split in SPLITS:
        part = summary[(summary.split == split) & (summary.benchmark != AVERAGE)]
        groups += [(b, b, split) for b in dict.fromkeys(part.benchmark)]
    for split in SPLITS:
        if ((summary.split == split) & (summary.benchmark != AVERAGE)).any():
            groups.append((f"{SPLIT_LABEL[split]} avg", AVERAGE, split))
    backbones = list(backbones) if backbones else list(dict.fromkeys(summary.backbone))
    index, data = [], []
    for backbone in backbones:
        sub = summary[summary.backbone == backbone]
        for method in method_order(sub.method.unique()):
            rows = sub[sub.method == method]
            values = {(b, s, m): v for b, s, m, v in zip(rows.benchmark, rows.split, rows.metric, rows.value)}
            index.append((backbone, method))
            data.append([100.0 * values.get((bench, split, metric), math.nan)
                         for _, bench, split in groups for metric in metrics])
    columns = pd.MultiIndex.from_tuples([(label, metric.replace("pass", "Pass")) for label, _, _ in groups
                                         for metric in metrics], names=["group", "metric"])
    return pd.DataFrame(data, index=pd.MultiIndex.from_tuples(index, names=["backbone", "method"]), columns=columns)


def _fmt(value: float) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a cell holds the best (highest, as displayed to 2 decimals) value of its column within its
    backbone. Ties are all best; a column where no value is below the best (a single value, or all equal)
    has no best."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for backbone in dict.fromkeys(table.index.get_level_values("backbone")):
        rows = table.index.get_level_values("backbone") == backbone
        block = table[rows].round(2)
        for col in table.columns:
            best = block[col].max()
            if not math.isnan(best) and (block[col] < best).any():
                mask.loc[rows, col] = (block[col] == best).to_numpy()
    return mask


def _flat_columns(table: pd.DataFrame) -> list[str]:
    return [f"{group} {metric}" for group, metric in table.columns]


def table_csv(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.columns = _flat_columns(table)
    return flat.reset_index().to_csv(index=False, float_format="%.4f")


def table_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    many = table.index.get_level_values("backbone").nunique() > 1
    mask = best_mask(table)
    head = (["Backbone"] if many else []) + ["Method"] + _flat_columns(table)
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * (len(head) - len(table.columns)) + ["---:"] * len(table.columns)) + "|"]
    for (backbone, method), row in table.iterrows():
        cells = [f"**{_fmt(v)}**" if mask.loc[(backbone, method), col] else _fmt(v) for col, v in row.items()]
        lines.append("| " + " | ".join(([backbone] if many else []) + [method_label(method)] + cells) + " |")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def _tex(text: str) -> str:
    out = []
    for ch in text:
        out.append({"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}.get(ch, ch))
    return "".join(out)


def table_latex(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A booktabs `tabular` (\\usepackage{booktabs}), benchmark names spanning their Pass@1 / Pass@k columns."""
    many = table.index.get_level_values("backbone").nunique() > 1
    mask = best_mask(table)
    groups = list(dict.fromkeys(table.columns.get_level_values("group")))
    per_group = {g: [m for gg, m in table.columns if gg == g] for g in groups}
    lead = 2 if many else 1
    out = [f"% {title}", "% Requires \\usepackage{booktabs}; best per column (per backbone) in bold."]
    out += [f"% {note}" for note in notes]
    out.append("\\begin{tabular}{" + "l" * lead + "r" * len(table.columns) + "}")
    out.append("\\toprule")
    header, rules, col = [""] * lead, [], lead + 1
    for g in groups:
        n = len(per_group[g])
        header.append(f"\\multicolumn{{{n}}}{{c}}{{{_tex(g)}}}")
        rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
        col += n
    out.append(" & ".join(header) + " \\\\")
    out.append(" ".join(rules))
    out.append(" & ".join((["Backbone"] if many else []) + ["Method"] + [m for g in groups for m in per_group[g]])
               + " \\\\")
    out.append("\\midrule")
    previous = None
    for (backbone, method), row in table.iterrows():
        if many and previous is not None and backbone != previous:
            out.append("\\midrule")
        cells = [f"\\textbf{{{_fmt(v)}}}" if mask.loc[(backbone, method), c] else _fmt(v).replace(MISSING, "--")
                 for c, v in row.items()]
        name = [_tex(backbone) if backbone != previous else ""] if many else []
        out.append(" & ".join(name + [method_label(method)] + cells) + " \\\\")
        previous = backbone
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def write_tables(table: pd.DataFrame, directory: Path, title: str, notes: Sequence[str] = ()) -> None:
    directory = Path(directory)
    if table.empty:
        text = f"no evaluation results found: {title}\n"
        atomic_write_text(directory / "main.csv", "backbone,method\n")
        atomic_write_text(directory / "main.md", f"**{title}**\n\nNo evaluation results found.\n"
                          + "".join(f"- {n}\n" for n in notes))
        atomic_write_text(directory / "main.tex", f"% {text}")
        return
    atomic_write_text(directory / "main.csv", table_csv(table))
    atomic_write_text(directory / "main.md", table_markdown(table, title, notes))
    atomic_write_text(directory / "main.tex", table_latex(table, title, notes))


def _table_title(summary: pd.DataFrame, what: str) -> str:
    k = largest_k(summary) if not summary.empty else 1
    pk = f" / Pass@{k}" if k > 1 else ""
    return (f"{what}: Pass@1{pk} (%) per benchmark; ID / OOD avg = unweighted mean over the split's benchmarks; "
            f"best per column in bold")


# ---------------------------------------------------------------- soft ratio by position


def soft_by_position(samples: Iterable[dict[str, Any]], n_bins: int = N_POSITION_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(soft steps, thinking steps) per relative-position bin, pooled over samples.

    A sample's thinking steps t = 0..n-1 (n = n_thinking, the steps before the
    answer marker) fall in bin floor((t + 1/2) / n * n_bins): its relative
    position at the step's centre. `soft[t]` is 1 when step t fed a soft input.
    The soft ratio of a bin is soft / steps (NaN where no step fell)."""
    soft_counts = np.zeros(n_bins)
    step_counts = np.zeros(n_bins)
    for sample in samples:
        n = int(sample.get("n_thinking") or 0)
        flags = sample.get("soft") or []
        for t in range(min(n, len(flags))):
            b = ((2 * t + 1) * n_bins) // (2 * n)  # exact integer form of floor((t + 0.5) / n * n_bins)
            step_counts[b] += 1
            soft_counts[b] += 1 if flags[t] else 0
    return soft_counts, step_counts


# ---------------------------------------------------------------- figures


def _theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.85)


def _note(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9, color="0.35")


def _save(fig: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _legend(fig: Any, methods: Sequence[str], pal: dict[str, Any], markers: bool = True, title: str = "method") -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=pal[m], label=method_label(m), lw=2,
                      **({"marker": MARKERS.get(m, "v"), "ms": 7} if markers else {})) for m in methods]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False,
               title=title, title_fontsize=9)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _subtitle(res: Results, cfg: Config) -> str:
    return f"backbone {res.backbone} · config {cfg.name}"


def fig_training_dynamics(res: Results, cfg: Config, path: Path) -> None:
    """Small multiples of training metrics against step, one line per trained method."""
    trained = method_order(res.training)
    pal = palette(trained or METHOD_ORDER)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    fig.suptitle(f"Training dynamics ({_subtitle(res, cfg)})", fontsize=12)
    n_steps = max((len(f) for f in res.training.values()), default=0)
    window = max(3, n_steps // 10) if n_steps >= 20 else 1
    for ax, (key, title, ylabel) in zip(axes.flat, DYNAMICS):
        ax.set_title(title)
        shown = [m for m in trained if key in res.training[m] and res.training[m][key].notna().any()]
        if not shown:
            _note(ax, "no training run logs this metric" if trained else "no training metrics found")
            continue
        for m in shown:
            frame = res.training[m][["step", key]].dropna()
            st = style(m, trained)
            if window > 1:
                ax.plot(frame.step, frame[key], color=pal[m], alpha=0.25, lw=1)
                smooth = frame[key].rolling(window, center=True, min_periods=1).mean()
                ax.plot(frame.step, smooth, color=pal[m], lw=st["lw"] * 0.7)
            else:
                ax.plot(frame.step, frame[key], color=pal[m], clip_on=False, **st)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = pd.concat([res.training[m][key].dropna() for m in shown])
        lo, hi = float(values.min()), float(values.max())
        flat = hi - lo < 1e-3 * max(abs(hi), abs(lo), 1e-12)
        if flat and key in UNIT_INTERVAL:  # a flat fraction: on its whole range
            ax.set_ylim(0, 1.02)
        elif flat:  # show it flat, not as noise in the 7th digit
            pad = max(0.05 * abs(hi), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        ax.yaxis.get_major_formatter().set_useOffset(False)
        if key in ("kl", "completion_length", "soft_ratio", "action_entropy", "reward_mean") and lo >= 0:
            ax.set_ylim(bottom=0)
        if key in UNIT_INTERVAL and (hi > 0.2 and lo < 0.8):
            ax.set_ylim(0, 1.02)
    if trained:
        _legend(fig, trained, pal, markers=window == 1,
                title="method" if window == 1 else
                f"method (faint: every step; solid: centred rolling mean over {window} steps)")
    _save(fig, path)


def fig_pass_at_k(res: Results, cfg: Config, summary: pd.DataFrame, path: Path) -> None:
    """Pass@k against k (log2 axis), one panel per benchmark, one line per method."""
    benches = res.benchmarks
    pal = palette(res.methods or METHOD_ORDER)
    ncols = min(max(len(benches), 1), 4)
    nrows = max(1, math.ceil(len(benches) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=True,
                             constrained_layout=True)
    fig.suptitle(f"Pass@k ({_subtitle(res, cfg)})", fontsize=12)
    if not benches:
        _note(axes[0, 0], "no evaluation results found")
    part = summary[summary.metric.str.startswith("pass@") & (summary.benchmark != AVERAGE)].copy()
    part["k"] = part.metric.str.split("@").str[1].astype(int)
    part["pct"] = 100.0 * part.value
    ks = sorted(part.k.unique())
    for ax, bench in zip(axes.flat, benches):
        ax.set_title(f"{bench} ({SPLIT_LABEL[res.split[bench]]})")
        data = part[part.benchmark == bench]
        for m in method_order(data.method.unique()):
            line = data[data.method == m].sort_values("k")
            ax.plot(line.k, line.pct, color=pal[m], label=method_label(m), clip_on=False, **style(m, res.methods))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        if len(ks) == 1:
            ax.set_xlim(ks[0] / 2, ks[0] * 2)
        ax.set_xlabel("k (samples per problem, log2 scale)")
        ax.set_ylabel("Pass@k (%)" if ax in axes[:, 0] else "")
    if not part.empty:
        top = float(part.pct.max())
        axes[0, 0].set_ylim(0, min(100.0, max(5.0, 1.1 * top)) if top < 95 else 101)
    for ax in list(axes.flat)[len(benches) or 1:]:
        ax.set_visible(False)
    if res.methods:
        _legend(fig, res.methods, pal)
    _save(fig, path)


def fig_token_efficiency(res: Results, cfg: Config, summary: pd.DataFrame, path: Path) -> None:
    """Pass@1 against mean generated tokens, averaged over each split's benchmarks; one point per method."""
    pal = palette(res.methods or METHOD_ORDER)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    fig.suptitle(f"Token efficiency ({_subtitle(res, cfg)})", fontsize=12)
    avg = summary[summary.benchmark == AVERAGE]
    for ax, split in zip(axes, SPLITS):
        benches = res.benchmarks_of(split)
        names = ", ".join(benches) if len(benches) <= 3 else f"{len(benches)} benchmarks"
        ax.set_title(f"{SPLIT_LABEL[split]}: {names}" if benches else f"{SPLIT_LABEL[split]} benchmarks")
        if not benches:
            _note(ax, f"no {SPLIT_LABEL[split]} benchmark evaluated")
            continue
        part = avg[avg.split == split].pivot_table(index="method", columns="metric", values="value")
        if not {"pass@1", "mean_tokens"} <= set(part.columns):
            _note(ax, "no method has results on every benchmark of this split")
            continue
        part = part.dropna(subset=["pass@1", "mean_tokens"])
        xs, ys = part["mean_tokens"], 100.0 * part["pass@1"]
        xpad, ypad = max((xs.max() - xs.min()) * 0.15, 1.0), max((ys.max() - ys.min()) * 0.15, 1.0)
        ax.set_xlim(xs.min() - xpad, xs.max() + 2.5 * xpad)
        ax.set_ylim(max(ys.min() - ypad, 0.0) if ys.min() >= 0 else ys.min() - ypad, min(ys.max() + 2 * ypad, 100.0)
                    if ys.max() < 100 else 101)
        if ys.max() <= 0:
            ax.set_ylim(0, 5)
        # labels of points that (nearly) coincide are stacked instead of printed over each other
        placed: list[tuple[float, float]] = []
        xspan, yspan = np.diff(ax.get_xlim())[0], np.diff(ax.get_ylim())[0]
        methods_here = method_order(part.index)
        for m in methods_here:
            x, y = float(part.loc[m, "mean_tokens"]), float(100.0 * part.loc[m, "pass@1"])
            st = style(m, methods_here)
            ax.plot([x], [y], color=pal[m], marker=st["marker"], ms=st["ms"] + 2, ls="none", zorder=3,
                    mec="white", mew=0.8, clip_on=False)
            near = sum(1 for px, py in placed if abs(px - x) < 0.04 * xspan and abs(py - y) < 0.06 * yspan)
            placed.append((x, y))
            ax.annotate(method_label(m), (x, y), textcoords="offset points", xytext=(8, 4 + 12 * near), fontsize=9,
                        color=pal[m], va="center")
        ax.set_xlabel("mean generated tokens per sample")
        ax.set_ylabel("Pass@1 (%)" + (" (mean over benchmarks)" if len(benches) > 1 else ""))
        missing = sorted(set(res.methods) - set(part.index), key=res.methods.index)
        if missing:
            ax.text(0.99, 0.01, "left out (not evaluated on every benchmark here): " + ", ".join(method_label(m) for m in missing),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
    fig.text(0.5, -0.03, "up and to the left is better: higher accuracy with fewer generated tokens",
             ha="center", fontsize=8, color="0.35")
    _save(fig, path)


POSITION_METHODS = ("tarpo", "lepo")


def soft_position_frame(res: Results) -> pd.DataFrame:
    """Per split and method (tarpo, lepo): soft and thinking steps per relative-position bin, pooled over the
    split's benchmarks and all their samples (columns split, method, bin, position_from, position_to,
    soft_steps, thinking_steps, soft_ratio, samples)."""
    rows = []
    for split in SPLITS:
        for m in POSITION_METHODS:
            counted = [0]

            def stream(split=split, m=m, counted=counted):
                for b in res.benchmarks_of(split):
                    for row in res.samples(m, b):
                        counted[0] += 1
                        yield row

            soft, steps = soft_by_position(stream())
            if steps.sum() == 0:
                continue
            for i in range(N_POSITION_BINS):
                rows.append((split, m, i, i / N_POSITION_BINS, (i + 1) / N_POSITION_BINS, int(soft[i]), int(steps[i]),
                             soft[i] / steps[i] if steps[i] else math.nan, counted[0]))
    return pd.DataFrame(rows, columns=["split", "method", "bin", "position_from", "position_to", "soft_steps",
                                       "thinking_steps", "soft_ratio", "samples"])


def fig_soft_position(res: Results, cfg: Config, positions: pd.DataFrame, path: Path) -> None:
    """Soft ratio per relative-position bin of the thinking phase (TARPO; LEPO for reference)."""
    pal = palette(["lepo", "tarpo"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True, sharey=True)
    fig.suptitle(f"Where TARPO routes soft ({_subtitle(res, cfg)})", fontsize=12)
    centres = (np.arange(N_POSITION_BINS) + 0.5) / N_POSITION_BINS
    # (split, method) -> (soft ratio per bin, pooled soft ratio, samples, thinking steps)
    curves: dict[tuple[str, str], tuple[np.ndarray, float, int, int]] = {}
    for (split, m), part in positions.groupby(["split", "method"]):
        part = part.sort_values("bin")
        curves[(split, m)] = (part.soft_ratio.to_numpy(dtype=float),
                              float(part.soft_steps.sum() / part.thinking_steps.sum()),
                              int(part.samples.iloc[0]), int(part.thinking_steps.sum()))
    tarpo_max = max((np.nanmax(c[0]) for (_, m), c in curves.items() if m == "tarpo"), default=0.0)
    top = max([1.15 * tarpo_max, 0.01] + [1.15 * c[1] for (_, m), c in curves.items() if m == "tarpo"])
    for ax, split in zip(axes, SPLITS):
        ax.set_title(f"{SPLIT_LABEL[split]} benchmarks")
        if (split, "tarpo") not in curves:
            if "tarpo" not in cfg.methods:
                why = "TARPO is not configured"
            elif not res.benchmarks_of(split):
                why = f"no {SPLIT_LABEL[split]} benchmark evaluated"
            elif not any(("tarpo", b) in res.samples_paths for b in res.benchmarks_of(split)):
                why = f"TARPO has no evaluation samples\non {SPLIT_LABEL[split]} benchmarks yet"
            else:
                why = f"TARPO's samples on {SPLIT_LABEL[split]} benchmarks\nhave no thinking steps"
            _note(ax, why)
            continue
        ratio, overall, n_samples, n_steps = curves[(split, "tarpo")]
        seen = ~np.isnan(ratio)  # bins no step fell in are skipped, not drawn as gaps
        ax.plot(centres[seen], ratio[seen], color=pal["tarpo"], marker="o", lw=2, clip_on=False,
                label=f"TARPO ({_count(n_samples, 'sample')}, {_count(n_steps, 'thinking step')})")
        ax.axhline(overall, color=pal["tarpo"], ls=":", lw=1.2, label=f"TARPO, all positions ({overall:.3f})")
        if (split, "lepo") in curves:
            lepo, lepo_overall, lepo_n = curves[(split, "lepo")][:3]
            if np.nanmax(lepo) <= max(4 * tarpo_max, 0.2):
                top = max(top, 1.15 * float(np.nanmax(lepo)))
                seen = ~np.isnan(lepo)
                ax.plot(centres[seen], lepo[seen], color=pal["lepo"], marker="D", ms=5, lw=1.5, ls="--",
                        label=f"LEPO, reference ({_count(lepo_n, 'sample')})")
            else:  # an entry without a line: LEPO's ratio would flatten TARPO's curve to the axis
                ax.plot([], [], ls="none", label=f"LEPO, reference: {lepo_overall:.0%} of thinking steps soft "
                        "(off this scale)")
        ax.set_xlim(0, 1)
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel("relative position in the thinking phase\n(0 = first step, 1 = just before ####)")
        ax.set_ylabel("soft ratio (soft / thinking steps)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, frameon=False)
    axes[0].set_ylim(0, min(top, 1.05))
    _save(fig, path)


# ---------------------------------------------------------------- the job


def summarise_backbone(cfg: Config, results: Path, out: Path, backbone: str) -> pd.DataFrame:
    """results/{backbone}/summary.csv, {out}/{backbone}/tables/main.*, {out}/{backbone}/{figure}.png."""
    _theme()
    res = Results(cfg, Path(results), backbone)
    summary = summary_frame(res)
    atomic_write_text(Path(results) / backbone / "summary.csv", summary.to_csv(index=False))
    notes = []
    for m in configured_methods(cfg):
        missing = [b for b in cfg.evaluate.benchmarks if (m, b) not in res.evals]
        if len(missing) == len(cfg.evaluate.benchmarks):
            notes.append(f"{method_label(m)}: no evaluation results yet (left out of the table)")
        elif missing:
            notes.append(f"{method_label(m)}: no result on {', '.join(missing)} (so no average over that split)")
    title = _table_title(summary, f"Backbone {backbone} (config {cfg.name})")
    write_tables(main_table(summary), Path(out) / backbone / "tables", title, notes)
    directory = Path(out) / backbone
    fig_training_dynamics(res, cfg, directory / "training_dynamics.png")
    fig_pass_at_k(res, cfg, summary, directory / "pass_at_k.png")
    fig_token_efficiency(res, cfg, summary, directory / "token_efficiency.png")
    positions = soft_position_frame(res)
    atomic_write_text(directory / "soft_position.csv", positions.to_csv(index=False))
    fig_soft_position(res, cfg, positions, directory / "soft_position.png")
    for note in res.notes:
        print(f"summarise: {note}")
    print(f"summarise: {backbone}: {len(res.evals)} evaluations, {len(res.training)} training runs -> "
          f"{Path(results) / backbone / 'summary.csv'}, {directory}/")
    return summary


def combined_table(cfg: Config, results: Path, out: Path) -> None:
    """{out}/tables/main.*: every configured backbone's rows, from results/{backbone}/summary.csv."""
    frames, notes = [], []
    for backbone in cfg.backbones:
        path = Path(results) / backbone / "summary.csv"
        if path.exists() and path.stat().st_size:
            frames.append(read_summary(path))
        else:
            notes.append(f"{backbone}: no summary ({path})")
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["backbone", "method", "benchmark", "split", "metric", "value"])
    found = [b for b in cfg.backbones if b in set(summary.backbone)]
    title = _table_title(summary, f"{'Backbones' if len(found) > 1 else 'Backbone'} {', '.join(found) or '-'} "
                                  f"(config {cfg.name})")
    write_tables(main_table(summary, found), Path(out) / "tables", title, notes)
    print(f"summarise: {len(frames)} backbone summaries -> {Path(out) / 'tables'}/main.{{csv,md,tex}}")


def summarise(cfg: Config, results: Path, out: Path, backbones: Sequence[str] | None = None,
              combined: bool | None = None) -> None:
    """Per-backbone summaries, tables and figures for `backbones` (default: every configured backbone),
    then the all-backbone table (by default only when every backbone was summarised)."""
    from tarpo.config import ConfigError

    names = list(backbones) if backbones else list(cfg.backbones)
    unknown = [b for b in names if b not in cfg.backbones]
    if unknown:
        raise ConfigError(f"unknown backbone(s) {unknown}; configured: {sorted(cfg.backbones)}")
    for backbone in names:
        summarise_backbone(cfg, Path(results), Path(out), backbone)
    if combined if combined is not None else not backbones:
        combined_table(cfg, Path(results), Path(out))
