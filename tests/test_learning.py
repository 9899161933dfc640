"""End to end: GRPO and TARPO raise the training reward on a fixed prompt set, and ATP-Latent's coherence reward raises coherence (about 40 s each on one core).

A tiny Qwen2 is warm-started for a few seconds on one-step synthetic problems
(imitating demonstrations with 30% slips), so it solves about a quarter of them. RL then trains on the same 4 unseen
problems every step (8 completions each); the mean reward of the last 5 of 40
steps must exceed that of the first 5 by more than 0.2. Everything else is
the real path: `GrpoTrainer.run` with its loss, KL to the reference, weight
decay, clipping and cosine schedule. The policy learning rate is scaled up
for a 2-layer model and 40 steps; the head's keeps its default.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from tarpo.backbone import build_tiny_model, build_tokenizer, tokenizer_corpus, warm_start
from tarpo.config import SyntheticDataConfig, TinyModelConfig, WarmStartConfig, load_config
from tarpo.data.synthetic import generate_split
from tarpo.io import write_jsonl
from tarpo.trainer import GrpoTrainer

# Explicit sizes: the test must not move with the task's or the model's defaults.
DATA = {"seed": 1234, "n_train": 400, "n_test_id": 32, "n_test_ood": 8, "min_steps": 1, "max_steps": 1,
        "max_operand": 9, "demo_error_rate": 0.3}
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "vocab_size": 300}
N_PROMPTS, STEPS, WINDOW = 4, 40, 5
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
    cfg = load_config({"name": "learning", "seed": 0, "backbones": {"tiny": {"model": MODEL}}, "train": TRAIN})
    trainer = GrpoTrainer(cfg, "tiny", method, backbone_dir, data_dir, tmp_path / method / "checkpoint")
    with one_thread():
        trainer.run()
    first, last, curve = first_and_last(trainer.history, "reward_mean")
    print(f"{method}: first {WINDOW} steps {first:.3f}, last {WINDOW} {last:.3f}; rewards {curve}")
    assert 0.0 < first < 0.6, f"the warm start should solve some but not most prompts: {curve}"
    assert last - first > 0.2, f"{method} did not learn: {curve}"
    if method == "tarpo":  # the soft path ran during training
        assert sum(h["soft_ratio"] for h in trainer.history) > 0


def test_coherence_reward_raises_atp_latent_coherence(learning_setup, tmp_path):
    """ATP-Latent end to end: a short SFT stage (`run_sft`, 50 steps with the one step latent, 50 fully latent)
    on the warm start's problems, then RL with the coherence-only reward (accuracy weight 0) on the fixed prompts.
    The coherence the frozen decoder reads from the latents must rise by more than 0.2, with the latent block
    kept (no collapse to the empty block, whose coherence is 1 by definition)."""
    from tarpo.atp_sft import run_sft

    backbone_dir, data_dir = learning_setup
    sft_data = tmp_path / "sft_data"
    sft_data.mkdir()
    write_jsonl(sft_data / "train.jsonl", generate_split(SyntheticDataConfig(**DATA), "train"))
    atp = {"atp_max_steps": 1, "accuracy_weight": 0.0, "coherence_weight": 1.0}
    cfg = load_config({"name": "learning", "seed": 0, "backbones": {"tiny": {"model": MODEL}}, "train": TRAIN,
                       "methods": {"atp_latent": atp},
                       "atp_sft": {"steps_per_stage": 50, "latent_steps": 50, "batch_size": 16,
                                   "learning_rate": 3e-3, "eval_problems": 0}})
    with one_thread():
        run_sft(cfg, "tiny", backbone_dir, sft_data, tmp_path / "sft")
        trainer = GrpoTrainer(cfg, "tiny", "atp_latent", tmp_path / "sft", data_dir, tmp_path / "atp" / "checkpoint")
        trainer.run()
    first, last, curve = first_and_last(trainer.history, "coherence")
    print(f"atp_latent: coherence first {WINDOW} steps {first:.3f}, last {WINDOW} {last:.3f}; {curve}")
    assert first < 0.6, f"a short SFT should leave the latents partly unreadable: {curve}"
    assert last - first > 0.2, f"the coherence reward did not raise coherence: {curve}"
    assert min(h["active_latents"] for h in trainer.history[-WINDOW:]) > 1.0, "the latent block collapsed"
