"""End to end: GRPO and TARPO raise the training reward on a fixed prompt set, and ATP-Latent's coherence reward
raises coherence (3 training seeds each; about 15-25 s a test on one core, after a shared 17 s warm start).

A tiny Qwen2 is warm-started for a few seconds on one-step synthetic problems
(imitating demonstrations with 30% slips), so it solves about a quarter of them. RL then trains on the same 4
unseen problems every step (8 completions each) for 30 steps. Everything else is the real path:
`GrpoTrainer.run` with its loss, KL to the reference, weight decay, clipping and cosine schedule. The policy
learning rate is scaled up for a 2-layer model and 30 steps (at 1e-3 ATP-Latent's coherence collapsed mid-run
on one warm start); the head's keeps its default.

The verdict is over SEEDS, never one run: float reductions differ between CPUs (AVX2, AVX-512), and a few
sampled steps turn that into another trajectory, as different as another seed (issue 20: a GRPO run that gains
0.45 here gained 0.175 on an AVX-512 Xeon and failed the old single-run "gain > 0.2"; here 2 of 6 ATP-Latent
seeds failed it too). Each run's `trend` is the t statistic of its curve's least-squares slope: about N(0, 1)
when the policy does not move, so the mean over 3 seeds has a standard deviation near 0.6, and MIN_TREND = 3 is
5 of those above zero. Measured on one x86 CPU (issue 20), seeds 0-2 on this warm start, on two warm starts
whose initial weights were scaled by 1 + 1e-6 noise (another CPU's rounding, emulated) and on one with another
seed; mean trend per set of 3 seeds (in brackets single runs, seeds 3-5 on this warm start included):
  GRPO 8.9, 7.2, 7.4, 5.7 (4.0-12.0); TARPO 6.2, 7.1, 8.5, 5.4 (3.5-10.6); ATP-Latent 9.4, 10.3, 5.0, 8.6
  (2.3-13.9). With the update broken (learning rate 0, advantages zeroed, negated or shuffled
  across completions) single runs give -7.2 to 1.3 and the means -5.0 to 0.3.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics

import pytest
import torch

from tarpo.backbone import build_tiny_model, build_tokenizer, tokenizer_corpus, warm_start
from tarpo.config import SyntheticDataConfig, TinyModelConfig, WarmStartConfig, load_config
from tarpo.data.synthetic import generate_split
from tarpo.io import write_jsonl
from tarpo.trainer import GrpoTrainer

pytestmark = [pytest.mark.slow]  # trains 3 seeds per method

# Explicit sizes: the test must not move with the task's or the model's defaults.
DATA = {"seed": 1234, "n_train": 400, "n_test_id": 32, "n_test_ood": 8, "min_steps": 1, "max_steps": 1,
        "max_operand": 9, "demo_error_rate": 0.3}
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "vocab_size": 300}
N_PROMPTS, STEPS, WINDOW = 4, 30, 5
SEEDS = (0, 1, 2)
MIN_TREND = 3.0  # for the mean over SEEDS of `trend`; the module docstring says where it sits
TRAIN = {"adapter": "full", "steps": STEPS, "prompts_per_step": N_PROMPTS, "group_size": 8, "temperature": 1.0,
         "max_prompt_tokens": 256, "max_new_tokens": 40, "learning_rate": 5e-4, "warmup_ratio": 0.1,
         "checkpoint_every": 0, "log_samples": 1}


@contextlib.contextmanager
def one_thread():
    """Models this small are no faster on more threads, and oversubscribing a shared CPU is very slow.

    `warm_start` sets torch's threads from OMP_NUM_THREADS, so both are set, then restored.
    """
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env


def first_and_last(history: list[dict], key: str) -> tuple[float, float, str]:
    """Mean of `key` over the first and the last WINDOW steps of a full run, and the whole curve as text."""
    values = [h[key] for h in history]
    assert len(values) == STEPS
    curve = " ".join(f"{v:.2f}" for v in values)
    return sum(values[:WINDOW]) / WINDOW, sum(values[-WINDOW:]) / WINDOW, curve


def trend(values: list[float]) -> float:
    """The least-squares slope of `values` over the steps in units of its standard error: a t statistic, near
    N(0, 1) for a run whose policy does not move (its steps are then independent draws of one policy)."""
    steps = range(len(values))
    slope, intercept = statistics.linear_regression(steps, values)
    residual = sum((v - intercept - slope * x) ** 2 for x, v in zip(steps, values)) / (len(values) - 2)
    spread = sum((x - statistics.fmean(steps)) ** 2 for x in steps)
    return slope / math.sqrt(max(residual, 1e-12) / spread)


def verdict(histories: list[list[dict]], key: str) -> tuple[float, float, str]:
    """Over the runs of SEEDS: the median first-window mean of `key`, the mean `trend`, and a line per run."""
    runs = [(*first_and_last(h, key), trend([step[key] for step in h])) for h in histories]
    lines = "\n".join(f"seed {s}: first {first:.3f}, last {last:.3f}, trend {t:.1f}; {curve}"
                      for s, (first, last, curve, t) in zip(SEEDS, runs))
    return statistics.median(r[0] for r in runs), statistics.fmean(r[3] for r in runs), lines


def train(cfg: dict, method: str, backbone_dir, data_dir, out) -> list[dict]:
    """One RL run of `method` on the fixed prompts; its per-step metrics."""
    trainer = GrpoTrainer(load_config(cfg), "tiny", method, backbone_dir, data_dir, out / "checkpoint")
    with one_thread():
        trainer.run()
    return trainer.history


@pytest.fixture(scope="module")
def learning_setup(tmp_path_factory):
    """(backbone dir, data dir holding only the N_PROMPTS training prompts)."""
    root = tmp_path_factory.mktemp("learning")
    data = SyntheticDataConfig(**DATA)
    records = generate_split(data, "train")
    with one_thread():
        tokenizer = build_tokenizer(tokenizer_corpus(records), MODEL["vocab_size"])
        torch.manual_seed(0)
        model = build_tiny_model(TinyModelConfig(**MODEL), tokenizer)
        warm_start(model, tokenizer, records, WarmStartConfig(steps=400, batch_size=16, learning_rate=3e-3), seed=0)
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", generate_split(data, "test_id")[:N_PROMPTS])  # unseen in the warm start
    return root / "backbone", root / "data"


@pytest.mark.parametrize("method", ["grpo", "tarpo"])
def test_training_raises_the_reward_on_fixed_prompts(learning_setup, tmp_path, method):
    backbone_dir, data_dir = learning_setup
    histories = [train({"name": "learning", "seed": seed, "backbones": {"tiny": {"model": MODEL}}, "train": TRAIN},
                       method, backbone_dir, data_dir, tmp_path / f"seed{seed}") for seed in SEEDS]
    first, rise, runs = verdict(histories, "reward_mean")
    print(f"{method}: median first {WINDOW} steps {first:.3f}, mean trend {rise:.1f}\n{runs}")
    assert 0.0 < first < 0.6, f"the warm start should solve some but not most prompts:\n{runs}"
    assert rise > MIN_TREND, f"{method} did not learn:\n{runs}"
    if method == "tarpo":  # the soft path ran during training
        assert all(sum(h["soft_ratio"] for h in history) > 0 for history in histories)


def test_coherence_reward_raises_atp_latent_coherence(learning_setup, tmp_path):
    """ATP-Latent end to end, per seed: a short SFT stage (`run_sft`, 25 steps with the one step latent, 25 fully
    latent) on the warm start's problems, then RL with the coherence-only reward (accuracy weight 0) on the fixed
    prompts. The coherence the frozen decoder reads from the latents must rise (mean trend above MIN_TREND),
    with the latent block kept in every run (no collapse to the empty block, whose coherence is 1 by definition)."""
    from tarpo.atp_sft import run_sft

    backbone_dir, data_dir = learning_setup
    sft_data = tmp_path / "sft_data"
    sft_data.mkdir()
    write_jsonl(sft_data / "train.jsonl", generate_split(SyntheticDataConfig(**DATA), "train"))
    atp = {"atp_max_steps": 1, "accuracy_weight": 0.0, "coherence_weight": 1.0}
    histories = []
    for seed in SEEDS:
        cfg = {"name": "learning", "seed": seed, "backbones": {"tiny": {"model": MODEL}}, "train": TRAIN,
               "methods": {"atp_latent": atp},
               "atp_sft": {"steps_per_stage": 25, "latent_steps": 25, "batch_size": 16, "learning_rate": 3e-3,
                           "eval_problems": 0}}
        with one_thread():
            run_sft(load_config(cfg), "tiny", backbone_dir, sft_data, tmp_path / f"sft{seed}")
        histories.append(train(cfg, "atp_latent", tmp_path / f"sft{seed}", data_dir, tmp_path / f"atp{seed}"))
    first, rise, runs = verdict(histories, "coherence")
    print(f"atp_latent: coherence median first {WINDOW} steps {first:.3f}, mean trend {rise:.1f}\n{runs}")
    assert first < 0.6, f"a short SFT should leave the latents partly unreadable:\n{runs}"
    assert rise > MIN_TREND, f"the coherence reward did not raise coherence:\n{runs}"
    assert all(min(h["active_latents"] for h in history[-WINDOW:]) > 1.0 for history in histories), \
        f"the latent block collapsed:\n{runs}"
