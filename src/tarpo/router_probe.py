"""What TARPO's router learned: its soft ratio against position, next-token entropy and correctness.

A probe samples `router.problems` problems x `router.k` completions of one benchmark twice with the same seeds:
from the trained policy ("after") and from the same backbone with the router at its initialisation ("before":
the mode built afresh from the run's settings, seeded by the training seed, so it follows the same law as the
trainer's initial router though not bit for bit). Each thinking step is then binned three ways:

- its relative position in the thinking phase (the bins of `summary.position_bins`);
- the model's next-token entropy there (nats, temperature 1, scored on the inputs the rollout fed:
  `rollout.score`), in fixed bins `ENTROPY_EDGES`, the same for every run so stages and seeds line up;
- whether its sample's answer was correct.

Per bin the probe keeps, for every problem, the thinking steps, the soft steps and the summed router
probability of "soft": the soft ratio's interval (`stats.ratio_ci`) is then over seeds and problems as every
other ratio of the project, and the mean probability shows the router's intent without the coin's noise.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from tarpo.summary import N_POSITION_BINS, position_bin_index

#: next-token entropy bins (nats); the last is open
ENTROPY_EDGES = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, math.inf)
VARIABLES = ("position", "entropy", "correct")
STAGES = ("before", "after")
ROUTER_COLUMNS = ["method", "stage", "variable", "bin", "label", "soft_ratio", "ci_low", "ci_high", "p_soft",
                  "soft_steps", "thinking_steps", "n_seeds", "n_problems"]


def bin_labels(variable: str) -> list[str]:
    if variable == "position":
        return [f"{i / N_POSITION_BINS:.1f}-{(i + 1) / N_POSITION_BINS:.1f}" for i in range(N_POSITION_BINS)]
    if variable == "entropy":
        return [f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">{lo:g}" for lo, hi in zip(ENTROPY_EDGES, ENTROPY_EDGES[1:])]
    return ["wrong", "correct"]


def step_bins(n_thinking: int, entropy: np.ndarray, correct: bool) -> dict[str, np.ndarray]:
    """Each thinking step's bin under every variable (arrays of length n_thinking)."""
    return {
        "position": position_bin_index(n_thinking, max(n_thinking, 1)),
        "entropy": np.searchsorted(np.asarray(ENTROPY_EDGES[1:-1]), entropy[:n_thinking], side="right"),
        "correct": np.full(n_thinking, int(correct)),
    }


def empty_counts(n_problems: int) -> dict[str, dict[str, np.ndarray]]:
    """{variable: {"steps" | "soft" | "p_soft": (problems, bins)}}, zeros."""
    return {v: {key: np.zeros((n_problems, len(bin_labels(v)))) for key in ("steps", "soft", "p_soft")}
            for v in VARIABLES}


def add_sample(counts: dict[str, dict[str, np.ndarray]], problem: int, n_thinking: int, entropy: np.ndarray,
               soft: np.ndarray, p_soft: np.ndarray, correct: bool) -> None:
    """Add one sample's thinking steps (its first `n_thinking` steps) to problem `problem`'s counts."""
    if n_thinking <= 0:
        return
    for variable, bins in step_bins(n_thinking, entropy, correct).items():
        c = counts[variable]
        np.add.at(c["steps"][problem], bins, 1.0)
        np.add.at(c["soft"][problem], bins, soft[:n_thinking])
        np.add.at(c["p_soft"][problem], bins, p_soft[:n_thinking])


@torch.no_grad()
def probe_policy(model: Any, tokenizer: Any, mode: Any, records: Sequence[dict[str, Any]], *, k: int,
                 temperature: float, max_new_tokens: int, max_prompt_tokens: int, seed: int,
                 batch_size: int) -> dict[str, Any]:
    """Sample k completions of each record and count their thinking steps per bin (see the module doc)."""
    from tarpo.evaluate import batch_seed
    from tarpo.modes.tarpo import SOFT
    from tarpo.rollout import score
    from tarpo.sampling import engine_defaults, sample_and_score

    device = next(model.parameters()).device
    eos_ids, marker, pad_id = engine_defaults(model, tokenizer)
    counts = empty_counts(len(records))
    correct_samples = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, "router", start // batch_size))
        drawn = sample_and_score(model, tokenizer, mode, chunk, repeats=k, temperature=temperature,
                                 max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                                 generator=generator, eos_ids=eos_ids, marker=marker, pad_id=pad_id)
        rollout = drawn.rollout
        scored = score(model, mode, rollout, temperature=1.0)  # the model's own next-token entropy
        action = rollout.meta["action"]
        p_taken = scored["action"].exp()
        p_soft = torch.where(action == SOFT, p_taken, 1.0 - p_taken).float().cpu().numpy()
        soft = mode.soft_mask(rollout.meta, rollout.thinking).float().cpu().numpy()
        entropy = scored["token_entropy"].float().cpu().numpy()
        n_thinking = rollout.thinking.sum(-1).cpu().numpy()
        for row, correct in enumerate(drawn.correct):
            add_sample(counts, start + row // k, int(n_thinking[row]), entropy[row], soft[row], p_soft[row], correct)
            correct_samples += int(correct)
    return {"counts": {v: {key: a.tolist() for key, a in c.items()} for v, c in counts.items()},
            "pass@1": correct_samples / (len(records) * k)}


def probe(cfg: Any, *, backbone: str, method: str, backbone_dir: Path, checkpoint: Path, benchmark: str,
          data_root: Path, out_json: Path) -> dict[str, Any]:
    """Probe a TARPO checkpoint (or an arm of it) before and after training; writes `out_json`."""
    from tarpo.checkpoints import rng_states, set_rng_states
    from tarpo.config import TrainConfig, from_dict
    from tarpo.data.benchmarks import load_benchmark
    from tarpo.errors import ConfigError
    from tarpo.io import write_json
    from tarpo.methods import get_method
    from tarpo.policy import load_policy, read_policy_info
    from tarpo.provenance import code_version

    started = time.perf_counter()
    declared = get_method(cfg.method_of(method))
    if declared.name != "tarpo":
        raise ConfigError(f"the router probe reads TARPO's action head; '{method}' is a {declared.name} run")
    r = cfg.router
    records = load_benchmark(benchmark, data_root, cfg.benchmarks, cfg.datasets)[: r.problems]
    tcfg = from_dict(TrainConfig, read_policy_info(Path(checkpoint))["train"], "checkpoint")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        from tarpo.backbone import set_cpu_threads

        set_cpu_threads()
    settings = {"k": r.k, "temperature": cfg.evaluate.temperature, "max_new_tokens": cfg.evaluate.max_new_tokens,
                "max_prompt_tokens": tcfg.max_prompt_tokens, "seed": cfg.seed, "batch_size": cfg.evaluate.batch_size}
    stages = {}
    for stage in STAGES:
        saved = rng_states()
        torch.manual_seed(cfg.seed)  # "before": the router's initial weights drawn as the trainer seeds them
        model, tokenizer, mode = load_policy(Path(backbone_dir), declared.name, tcfg,
                                             Path(checkpoint) if stage == "after" else None, device)
        set_rng_states(saved)
        stages[stage] = probe_policy(model, tokenizer, mode, records, **settings)
        del model, mode
    out = {"backbone": backbone, "method": method, "benchmark": benchmark, "n_problems": len(records),
           "seed": cfg.seed, "checkpoint": str(checkpoint), "entropy_edges": [e for e in ENTROPY_EDGES[:-1]],
           "bins": {v: bin_labels(v) for v in VARIABLES}, **{key: v for key, v in settings.items() if key != "seed"},
           **stages, "code": code_version(), "wall_seconds": time.perf_counter() - started}
    write_json(Path(out_json), out)
    return out


# ---------------------------------------------------------------- the table and the figure


def router_table(probes: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Soft ratio per (method, stage, variable, bin) over every probe (seed) of each method, with its interval
    over seeds and problems (`stats.ratio_ci`), the mean router probability of "soft" and the counts."""
    from tarpo.stats import ratio_ci

    by_method: dict[str, list[dict[str, Any]]] = {}
    for p in probes:
        by_method.setdefault(p["method"], []).append(p)
    rows = []
    for method, runs in by_method.items():
        n_problems = min(p["n_problems"] for p in runs)
        for stage in STAGES:
            for variable in VARIABLES:
                # (seeds, problems, bins); the same problems for every seed (the benchmark's first n)
                cube = {key: np.stack([np.asarray(p[stage]["counts"][variable][key])[:n_problems] for p in runs])
                        for key in ("steps", "soft", "p_soft")}
                for b, label in enumerate(bin_labels(variable)):
                    steps, soft = cube["steps"][..., b], cube["soft"][..., b]
                    row = {"method": method, "stage": stage, "variable": variable, "bin": b, "label": label,
                           "soft_steps": int(soft.sum()), "thinking_steps": int(steps.sum()), "n_seeds": len(runs),
                           "n_problems": n_problems, "soft_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                           "p_soft": np.nan}
                    if steps.sum() > 0:
                        row["p_soft"] = float(cube["p_soft"][..., b].sum() / steps.sum())
                        ci = ratio_ci(soft, steps)
                        row.update(soft_ratio=ci.mean, ci_low=ci.low, ci_high=ci.high)
                    rows.append(row)
    return pd.DataFrame(rows, columns=ROUTER_COLUMNS)


def fig_router(table: pd.DataFrame, path: Path, title: str = "") -> Any:
    """Soft ratio (95% CI over seeds and problems; band or bars) and the router's mean probability of "soft"
    (dotted) by position, next-token entropy and correctness: each method after training, and the parent
    method's router before training (grey, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from tarpo.methods import method_names
    from tarpo.plots import _save, _theme, palette

    _theme()
    methods = list(dict.fromkeys(table.method))
    # registered methods keep their colour; arms (several per figure) get distinct ones of their own
    arms = [m for m in methods if m not in method_names()]
    pal = {**palette([m for m in methods if m not in arms]),
           **dict(zip(arms, sns.color_palette("husl", len(arms)) if arms else []))}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True, gridspec_kw={"width_ratios": [3, 2, 1]})
    names = {"position": "relative position in the thinking phase", "entropy": "next-token entropy (nats)",
             "correct": "sample's answer"}
    lines = [(m, "after", pal[m], "-") for m in methods]
    if "tarpo" in methods:
        lines.insert(0, ("tarpo", "before", "0.45", "--"))
    shown = table.dropna(subset=["soft_ratio"])
    top = min(1.0, 1.6 * float(np.nanmax([shown.soft_ratio.max(), shown.p_soft.max(), 0.01])))
    for ax, variable in zip(axes, VARIABLES):
        for i, (method, stage, colour, dash) in enumerate(lines):
            part = shown[(shown.method == method) & (shown.stage == stage) & (shown.variable == variable)]
            if part.empty:
                continue
            y = part.soft_ratio.to_numpy(dtype=float)
            low = np.clip(part.ci_low.to_numpy(dtype=float), 0, top)
            high = np.clip(part.ci_high.to_numpy(dtype=float), 0, top)
            label = f"{method}, before training" if stage == "before" else method
            if variable == "correct":  # two categories: points with error bars, side by side
                x = part.bin.to_numpy() + (i - (len(lines) - 1) / 2) * 0.8 / max(len(lines), 1)
                ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o", color=colour, ms=4, capsize=2, label=label)
                ax.plot(x, part.p_soft.to_numpy(dtype=float), "_", color=colour, ms=10)
                continue
            x = part.bin.to_numpy()
            ax.plot(x, y, dash, color=colour, marker="o", ms=3, label=label)
            ax.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
            ax.plot(x, part.p_soft.to_numpy(dtype=float), ":", color=colour, lw=1.2)
        labels = bin_labels(variable)
        if variable == "correct":
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.6, len(labels) - 0.4)
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel(names[variable])
    axes[0].set_ylim(0, top)
    axes[0].set_ylabel("soft steps / thinking steps")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls=":", color="0.3"))
    labels.append("router's mean P(soft)")
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 1.02))
    if title:
        fig.suptitle(title, y=1.08, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _save(fig, path)
    return fig


def router_outputs(probe_files: Sequence[Path], csv_path: Path, png_path: Path, title: str = "") -> pd.DataFrame:
    """The router table (CSV) and figure (PNG) from a backbone's probe JSONs."""
    import json

    from tarpo.io import atomic_write_text

    probes = [json.loads(Path(f).read_text()) for f in probe_files]
    table = router_table(probes)
    atomic_write_text(csv_path, table.to_csv(index=False))
    fig_router(table, png_path, title)
    return table
