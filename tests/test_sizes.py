"""The change of each paired difference between backbones (tarpo.sizes) and its section of the results page."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from tarpo.config import load_config
from tarpo.sizes import size_frame

from conftest import write_eval_json

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
K = 8
SEEDS = [0, 1, 2]
BENCHMARKS = {"synthetic_test_id": "id", "synthetic_test_ood": "ood"}
BASE = [1, 2, 3, 4]  # CoT's correct samples (of K) on the 4 problems, every seed and backbone
# correct samples above CoT's, per backbone, method and benchmark, by seed (the same on every problem of a seed)
GAIN = {
    ("tiny", "grpo", "synthetic_test_id"): [2, 2, 2], ("tiny", "tarpo", "synthetic_test_id"): [3, 4, 2],
    ("small", "grpo", "synthetic_test_id"): [3, 3, 3], ("small", "tarpo", "synthetic_test_id"): [4, 4, 4],
    ("tiny", "grpo", "synthetic_test_ood"): [1, 1, 1], ("tiny", "tarpo", "synthetic_test_ood"): [1, 2, 1],
    ("small", "grpo", "synthetic_test_ood"): [1, 1, 2], ("small", "tarpo", "synthetic_test_ood"): [1, 2, 2],
}


def config(**changes) -> dict:
    data = copy.deepcopy(SMOKE)
    data["backbones"]["small"] = copy.deepcopy(data["backbones"]["tiny"])
    data.update(seeds=SEEDS, methods={"grpo": {}, "tarpo": {}})
    data["evaluate"]["benchmarks"] = list(BENCHMARKS)
    data["evaluate"]["k"] = K
    data.update(changes)
    return data


def write_eval(results: Path, backbone: str, method: str, seed: int, bench: str, correct: list[int]) -> None:
    write_eval_json(results, backbone, method, seed, bench, BENCHMARKS[bench], correct, K)


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results" / "smoke"
    for backbone in ("tiny", "small"):
        for bench in BENCHMARKS:
            for seed in SEEDS:
                write_eval(root, backbone, "cot", seed, bench, BASE)
                for method in ("grpo", "tarpo"):
                    gain = GAIN[(backbone, method, bench)][seed]
                    write_eval(root, backbone, method, seed, bench, [c + gain for c in BASE])
    return root


def by_hand(change_per_seed: list[float]) -> dict[str, float]:
    """With the change the same on every problem of a seed, the interval is the t interval over seeds."""
    d = np.array(change_per_seed, dtype=float) / K
    se = d.std(ddof=1) / np.sqrt(len(d))
    if se == 0:
        return {"delta": d.mean(), "se": 0.0}
    t = sps.t.ppf(0.975, len(d) - 1)
    return {"delta": d.mean(), "ci_low": d.mean() - t * se, "ci_high": d.mean() + t * se, "se": se,
            "p_value": 2 * sps.t.sf(abs(d.mean()) / se, len(d) - 1)}


def gain(backbone: str, method: str, baseline: str, bench: str) -> list[int]:
    minus = GAIN[(backbone, baseline, bench)] if baseline != "cot" else [0, 0, 0]
    return [g - m for g, m in zip(GAIN[(backbone, method, bench)], minus, strict=True)]


def test_each_difference_changes_by_the_small_backbone_minus_the_reference_paired_by_seed(results):
    frame = size_frame(load_config(config()), results, ["tiny", "small"])
    rows = {(r.method, r.baseline, r.benchmark): r for r in frame.itertuples()}
    # GRPO and TARPO minus CoT, TARPO minus GRPO, per benchmark; one benchmark per split: no split averages
    assert set(rows) == {(m, b, bench) for m, b in [("grpo", "cot"), ("tarpo", "cot"), ("tarpo", "grpo")]
                         for bench in BENCHMARKS}
    assert (frame.reference == "tiny").all() and (frame.backbone == "small").all()
    for (method, baseline, bench), row in rows.items():
        at_tiny, at_small = gain("tiny", method, baseline, bench), gain("small", method, baseline, bench)
        assert row.delta_reference == pytest.approx(np.mean(at_tiny) / K)
        assert row.delta_backbone == pytest.approx(np.mean(at_small) / K)
        want = by_hand([s - t for s, t in zip(at_small, at_tiny, strict=True)])
        for key, value in want.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-9, abs=1e-12), (method, baseline, bench, key)
        assert row.n_seeds == 3 and row.n_problems == len(BASE)
    # TARPO - GRPO on test_id: +1, +2, 0 at tiny, +1, +1, +1 at small: change 0, +1, -1 of 8, mean 0
    assert rows[("tarpo", "grpo", "synthetic_test_id")].delta == pytest.approx(0.0)
    # GRPO - CoT on test_id grows by exactly 1 of 8 at every seed: no seed spread, p = 0, established
    grow = rows[("grpo", "cot", "synthetic_test_id")]
    assert grow.delta == pytest.approx(1 / K) and grow.se == pytest.approx(0.0) and grow.significant
    # Holm over the family's distinct tests: each adjusted p is at least the raw one; n_seeds < 2 marks none
    assert (frame.p_holm >= frame.p_value - 1e-12).all()
    one_seed = size_frame(load_config(config(seeds=[0])), results, ["tiny", "small"])
    assert len(one_seed) == 6 and not one_seed.significant.any()


def test_one_backbone_has_no_changes_and_the_page_shows_the_section_only_with_two(results, tmp_path):
    from tarpo.tables import results_page

    assert size_frame(load_config(config()), results, ["tiny"]).empty
    for backbone in ("tiny", "small"):  # the page reads each backbone's summary (rule summarise)
        from tarpo.cli import main

        out = tmp_path / "figures"
        assert main(["summarise", "--config-json", json.dumps(config()), "--backbone", backbone, "--results",
                     str(results), "--out", str(out)]) == 0
    text = results_page(load_config(config()), results, tmp_path / "page.md")
    section = text.split("## Across backbones", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| GRPO − CoT") and "test_id" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["GRPO − CoT", "synthetic_test_id", "+25.0", "+37.5"] and cells[4].startswith("**+12.5 [")
    single = copy.deepcopy(config())
    del single["backbones"]["small"]
    assert "## Across backbones" not in results_page(load_config(single), results, tmp_path / "page1.md")
