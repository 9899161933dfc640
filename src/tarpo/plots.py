"""`tarpo summarise`: the tables and figures of a run, from its evaluation and training outputs.

For each backbone (`summarise_backbone`; every input is optional, what is
missing is skipped with a note) this reads every seed's evaluations and
training metrics (`tarpo.summary`) under the results root ({root}: results/{name})
and writes

    {root}/{backbone}/summary.csv              long format: backbone, method, benchmark, split, metric, value,
                                                ci_low, ci_high (95% interval, seed-level: tarpo.stats),
                                                n_seeds, best; benchmark "average" rows hold the unweighted mean
                                                over a split's benchmarks
    {root}/{backbone}/paired.csv               paired comparisons: each method minus CoT and minus GRPO (Pass@1),
                                                and the best-vs-runner-up tests behind `best`
    {out}/{backbone}/tables/main.{csv,md,tex,html}
                                                method x benchmark Pass@1 / Pass@k (%) ± CI half-width, ID and
                                                OOD averages where a split has several benchmarks; bold only
                                                where the best is significantly better than the runner-up
    {out}/{backbone}/tables/paired.{md,tex,html}
                                                the paired table
    {out}/{backbone}/{figure}.png               FIGURES below, with 95% intervals; every y-axis starts at 0,
                                                panels share a range unless theirs differ by > SHARED_SCALE
    {out}/{backbone}/soft_position.csv          the soft ratio per relative-position bin behind soft_position.png

`combined_table` puts every backbone into {out}/tables/main.* and paired.*
(from the summary.csv / paired.csv files), and `tarpo.tables.results_page`
writes the results page. Statistics: `tarpo.stats`.

Averages follow the paper: the unweighted mean over a split's benchmarks. A
method that lacks one of the split's benchmarks gets no average (shown as
"–"), so an average is never taken over a different set of benchmarks.

Every declared output is always written (a figure whose data is missing says
so in place of the plot), so the workflow can declare them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from tarpo import methods as registry  # noqa: E402
from tarpo.config import Config  # noqa: E402
from tarpo.io import atomic_write_text  # noqa: E402

# (names, the soft-position helper and the table constants are also re-exported for callers of this module)
from tarpo.summary import (  # noqa: E402,F401
    AVERAGE,
    N_POSITION_BINS,
    SPLIT_LABEL,
    SPLITS,
    SUMMARY_COLUMNS,
    Results,
    configured_methods,
    method_label,
    method_order,
    read_paired,
    read_summary,
    soft_by_position,
    soft_position_frame,
    summary_and_paired,
)
from tarpo.tables import (  # noqa: E402,F401
    MISSING,
    TABLE_FORMATS,
    main_table,
    main_title,
    precision_frame,
    precision_notes,
    write_main,
    write_paired,
)

log = logging.getLogger(__name__)

# Figure names: {out}/{backbone}/{name}.png. The workflow declares each with a
# caption workflow/report/{name}.rst (a test checks they agree).
FIGURES = ("training_dynamics", "pass_at_k", "token_efficiency", "soft_position")

# Each registered method's colour and marker come from its declaration (tarpo.methods); methods that are not
# registered get the colour-blind palette's unused colours. Markers and sizes: methods with equal values are drawn
# on top of each other, so each has its own shape and earlier methods are drawn larger (nested shapes stay visible).
_CB = sns.color_palette("colorblind", 10)
DPI = 150
# Panels side by side share one y-range (from 0) unless their ranges differ by more than this factor.
SHARED_SCALE = 3.0
# Token efficiency: markers of the methods are drawn this many points apart horizontally (a fixed offset on
# the page, not in tokens), so that methods with the same values stay visible side by side.
DODGE_PT = 6.0

# Training dynamics panels: (metrics.jsonl key, panel title, y label).
DYNAMICS = (
    ("reward_mean", "Reward", "mean reward (fraction correct)"),
    ("kl", "KL to the reference policy", "KL per token (nats)"),
    ("completion_length", "Completion length", "tokens per completion"),
    ("soft_ratio", "Soft ratio (TARPO, LEPO)", "soft steps / thinking steps"),
    ("action_entropy", "Action entropy (TARPO)", "router entropy (nats)"),
    ("mean_gate", "HRPO gate a", "mean a (1 = fully explicit)"),
    ("coherence", "Coherence (ATP-Latent)", "decoded steps used later (fraction)"),
    ("active_latents", "Active latents (ATP-Latent)", "latents per completion"),
    ("stop_rate", "Stop rate (ATP-Latent)", "blocks ended by the stop head"),
)

UNIT_INTERVAL = {"reward_mean", "soft_ratio", "mean_gate", "coherence", "stop_rate"}  # fractions in [0, 1]


def palette(methods: Sequence[str]) -> dict[str, Any]:
    used = {registry.get_method(m).colour for m in registry.method_names()}
    extra = iter(c for c in _CB if mcolors.to_hex(c) not in used)
    return {m: _declared(m, "colour") or next(extra, (0.3, 0.3, 0.3)) for m in method_order(methods)}


def marker(method: str) -> str:
    return _declared(method, "marker") or "v"


def _declared(method: str, what: str) -> Any:
    return getattr(registry.get_method(method), what) if method in registry.method_names() else None


def style(method: str, methods: Sequence[str]) -> dict[str, Any]:
    """Line/marker keyword arguments of `method` among the `methods` drawn in one panel."""
    rank = method_order(methods).index(method) if method in methods else 0
    shrink = rank / max(len(methods) - 1, 1)
    return {"marker": marker(method), "ms": 10 - 3.5 * shrink, "lw": 3.2 - 1.6 * shrink}


# ---------------------------------------------------------------- figure helpers


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


def _legend(fig: Any, methods: Sequence[str], pal: dict[str, Any], markers: bool = True, title: str = "method",
            lines: bool = True) -> None:
    """One entry per method (colour, and its marker with `markers`; marker only without `lines`), below the
    panels."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=pal[m], label=method_label(m), lw=2 if lines else 0, ls="-" if lines else "none",
                      **({"marker": marker(m), "ms": 7} if markers or not lines else {})) for m in methods]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False,
               title=title, title_fontsize=9)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _subtitle(res: Results, cfg: Config) -> str:
    n = len(res.seeds)
    return f"backbone {res.backbone} · config {cfg.name} · {_count(n, 'seed')}"


def _percent_top(high: float) -> float:
    """The upper y-limit of a percentage panel that starts at 0: room above the highest bar, at most 101."""
    return float(min(101.0, max(5.0, 1.15 * high))) if np.isfinite(high) else 100.0


def _tops(tops: Sequence[float]) -> tuple[list[float], bool]:
    """Upper limits of panels whose axes start at 0: one common limit while the panels' own limits are within
    SHARED_SCALE of each other (comparable by eye), otherwise each its own, so that a split whose values are
    ten times smaller is not flattened onto the axis. Also says whether the scale is shared."""
    tops = [float(t) for t in tops]
    if not tops or min(tops) <= 0 or max(tops) <= SHARED_SCALE * min(tops):
        return [max(tops, default=1.0)] * len(tops), True
    return tops, False


OWN_SCALES = "each panel has its own y-scale, from 0"


def _dodges(points: Sequence[tuple[float, float]], xspan: float, yspan: float) -> list[float]:
    """Sideways offsets (in points on the page) of markers at `points` (data coordinates, on axes spanning
    `xspan` x `yspan`): markers that would cover each other (closer than 3% of the width and 4% of the
    height) are spread DODGE_PT apart around their position, the others stay where they are."""
    n = len(points)
    group = list(range(n))
    for i in range(n):
        for j in range(i):
            if (abs(points[i][0] - points[j][0]) < 0.03 * xspan and abs(points[i][1] - points[j][1]) < 0.04 * yspan):
                old, new = group[i], group[j]
                group = [new if g == old else g for g in group]
    out = []
    for i in range(n):
        members = [k for k in range(n) if group[k] == group[i]]
        out.append(DODGE_PT * (members.index(i) - (len(members) - 1) / 2))
    return out


def _err(value: Any, low: Any, high: Any) -> np.ndarray:
    """Error-bar lengths [[below], [above]] from interval bounds (0 where there is no interval)."""
    value, low, high = (np.asarray(x, dtype=float) for x in (value, low, high))
    below, above = np.nan_to_num(value - low), np.nan_to_num(high - value)
    return np.vstack([np.clip(below, 0, None), np.clip(above, 0, None)])


# ---------------------------------------------------------------- figures


def fig_training_dynamics(res: Results, cfg: Config, path: Path) -> Any:
    """Small multiples of training metrics against step, one line per trained method; with several seeds, the
    mean over seeds of the smoothed curves and a band spanning them."""
    trained = method_order(res.training)
    pal = palette(trained or registry.method_names())
    fig, axes = plt.subplots(3, 3, figsize=(13, 10), constrained_layout=True)
    fig.suptitle(f"Training dynamics ({_subtitle(res, cfg)})", fontsize=12)
    n_steps = max((len(f) for runs in res.training.values() for f in runs.values()), default=0)
    window = max(3, n_steps // 10) if n_steps >= 20 else 1
    n_seeds = max((len(runs) for runs in res.training.values()), default=0)
    for ax, (key, title, ylabel) in zip(axes.flat, DYNAMICS):
        ax.set_title(title)
        shown = [m for m in trained
                 if any(key in f and f[key].notna().any() for f in res.training[m].values())]
        if not shown:
            _note(ax, "no training run logs this metric" if trained else "no training metrics found")
            continue
        values = []
        for m in shown:
            st = style(m, trained)
            # steps x seeds
            wide = pd.concat({seed: f.set_index("step")[key] for seed, f in res.training[m].items() if key in f},
                             axis=1).sort_index()
            values.append(wide.stack())
            smooth = wide.rolling(window, center=True, min_periods=1).mean() if window > 1 else wide
            if wide.shape[1] > 1:
                ax.fill_between(smooth.index, smooth.min(axis=1), smooth.max(axis=1), color=pal[m], alpha=0.2, lw=0)
                ax.plot(smooth.index, smooth.mean(axis=1), color=pal[m], lw=st["lw"] * 0.7)
            elif window > 1:
                ax.plot(wide.index, wide.iloc[:, 0], color=pal[m], alpha=0.25, lw=1)
                ax.plot(smooth.index, smooth.iloc[:, 0], color=pal[m], lw=st["lw"] * 0.7)
            else:
                ax.plot(wide.index, wide.iloc[:, 0], color=pal[m], clip_on=False, **st)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        allv = pd.concat(values).dropna()
        lo, hi = float(allv.min()), float(allv.max())
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
        if n_seeds > 1:
            how = (f"line: mean over {n_seeds} seeds" + (f" of centred rolling means over {window} steps"
                                                        if window > 1 else "") + "; band: range across seeds")
        elif window > 1:
            how = f"faint: every step; solid: centred rolling mean over {window} steps"
        else:
            how = ""
        _legend(fig, trained, pal, markers=window == 1 and n_seeds <= 1,
                title=f"method ({how})" if how else "method")
    _save(fig, path)
    return fig


def fig_pass_at_k(res: Results, cfg: Config, summary: pd.DataFrame, path: Path) -> Any:
    """Pass@k against k (log2 axis) with 95% intervals, one panel per benchmark, one line per method. Every
    y-axis starts at 0; panels share their range unless it differs by more than SHARED_SCALE."""
    benches = res.benchmarks
    pal = palette(res.methods or registry.method_names())
    ncols = min(max(len(benches), 1), 4)
    nrows = max(1, math.ceil(len(benches) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=False,
                             constrained_layout=True)
    fig.suptitle(f"Pass@k with 95% intervals ({_subtitle(res, cfg)})", fontsize=12)
    if not benches:
        _note(axes[0, 0], "no evaluation results found")
    part = summary[summary.metric.str.startswith("pass@") & (summary.benchmark != AVERAGE)].copy()
    part["k"] = part.metric.str.split("@").str[1].astype(int)
    for col in ("value", "ci_low", "ci_high"):
        part[col] = 100.0 * part[col]
    ks = sorted(part.k.unique())
    highs = []
    for ax, bench in zip(axes.flat, benches):
        ax.set_title(f"{bench} ({SPLIT_LABEL[res.split[bench]]})")
        data = part[part.benchmark == bench]
        highs.append(float(np.nanmax(data[["value", "ci_high"]].to_numpy(), initial=0.0)))
        drawn = method_order(data.method.unique())
        for i, m in enumerate(drawn):
            line = data[data.method == m].sort_values("k")
            st = style(m, res.methods)
            dodge = 2 ** (0.04 * (i - (len(drawn) - 1) / 2))  # side by side, so the error bars stay readable
            ax.errorbar(line.k * dodge, line.value, yerr=_err(line.value, line.ci_low, line.ci_high), color=pal[m],
                        label=method_label(m), clip_on=False, capsize=3, elinewidth=1, **st)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        if len(ks) == 1:
            ax.set_xlim(ks[0] / 2, ks[0] * 2)
        ax.set_xlabel("k (samples per problem, log2 scale)")
        ax.set_ylabel("Pass@k (%)" if ax in axes[:, 0] else "")
    tops, shared = _tops([_percent_top(h) for h in highs])
    for ax, top in zip(axes.flat, tops):
        ax.set_ylim(0, top)
    for ax in list(axes.flat)[len(benches) or 1:]:
        ax.set_visible(False)
    if res.methods:
        _legend(fig, res.methods, pal, title="method (bars: 95% interval over seeds and problems"
                + ("" if shared or len(benches) < 2 else f"; {OWN_SCALES}") + ")")
    _save(fig, path)
    return fig


def fig_token_efficiency(res: Results, cfg: Config, summary: pd.DataFrame, path: Path) -> Any:
    """Pass@1 against mean generated tokens, averaged over each split's benchmarks, both with 95% intervals.

    Methods are told apart by colour and marker in one legend (no labels beside the points, which can land
    beside another method's marker), and markers that would cover each other are spread DODGE_PT points apart
    sideways on the page (`_dodges`), so that methods with equal values stay visible. Both axes start at 0;
    the two panels share their ranges unless they differ by more than SHARED_SCALE."""
    pal = palette(res.methods or registry.method_names())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    fig.suptitle(f"Token efficiency ({_subtitle(res, cfg)})", fontsize=12)
    avg = summary[summary.benchmark == AVERAGE]
    drawn: list[str] = []
    # panel -> method -> (tokens, Pass@1 %, tokens CI low, high, Pass@1 CI low, high)
    panels: dict[int, dict[str, tuple[float, ...]]] = {}
    limits: dict[int, tuple[float, float]] = {}  # panel -> (highest tokens, highest Pass@1), intervals included
    for panel, (ax, split) in enumerate(zip(axes, SPLITS)):
        benches = res.benchmarks_of(split)
        names = ", ".join(benches) if len(benches) <= 3 else f"{len(benches)} benchmarks"
        ax.set_title(f"{SPLIT_LABEL[split]}: {names}" if benches else f"{SPLIT_LABEL[split]} benchmarks")
        if not benches:
            _note(ax, f"no {SPLIT_LABEL[split]} benchmark evaluated")
            continue
        part = avg[(avg.split == split) & avg.metric.isin(["pass@1", "mean_tokens"])].set_index(["method", "metric"])
        methods_here = [m for m in method_order(part.index.get_level_values(0).unique())
                        if (m, "pass@1") in part.index and (m, "mean_tokens") in part.index]
        if not methods_here:
            _note(ax, "no method has results on every benchmark of this split")
            continue

        def get(m: str, metric: str, col: str, scale: float = 1.0) -> float:
            return scale * float(part.loc[(m, metric), col])

        rows = {m: (get(m, "mean_tokens", "value"), get(m, "pass@1", "value", 100),
                    get(m, "mean_tokens", "ci_low"), get(m, "mean_tokens", "ci_high"),
                    get(m, "pass@1", "ci_low", 100), get(m, "pass@1", "ci_high", 100)) for m in methods_here}
        panels[panel] = rows
        limits[panel] = (max(float(np.nanmax([r[0], r[3]])) for r in rows.values()),
                         max(float(np.nanmax([r[1], r[5]])) for r in rows.values()))
        drawn += [m for m in methods_here if m not in drawn]
        ax.set_xlabel("mean generated tokens per sample")
        ax.set_ylabel("Pass@1 (%)" + (" (mean over benchmarks)" if len(benches) > 1 else ""))
        missing = sorted(set(res.methods) - set(methods_here), key=res.methods.index)
        if missing:
            ax.text(0.99, 0.01, "left out (not evaluated on every benchmark here): "
                    + ", ".join(method_label(m) for m in missing),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
    order = sorted(limits)
    x_tops, _ = _tops([max(1.12 * limits[p][0], 1.0) for p in order])
    y_tops, shared = _tops([_percent_top(limits[p][1]) for p in order])
    for p, x_top, y_top in zip(order, x_tops, y_tops):
        ax = axes[p]
        ax.set_xlim(0, x_top)
        ax.set_ylim(0, y_top)
        rows = panels[p]
        shifts = _dodges([(r[0], r[1]) for r in rows.values()], x_top, y_top)
        for (m, (x, y, xlo, xhi, ylo, yhi)), shift in zip(rows.items(), shifts):
            ax.errorbar([x], [y], xerr=_err([x], [xlo], [xhi]), yerr=_err([y], [ylo], [yhi]), color=pal[m],
                        marker=marker(m), ms=8, ls="none", zorder=3, mec="white", mew=0.8, capsize=3,
                        elinewidth=1, clip_on=False, label=method_label(m),
                        transform=ax.transData + ScaledTranslation(shift / 72, 0, fig.dpi_scale_trans))
    how = ("up and to the left is better: higher accuracy with fewer generated tokens; bars: 95% "
           "intervals over problems and seeds\nmarkers that would cover each other are drawn a few points apart "
           "sideways" + ("" if shared or len(order) < 2 else f"; {OWN_SCALES}"))
    if drawn:
        _legend(fig, method_order(drawn), pal, lines=False, title=f"method\n({how})")
    else:
        fig.text(0.5, -0.03, how, ha="center", va="top", fontsize=8, color="0.35")
    _save(fig, path)
    return fig


def fig_soft_position(res: Results, cfg: Config, positions: pd.DataFrame, path: Path) -> Any:
    """Soft ratio per relative-position bin of the thinking phase with a 95% band (TARPO; LEPO for reference).
    Both panels start at 0 and share their range unless it differs by more than SHARED_SCALE."""
    pal = palette(["lepo", "tarpo"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True, sharey=False)
    fig.suptitle(f"Where TARPO routes soft ({_subtitle(res, cfg)})", fontsize=12)
    centres = (np.arange(N_POSITION_BINS) + 0.5) / N_POSITION_BINS
    curves: dict[tuple[str, str], dict[str, Any]] = {}
    for (split, m), part in positions.groupby(["split", "method"]):
        part = part.sort_values("bin")
        curves[(split, m)] = {
            "ratio": part.soft_ratio.to_numpy(dtype=float), "low": part.ci_low.to_numpy(dtype=float),
            "high": part.ci_high.to_numpy(dtype=float),
            "overall": float(part.soft_steps.sum() / part.thinking_steps.sum()),
            "samples": int(part.samples.iloc[0]), "steps": int(part.thinking_steps.sum()),
            "seeds": int(part.n_seeds.iloc[0])}
    tarpo = [c for (_, m), c in curves.items() if m == "tarpo"]
    tarpo_max = max((float(np.nanmax(np.concatenate([c["ratio"], c["high"]]))) for c in tarpo), default=0.0)
    tops: dict[int, float] = {}
    for panel, (ax, split) in enumerate(zip(axes, SPLITS)):
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
        c = curves[(split, "tarpo")]
        top = max(1.15 * float(np.nanmax(np.concatenate([c["ratio"], c["high"]]))), 1.15 * c["overall"], 0.01)
        seen = ~np.isnan(c["ratio"])  # bins no step fell in are skipped, not drawn as gaps
        ax.fill_between(centres[seen], c["low"][seen], c["high"][seen], color=pal["tarpo"], alpha=0.2, lw=0,
                        label="TARPO, 95% interval over problems" + (" and seeds" if c["seeds"] > 1 else ""))
        ax.plot(centres[seen], c["ratio"][seen], color=pal["tarpo"], marker="o", lw=2, clip_on=False,
                label=f"TARPO ({_count(c['samples'], 'sample')}, {_count(c['steps'], 'thinking step')})")
        ax.axhline(c["overall"], color=pal["tarpo"], ls=":", lw=1.2, label=f"TARPO, all positions ({c['overall']:.3f})")
        if (split, "lepo") in curves:
            lepo = curves[(split, "lepo")]
            if np.nanmax(lepo["ratio"]) <= max(4 * tarpo_max, 0.2):
                top = max(top, 1.15 * float(np.nanmax(lepo["ratio"])))
                seen = ~np.isnan(lepo["ratio"])
                ax.plot(centres[seen], lepo["ratio"][seen], color=pal["lepo"], marker="D", ms=5, lw=1.5, ls="--",
                        label=f"LEPO, reference ({_count(lepo['samples'], 'sample')})")
            else:  # an entry without a line: LEPO's ratio would flatten TARPO's curve to the axis
                ax.plot([], [], ls="none", label=f"LEPO, reference: {lepo['overall']:.0%} of thinking steps soft "
                        "(off this scale)")
        tops[panel] = min(top, 1.05)
        ax.set_xlim(0, 1)
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel("relative position in the thinking phase\n(0 = first step, 1 = just before ####)")
        ax.set_ylabel("soft ratio (soft / thinking steps)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, frameon=False)
    panels = sorted(tops)
    limits, shared = _tops([tops[p] for p in panels])
    for p, top in zip(panels, limits):
        axes[p].set_ylim(0, top)
    if not shared:
        fig.suptitle(f"Where TARPO routes soft ({_subtitle(res, cfg)})\n{OWN_SCALES}", fontsize=12)
    _save(fig, path)
    return fig


# ---------------------------------------------------------------- the jobs


def summarise_backbone(cfg: Config, results: Path, out: Path, backbone: str) -> pd.DataFrame:
    """{root}/{backbone}/summary.csv and paired.csv, {out}/{backbone}/tables/*, {out}/{backbone}/{figure}.png."""
    _theme()
    res = Results(cfg, Path(results), backbone)
    summary, paired = summary_and_paired(res)
    atomic_write_text(Path(results) / backbone / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(Path(results) / backbone / "paired.csv", paired.to_csv(index=False))
    notes = []
    for m in configured_methods(cfg):
        missing = [b for b in cfg.evaluate.benchmarks if (m, b) not in res.evals]
        if len(missing) == len(cfg.evaluate.benchmarks):
            notes.append(f"{method_label(m)}: no evaluation results yet (left out of the table)")
        elif missing:
            notes.append(f"{method_label(m)}: no result on {', '.join(missing)} (so no average over that split)")
    notes += precision_notes(precision_frame(summary, paired))
    tables = Path(out) / backbone / "tables"
    write_main(main_table(summary), tables, main_title(summary, f"Backbone {backbone} (config {cfg.name})"), notes,
               summary)
    write_paired(paired, [backbone], tables)
    directory = Path(out) / backbone
    fig_training_dynamics(res, cfg, directory / "training_dynamics.png")
    fig_pass_at_k(res, cfg, summary, directory / "pass_at_k.png")
    fig_token_efficiency(res, cfg, summary, directory / "token_efficiency.png")
    positions = soft_position_frame(res)
    atomic_write_text(directory / "soft_position.csv", positions.to_csv(index=False))
    fig_soft_position(res, cfg, positions, directory / "soft_position.png")
    for note in res.notes:
        log.info(f"summarise: {note}")
    n_evals = sum(len(runs) for runs in res.evals.values())
    log.info(f"summarise: {backbone}: {n_evals} evaluations, {sum(len(r) for r in res.training.values())} training "
          f"runs, {len(res.seeds)} seeds -> {Path(results) / backbone}/summary.csv, paired.csv, {directory}/")
    return summary


def combined_table(cfg: Config, results: Path, out: Path) -> None:
    """{out}/tables/main.* and paired.*: every configured backbone, from {root}/{backbone}/summary.csv and
    paired.csv."""
    frames, paireds, notes = [], [], []
    for backbone in cfg.backbones:
        path = Path(results) / backbone / "summary.csv"
        if path.exists() and path.stat().st_size:
            frames.append(read_summary(path))
            paireds.append(read_paired(Path(results) / backbone / "paired.csv"))
        else:
            notes.append(f"{backbone}: no summary ({path})")
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)
    paired = pd.concat(paireds, ignore_index=True) if paireds else pd.DataFrame()
    found = [b for b in cfg.backbones if b in set(summary.backbone)]
    title = main_title(summary, f"{'Backbones' if len(found) > 1 else 'Backbone'} {', '.join(found) or '-'} "
                                f"(config {cfg.name})")
    notes += precision_notes(precision_frame(summary, paired)) if not summary.empty else []
    write_main(main_table(summary, found), Path(out) / "tables", title, notes, summary)
    write_paired(paired, found, Path(out) / "tables")
    log.info(f"summarise: {len(frames)} backbone summaries -> {Path(out) / 'tables'}/main.{{csv,md,tex,html}}, "
          "paired.{md,tex,html}")


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
