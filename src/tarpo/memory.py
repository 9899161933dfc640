"""Training memory per GPU, estimated on paper from a backbone's shape and the train config.

So a user sees before submitting whether a job fits its GPU. What one
training process holds at its peak (the trainer keeps fp32 weights and runs
bf16 autocast on a GPU; one process per GPU, each with a full copy, as in
`accelerate launch` data parallelism):

* weights: every parameter in fp32; a second copy when the method needs a
  separate reference model (full fine-tuning with beta > 0; a LoRA policy's
  reference is the same weights with adapters disabled);
* trainable state: LoRA adapters (or every weight under full fine-tuning)
  with their fp32 gradients and the two AdamW moments: 16 bytes a parameter;
* rollout: the KV cache of prompts_per_step x group_size sequences of
  max_prompt_tokens + max_new_tokens positions, in bf16;
* training forward: activations autograd keeps for the backward pass over
  the train.forward_batch sequences scored at once (all of them when 0; no
  activation checkpointing), bf16, per token and layer
  about 7h + 2 kv + 4 i values (norm inputs, q/k/v, attention output, MLP
  inputs, gate, up, their product), plus the fp32 logits and log-softmax of
  the completion positions.

The rollout's KV cache is freed before the training forward, so the peak is
the larger of the two phases. Activations dominate at the configured maxima;
the table also gives the longest completion that fits, because the
configured max_new_tokens is a cap rather than a typical length.
This is an estimate (allocator fragmentation, CUDA context and temporary
buffers add a few GB); `perf/` measures what it can.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from tarpo.config import Config, TrainConfig, load_config

GIB = 1024**3
FP32, BF16 = 4, 2
CUDA_OVERHEAD_GIB = 3.0  # CUDA context, allocator slack, temporaries


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    qkv_bias: bool  # Qwen2 has biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


# Published shapes (config.json on the hub) of the paper's backbones, so the
# estimate works offline, before anything is downloaded.
HUB_SHAPES: dict[str, Shape] = {
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(151936, 1536, 8960, 28, 12, 2, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-3B-Instruct": Shape(151936, 2048, 11008, 36, 16, 2, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-7B-Instruct": Shape(152064, 3584, 18944, 28, 28, 4, tied=False, qkv_bias=True),
    "meta-llama/Llama-3.2-1B-Instruct": Shape(128256, 2048, 8192, 16, 32, 8, tied=True, qkv_bias=False),
    "meta-llama/Llama-3.1-8B-Instruct": Shape(128256, 4096, 14336, 32, 32, 8, tied=False, qkv_bias=False),
}


def shape_from_hf_config(config: Any) -> Shape:
    """A Shape from a transformers config object (Qwen2 / Llama)."""
    return Shape(config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                 config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                 tied=bool(getattr(config, "tie_word_embeddings", False)),
                 qkv_bias=config.model_type == "qwen2")


def linear_shapes(s: Shape) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear layer of one decoder layer, by module name."""
    return {"q_proj": (s.hidden, s.hidden), "k_proj": (s.hidden, s.kv_dim), "v_proj": (s.hidden, s.kv_dim),
            "o_proj": (s.hidden, s.hidden), "gate_proj": (s.hidden, s.intermediate),
            "up_proj": (s.hidden, s.intermediate), "down_proj": (s.intermediate, s.hidden)}


def parameter_count(s: Shape) -> int:
    per_layer = sum(i * o for i, o in linear_shapes(s).values()) + 2 * s.hidden  # + two RMSNorms
    if s.qkv_bias:
        per_layer += s.hidden + 2 * s.kv_dim
    embeddings = s.vocab * s.hidden * (1 if s.tied else 2)
    return embeddings + s.layers * per_layer + s.hidden  # + final norm


def lora_parameter_count(s: Shape, r: int, target_modules: tuple[str, ...] | list[str]) -> int:
    shapes = linear_shapes(s)
    unknown = [m for m in target_modules if m not in shapes]
    if unknown:
        raise ValueError(f"LoRA target modules {unknown} are not linear layers of this model ({', '.join(shapes)})")
    return s.layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules)


@dataclass(frozen=True)
class Estimate:
    """Bytes per training process (GPU) at its peak, by part."""

    weights: int
    trainable: int
    kv_cache: int
    activations: int
    logits: int

    @property
    def rollout_peak(self) -> int:
        return self.weights + self.trainable + self.kv_cache

    @property
    def train_peak(self) -> int:
        return self.weights + self.trainable + self.activations + self.logits

    @property
    def total(self) -> int:
        return max(self.rollout_peak, self.train_peak) + int(CUDA_OVERHEAD_GIB * GIB)


def estimate(s: Shape, t: TrainConfig, new_tokens: int | None = None) -> Estimate:
    """Peak memory of one training process for backbone shape `s` under train config `t`."""
    new_tokens = t.max_new_tokens if new_tokens is None else new_tokens
    params = parameter_count(s)
    separate_reference = t.adapter == "full" and t.beta > 0
    weights = params * FP32 * (2 if separate_reference else 1)
    trainable_params = params if t.adapter == "full" else lora_parameter_count(s, t.lora.r, t.lora.target_modules)
    trainable = trainable_params * (FP32 + 2 * FP32)  # fp32 gradient + two AdamW moments
    if t.adapter == "lora":
        trainable += trainable_params * FP32  # the adapters' own weights
    sequences = t.prompts_per_step * t.group_size
    positions = t.max_prompt_tokens + new_tokens
    kv_cache = 2 * s.layers * s.kv_dim * positions * sequences * BF16
    scored = min(t.forward_batch or sequences, sequences)  # sequences in one forward/backward pass
    per_token_layer = 7 * s.hidden + 2 * s.kv_dim + 4 * s.intermediate
    activations = s.layers * per_token_layer * positions * scored * BF16
    logits = 2 * scored * new_tokens * s.vocab * FP32  # fp32 logits + the log-softmax autograd keeps
    return Estimate(weights, trainable, kv_cache, activations, logits)


def longest_completion_that_fits(s: Shape, t: TrainConfig, gpu_gib: float) -> int:
    """The largest max_new_tokens (a multiple of 64, up to the configured one) whose estimate fits; 0 if none."""
    best = 0
    for n in range(64, t.max_new_tokens + 1, 64):
        if estimate(s, t, n).total <= gpu_gib * GIB:
            best = n
    return best


def backbone_shape(cfg: Config, name: str) -> Shape | None:
    bb = cfg.backbones[name]
    if bb.kind == "hub":
        return HUB_SHAPES.get(bb.repo_id)
    m = bb.model
    # the tokenizer's size is fixed when the backbone is built; the configured vocabulary is its upper bound
    return Shape(m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads,
                 tied=True, qkv_bias=True)


def memory_table(cfg: Config, gpu_gib: float) -> list[dict[str, Any]]:
    """One row per (backbone, method) that trains: the estimate's parts in GiB, the total and whether it fits."""
    rows = []
    for name in cfg.backbones:
        shape = backbone_shape(cfg, name)
        if shape is None:
            continue
        gpus = max(1, cfg.resources_for(name, "train").gpus)
        for method in [*cfg.methods, *cfg.ablations]:  # ablation arms train too
            t = cfg.train_config(name, method)
            e = estimate(shape, t)
            rows.append({
                "backbone": name, "method": method, "adapter": t.adapter,
                "params_B": parameter_count(shape) / 1e9,
                "sequences": t.prompts_per_step * t.group_size,
                "forward_batch": min(t.forward_batch or t.prompts_per_step * t.group_size,
                                     t.prompts_per_step * t.group_size),
                "positions": t.max_prompt_tokens + t.max_new_tokens,
                "weights": e.weights / GIB, "trainable": e.trainable / GIB, "kv_cache": e.kv_cache / GIB,
                "activations": e.activations / GIB, "logits": e.logits / GIB, "total": e.total / GIB,
                "gpus": gpus, "fits": e.total <= gpu_gib * GIB,
                "longest_fit": longest_completion_that_fits(shape, t, gpu_gib),
            })
    return rows


def markdown(rows: list[dict[str, Any]], config_path: str, gpu_gib: float) -> str:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty:
        return f"No backbone of {config_path} has a known shape.\n"
    frame["fits"] = frame["fits"].map({True: "yes", False: "**no**"})
    frame = frame.rename(columns={
        "params_B": "params (B)", "sequences": "seqs/rollout", "forward_batch": "seqs/forward", "positions": "prompt+new",
        "weights": "weights", "trainable": "trainable+grad+Adam", "kv_cache": "KV cache (rollout)",
        "activations": "activations", "logits": "logits", "total": "peak (GiB)", "gpus": "GPUs/job",
        "fits": f"fits {gpu_gib:g} GiB", "longest_fit": "longest max_new_tokens that fits"})
    head = (f"Estimated training memory per GPU (GiB) for `{config_path}` against {gpu_gib:g} GiB GPUs "
            f"(`python -m tarpo.memory --config {config_path} --gpu-gib {gpu_gib:g}`; the model in "
            "src/tarpo/memory.py). Each process holds a full copy (data parallelism), so more GPUs per job "
            "do not lower this figure; they raise throughput. Peak = the larger of rollout and training "
            f"phase + {CUDA_OVERHEAD_GIB:g} GiB CUDA overhead, at the configured maximum lengths.\n\n")
    return head + frame.to_markdown(index=False, floatfmt=".1f") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tarpo.memory", description="Estimate training memory per GPU for every backbone and method "
        "of a config, before submitting.", epilog="example:\n  python -m tarpo.memory --config config/paper.yaml "
        "--gpu-gib 80", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/paper.yaml", help="workflow config file")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (80: A100/H100 80GB)")
    parser.add_argument("--out", help="write the markdown table here instead of printing it")
    args = parser.parse_args(argv)
    text = markdown(memory_table(load_config(args.config), args.gpu_gib), args.config, args.gpu_gib)
    if args.out:
        from tarpo.io import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
