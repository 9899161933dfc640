"""TARPO's router probe: bins by hand, counts that add up, the pooled table's ratios, the figure, and a probe
of a real (tiny) policy whose router is known: a coin, or the head at its initial bias."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tarpo.config import TrainConfig
from tarpo.methods import build_mode
from tarpo.router_probe import (
    ENTROPY_EDGES,
    add_sample,
    bin_labels,
    empty_counts,
    probe_policy,
    router_outputs,
    router_table,
    step_bins,
)

from conftest import format_corpus

HIDDEN = 32


def test_each_step_falls_in_the_bins_worked_by_hand():
    bins = step_bins(4, np.array([0.01, 0.1, 0.6, 3.0, 9.0]), correct=True)
    # position: floor((t + 1/2) / 4 * 10) = 1, 3, 6, 8; the fifth entropy is past the thinking phase
    assert bins["position"].tolist() == [1, 3, 6, 8]
    assert bins["entropy"].tolist() == [0, 1, 3, 5]  # 0-0.05, 0.05-0.2, 0.5-1, >2
    assert bins["correct"].tolist() == [1, 1, 1, 1]
    # a bin's lower edge belongs to it
    assert step_bins(2, np.array([0.05, 2.0]), correct=False)["entropy"].tolist() == [1, 5]
    assert bin_labels("entropy")[0] == "0-0.05" and bin_labels("entropy")[-1] == ">2"
    assert len(bin_labels("entropy")) == len(ENTROPY_EDGES) - 1 and len(bin_labels("position")) == 10


def test_a_samples_steps_are_counted_once_under_every_variable():
    counts = empty_counts(2)
    add_sample(counts, 1, 3, np.array([0.0, 0.3, 1.5, 0.0]), np.array([1.0, 0.0, 1.0, 1.0]),
               np.array([0.5, 0.25, 0.75, 0.9]), correct=False)
    add_sample(counts, 1, 0, np.zeros(2), np.ones(2), np.ones(2), correct=True)  # no thinking steps: nothing
    for variable in ("position", "entropy", "correct"):
        c = counts[variable]
        assert c["steps"][0].sum() == 0  # problem 0 untouched
        assert c["steps"][1].sum() == 3 and c["soft"][1].sum() == 2 and c["p_soft"][1].sum() == pytest.approx(1.5)
    assert counts["correct"]["steps"][1].tolist() == [3, 0]
    assert counts["entropy"]["soft"][1].tolist() == [1, 0, 0, 0, 1, 0]
    assert counts["position"]["steps"][1].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]  # bins 1, 5, 8


def _probe(method: str, soft: list[list[float]], steps: list[list[float]], p_soft: list[list[float]]) -> dict:
    """A probe JSON whose every variable has the given per-problem counts in its first bin."""
    def counts(variable):
        n_bins = len(bin_labels(variable))
        pad = lambda rows: [r + [0.0] * (n_bins - 1) for r in rows]  # noqa: E731
        return {"steps": pad(steps), "soft": pad(soft), "p_soft": pad(p_soft)}

    stage = {"counts": {v: counts(v) for v in ("position", "entropy", "correct")}, "pass@1": 0.5}
    return {"method": method, "n_problems": len(steps), "before": stage, "after": stage}


def test_the_table_pools_seeds_and_problems_into_one_ratio_with_its_interval():
    probes = [_probe("tarpo", soft=[[1], [3]], steps=[[10], [10]], p_soft=[[1.5], [2.5]]),
              _probe("tarpo", soft=[[2], [2]], steps=[[10], [20]], p_soft=[[2.0], [4.0]])]
    table = router_table(probes)
    first = table[(table.stage == "after") & (table.variable == "position") & (table.bin == 0)].iloc[0]
    assert first.soft_steps == 8 and first.thinking_steps == 50 and first.n_seeds == 2 and first.n_problems == 2
    assert first.soft_ratio == pytest.approx(8 / 50)
    assert first.p_soft == pytest.approx(10 / 50)
    assert first.ci_low < first.soft_ratio < first.ci_high
    empty = table[(table.variable == "position") & (table.bin == 1)]
    assert empty.soft_ratio.isna().all() and (empty.thinking_steps == 0).all()
    # every (method, stage, variable, bin) once
    assert len(table) == 2 * (10 + len(ENTROPY_EDGES) - 1 + 2)


def test_router_outputs_write_a_table_that_parses_and_a_figure(tmp_path):
    files = []
    for seed, method in enumerate(["tarpo", "tarpo", "random_router"]):
        path = tmp_path / f"{method}{seed}.json"
        path.write_text(json.dumps(_probe(method, [[1 + seed], [2]], [[10], [12]], [[1.0], [1.2]])))
        files.append(path)
    router_outputs(files, tmp_path / "router.csv", tmp_path / "router.png", "tiny")
    table = pd.read_csv(tmp_path / "router.csv")
    assert set(table.method) == {"tarpo", "random_router"}
    assert (tmp_path / "router.png").stat().st_size > 10_000
    assert (tmp_path / "router.png").read_bytes()[:4] == b"\x89PNG"


def _records(n):
    return [{"question": q, "answer": c.split("#### ")[-1]} for q, c in format_corpus(n, seed=7)]


def _tarpo(**train):
    torch.manual_seed(0)
    return build_mode("tarpo", TrainConfig(**train), HIDDEN)


def test_a_probe_of_a_coin_router_finds_its_rate_everywhere(format_model, tiny_tokenizer):
    p = 0.3
    mode = _tarpo(action_router="random", random_soft_ratio=p)
    out = probe_policy(format_model, tiny_tokenizer, mode, _records(12), k=4, temperature=1.0, max_new_tokens=30,
                       max_prompt_tokens=256, seed=0, batch_size=8)
    counts = {v: {key: np.asarray(a) for key, a in c.items()} for v, c in out["counts"].items()}
    total = counts["position"]["steps"].sum()
    assert total > 300
    for variable, c in counts.items():  # the same steps under every variable
        assert c["steps"].sum() == total and c["soft"].sum() == counts["position"]["soft"].sum(), variable
        assert c["steps"].shape == (12, len(bin_labels(variable)))
        # the coin's probability at every step, exactly
        assert c["p_soft"].sum() == pytest.approx(p * c["steps"].sum(), rel=1e-5)
    soft = counts["position"]["soft"].sum()
    assert abs(soft - total * p) < 5 * math.sqrt(total * p * (1 - p)), (soft, total)
    assert 0.0 <= out["pass@1"] <= 1.0


def test_a_probe_of_the_initial_router_finds_its_bias(format_model, tiny_tokenizer):
    """The learned head at bias 2.2 with zero weights: P(soft) = sigmoid(-2.2) at every step, whatever h_t."""
    mode = _tarpo(action_bias_hard=2.2, action_init_std=0.0)
    out = probe_policy(format_model, tiny_tokenizer, mode, _records(8), k=4, temperature=1.0, max_new_tokens=30,
                       max_prompt_tokens=256, seed=1, batch_size=8)
    c = {key: np.asarray(a) for key, a in out["counts"]["entropy"].items()}
    assert c["p_soft"].sum() / c["steps"].sum() == pytest.approx(1 / (1 + math.exp(2.2)), rel=1e-5)
    # the same seed draws the same samples: the probe is reproducible
    again = probe_policy(format_model, tiny_tokenizer, mode, _records(8), k=4, temperature=1.0, max_new_tokens=30,
                         max_prompt_tokens=256, seed=1, batch_size=8)
    assert again == out
