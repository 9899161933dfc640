"""The training-memory estimate (src/tarpo/memory.py): its counts against real models, its sums by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tarpo.config import TrainConfig, load_config
from tarpo.memory import (
    BF16,
    FP32,
    GIB,
    HUB_SHAPES,
    Shape,
    estimate,
    lora_parameter_count,
    main,
    markdown,
    memory_table,
    parameter_count,
    shape_from_hf_config,
)
from tarpo.policy import add_lora

REPO = Path(__file__).resolve().parents[1]


def _qwen(tied: bool = True) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def _llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False))


@pytest.mark.parametrize("build", [lambda: _qwen(True), lambda: _qwen(False), _llama], ids=["qwen2", "qwen2-untied",
                                                                                          "llama"])
def test_parameter_count_equals_the_model_built_from_the_same_shape(build):
    model = build()
    assert parameter_count(shape_from_hf_config(model.config)) == sum(p.numel() for p in model.parameters())


def test_hub_shapes_give_the_published_parameter_counts():
    # the counts the hub's model cards / safetensors metadata state
    published = {"Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304, "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
                 "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512, "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
                 "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248}
    assert {k: parameter_count(s) for k, s in HUB_SHAPES.items()} == published


def test_lora_count_equals_peft_trainable_parameters():
    model = _qwen()
    cfg = TrainConfig(adapter="lora")
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=4))
    peft_model = add_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_parameter_count(shape_from_hf_config(model.config), 4, cfg.lora.target_modules) == trainable


def test_unknown_lora_target_is_named():
    with pytest.raises(ValueError, match="qkv"):
        lora_parameter_count(HUB_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"], 8, ["qkv"])


def test_estimate_parts_by_hand():
    s = Shape(vocab=100, hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, tied=True, qkv_bias=False)
    t = TrainConfig(adapter="full", beta=0.0, prompts_per_step=2, group_size=3, max_prompt_tokens=5, max_new_tokens=7)
    e = estimate(s, t)
    p = parameter_count(s)  # 100*8 + 2*(8*8 + 8*4 + 8*4 + 8*8 + 3*8*16 + 2*8) + 8 = 1992
    assert p == 1992
    assert e.weights == p * FP32  # beta 0: no separate reference
    assert e.trainable == p * 3 * FP32  # gradient + two AdamW moments
    seqs, positions, kv_dim = 6, 12, 4
    assert e.kv_cache == 2 * 2 * kv_dim * positions * seqs * BF16
    assert e.activations == 2 * (7 * 8 + 2 * kv_dim + 4 * 16) * positions * seqs * BF16
    assert e.logits == 2 * seqs * 7 * 100 * FP32
    assert e.total == max(e.rollout_peak, e.train_peak) + 3 * GIB
    # scoring two sequences at a time: a third of the activations and logits, the same rollout
    chunked = estimate(s, dataclasses.replace(t, forward_batch=2))
    assert (chunked.activations, chunked.logits) == (e.activations // 3, e.logits // 3)
    assert chunked.kv_cache == e.kv_cache and chunked.total <= e.total
    # a separate reference doubles the weights only with full fine-tuning and beta > 0
    assert estimate(s, dataclasses.replace(t, beta=0.1)).weights == 2 * p * FP32
    assert estimate(s, dataclasses.replace(t, adapter="lora", beta=0.1)).weights == p * FP32


def test_paper_table_covers_every_backbone_and_method_and_matches_docs():
    cfg = load_config(REPO / "config" / "paper.yaml")
    rows = memory_table(cfg, 80.0)
    assert {(r["backbone"], r["method"]) for r in rows} == {(b, m) for b in cfg.backbones for m in cfg.methods}
    by = {(r["backbone"], r["method"]): r for r in rows}
    # the 7B asks for two GPUs per job, the 1.5B for one (config/paper.yaml resources)
    assert by[("qwen2.5-7b", "grpo")]["gpus"] == 2 and by[("qwen2.5-1.5b", "grpo")]["gpus"] == 1
    assert by[("qwen2.5-7b", "grpo")]["total"] > by[("qwen2.5-1.5b", "grpo")]["total"]
    # the committed table is what the estimator prints for the paper config (regenerate: README, "Memory")
    expected = markdown(rows, "config/paper.yaml", 80.0)
    assert (REPO / "docs" / "memory.md").read_text() == expected


def test_cli_writes_the_table(tmp_path, capsys):
    out = tmp_path / "m.md"
    assert main(["--config", str(REPO / "config" / "smoke.yaml"), "--gpu-gib", "24", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| tiny" in text and "fits 24 GiB" in text
    assert main(["--config", str(REPO / "config" / "smoke.yaml")]) == 0
    assert "| tiny" in capsys.readouterr().out
