"""Typed run configuration.

The workflow's YAML config is one nested mapping; every section maps onto a
dataclass below, and every field is one documented knob with its default
(in the style of TRL's `GRPOConfig`). Loading is strict: an unknown or
mistyped key is an error that names it. The JSON schema that Snakemake
validates against (`workflow/schemas/config.schema.yaml`) is generated from
these classes (`tarpo schema`), so the two cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tarpo.errors import ConfigError
from tarpo.layout import RESULTS_DIR, check_root_name, default_results_page, results_root
from tarpo.methods import get_method, method_names

# Numeric bounds of a field, by their JSON-schema names: they go into the generated schema and
# `from_dict` enforces them, so both Snakemake and the `tarpo` CLI reject a degenerate value up front.
BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _doc(text: str, schema: str = "", *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, min_items: int | None = None, unique: bool = False, **kw: Any) -> Any:
    """A documented field. `schema` names a dataclass whose fields a free-form override mapping must use;
    ge / gt / le / lt bound a number (each item of a list of numbers); min_items / unique constrain a list."""
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    bounds = {BOUNDS[k]: v for k, v in given.items() if v is not None}
    lists = {k: v for k, v in (("minItems", min_items), ("uniqueItems", unique or None)) if v is not None}
    return field(metadata={"doc": text, "schema": schema, "bounds": bounds, "lists": lists}, **kw)


WEIGHT_DECAY_DOC = ("AdamW weight decay of matrices; biases, norm weights, embeddings and a mode's heads are never "
                    "decayed (one rule for every optimiser: tarpo.optim.decay_groups).")


@dataclass
class SyntheticDataConfig:
    """Multi-step arithmetic word problems in GSM8K format, generated from a seed."""

    seed: int = _doc("Seed of the generator; the same seed gives byte-identical files.", ge=0, default=1234)
    n_train: int = _doc("Training problems.", ge=1, default=4000)
    n_val: int = _doc("Validation problems (in distribution, disjoint from train and test_id): hyperparameters are "
                      "chosen on them, never on a test split.", ge=1, default=500)
    n_test_id: int = _doc("In-distribution test problems (disjoint from train).", ge=1, default=500)
    n_test_ood: int = _doc("Out-of-distribution test problems (longer chains).", ge=1, default=500)
    min_steps: int = _doc("Fewest arithmetic steps in a train / test_id problem.", ge=1, default=2)
    max_steps: int = _doc("Most arithmetic steps in a train / test_id problem.", ge=1, default=4)
    max_operand: int = _doc("Largest add / subtract operand and starting amount in a train / test_id problem.", ge=2, default=9)
    max_value: int = _doc("Every intermediate value and answer stays in [1, max_value] (all splits).", ge=4, default=99)
    ood_shift: Literal["order", "length"] = _doc(
        "What makes test_ood out of distribution. 'order': an operation order train never shows (a multiplication "
        "directly followed by a subtraction; train and test_id never contain it), same lengths and operands. "
        "'length': longer chains (ood_min_steps..ood_max_steps) and starts up to ood_max_operand.",
        default="order",
    )
    ood_min_steps: int = _doc("'length' shift: fewest steps in a test_ood problem (must exceed max_steps).", ge=1,
                              default=5)
    ood_max_steps: int = _doc("'length' shift: most steps in a test_ood problem.", ge=1, default=6)
    ood_max_operand: int = _doc("'length' shift: largest starting amount in a test_ood problem (at least max_operand).",
                                ge=2, default=9)
    demo_error_rate: float = _doc(
        "Chance that a step of a train demonstration (what the warm start imitates) is off by one; "
        "the chain goes on from the slip. RL with the exact answer reward has this to unlearn. 0: clean.",
        ge=0, lt=1, default=0.3,
    )


@dataclass
class TinyModelConfig:
    """Shape of the embedded Qwen2 backbone and its tokenizer."""

    vocab_size: int = _doc("Byte-level BPE vocabulary size trained on the synthetic corpus.", ge=1, default=512)
    hidden_size: int = _doc("Model width d.", ge=1, default=128)
    num_layers: int = _doc("Decoder layers.", ge=1, default=4)
    num_heads: int = _doc("Attention heads.", ge=1, default=4)
    num_kv_heads: int = _doc("Key/value heads (grouped-query attention as in Qwen2).", ge=1, default=2)
    intermediate_size: int = _doc("MLP width.", ge=1, default=512)
    max_position_embeddings: int = _doc("Longest sequence the model supports.", ge=1, default=512)


@dataclass
class WarmStartConfig:
    """Supervised warm start of the embedded backbone on synthetic solutions."""

    steps: int = _doc("Optimiser steps of supervised training.", ge=0, default=1000)
    batch_size: int = _doc("Sequences per step.", ge=1, default=32)
    learning_rate: float = _doc("Peak AdamW learning rate (cosine decay, 5% warmup).", gt=0, default=3e-3)
    weight_decay: float = _doc(WEIGHT_DECAY_DOC, ge=0, default=0.01)
    eval_problems: int = _doc("test_id / test_ood problems sampled to report pass@1 after the warm start.", ge=0, default=100)


@dataclass
class AtpSftConfig:
    """ATP-Latent's supervised stage: a conditional VAE over CoT steps, with a curriculum (see tarpo.atp_sft)."""

    steps_per_stage: int = _doc("Optimiser steps of each curriculum stage k = 1 .. K (the first k steps latent).",
                                ge=0, default=100)
    latent_steps: int = _doc("Optimiser steps with every step latent, after the curriculum.", ge=0, default=500)
    batch_size: int = _doc("Problems per step.", ge=1, default=32)
    learning_rate: float = _doc("Peak AdamW learning rate (cosine decay, 5% warmup).", gt=0, default=1e-4)
    weight_decay: float = _doc(WEIGHT_DECAY_DOC, ge=0, default=0.01)
    kl_weight: float = _doc("Weight of KL(q || N(0, I)) (mean over latents and dimensions).", ge=0, default=0.001)
    eval_problems: int = _doc("test_id problems sampled after SFT for the checks (decoded steps, stop, pass@1).",
                              ge=0, default=100)


@dataclass
class LoraConfig:
    """LoRA adapters (peft)."""

    r: int = _doc("Adapter rank.", ge=1, default=32)
    alpha: int = _doc("Adapter scaling alpha.", ge=1, default=64)
    dropout: float = _doc("Adapter dropout.", ge=0, lt=1, default=0.0)
    target_modules: list[str] = _doc(
        "Projections that get adapters.",
        min_items=1, unique=True,
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class TrainConfig:
    """One RL run (every method shares these; methods override some)."""

    dataset: str = _doc("Training set: a name in `datasets`.", default="synthetic")
    steps: int = _doc("Optimiser steps; 0: one epoch of the training set.", ge=0, default=60)
    prompts_per_step: int = _doc("Prompts per optimiser step per process (before accumulation).", ge=1, default=8)
    grad_accum: int = _doc("Gradient accumulation micro-batches per optimiser step.", ge=1, default=1)
    forward_batch: int = _doc(
        "Completions per training forward/backward pass (0: a whole micro-batch at once). Bounds activation "
        "memory (python -m tarpo.memory); the loss and its gradient do not change.", ge=0, default=0,
    )
    group_size: int = _doc(
        "Completions sampled per prompt (G); at least 2, since one completion's group-relative advantage is 0.",
        ge=2, default=4,
    )
    temperature: float = _doc("Sampling temperature T (> 0: training samples; it has no greedy mode).", gt=0, default=0.5)
    max_prompt_tokens: int = _doc("Prompts are left-truncated to this many tokens.", ge=1, default=1024)
    max_new_tokens: int = _doc("Completion length limit.", ge=1, default=1024)
    learning_rate: float = _doc("Policy (LoRA or full) learning rate (> 0: at 0 nothing trains).", gt=0, default=5e-6)
    compile_decode: bool = _doc(
        "Sample rollouts on a static KV cache with a torch.compile'd decode step (tarpo.decode; CUDA graphs on a "
        "GPU); false: the eager reference. Same samples for a fixed seed where the arithmetic allows.",
        default=False,
    )
    head_learning_rate: float = _doc("Learning rate of the action head / HRPO gate.", ge=0, default=1e-4)
    beta: float = _doc("KL coefficient against the reference policy.", ge=0, default=0.005)
    weight_decay: float = _doc(WEIGHT_DECAY_DOC, ge=0, default=0.1)
    adam_beta1: float = _doc("AdamW beta1.", ge=0, lt=1, default=0.9)
    adam_beta2: float = _doc("AdamW beta2.", ge=0, lt=1, default=0.99)
    max_grad_norm: float = _doc("Gradient clipping norm.", gt=0, default=0.1)
    warmup_ratio: float = _doc("Linear warmup fraction of a cosine schedule.", ge=0, le=1, default=0.1)
    updates_per_batch: int = _doc("Policy updates per sampled batch (>1 enables PPO clipping).", ge=1, default=1)
    clip_eps: float = _doc("PPO clip range when updates_per_batch > 1 (epsilon_low: ratios below 1 - clip_eps are "
                           "clipped).", gt=0, default=0.2)
    epsilon_high: float | None = _doc(
        "Upper clip range: ratios above 1 + epsilon_high are clipped (DAPO's clip-higher, Yu et al. 2025, uses 0.28 "
        "with clip_eps 0.2). null (default): clip_eps, symmetric. Like all clipping it acts only when "
        "updates_per_batch > 1 (with one update per batch every ratio is 1).", gt=0, default=None,
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = _doc(
        "How the per-token terms become the loss (TRL's names; tarpo.loss). 'grpo' (default; the papers', Shao et al. "
        "2024): mean over each completion's tokens, then over completions. 'dr_grpo' (Dr. GRPO, Liu et al. 2025): "
        "sum over all tokens / (completions x max_new_tokens), and advantages without the std (see scale_rewards). "
        "'dapo' (DAPO, Yu et al. 2025; TRL's default): sum over all tokens / the valid tokens of the whole step "
        "(every micro-batch and process). 'bnpo': sum over tokens / the valid tokens of the micro-batch. TARPO's "
        "action term and ATP-Latent's streams aggregate like the token terms.", default="grpo",
    )
    importance_sampling_level: Literal["token", "sequence"] = _doc(
        "'token' (default): one importance ratio per token. 'sequence' (GSPO, Zheng et al. 2025): one ratio per "
        "completion, exp of its mean log-ratio, clipped per completion.", default="token",
    )
    scale_rewards: Literal["group", "batch", "none"] = _doc(
        "The std the advantage is divided by: 'group' (default; std within the group, GRPO), 'batch' (the std of "
        "the step's rewards on this process; Liu et al. 2025 / TRL) or 'none' (centre only). loss_type 'dr_grpo' "
        "always centres only, and refuses 'batch'.", default="group",
    )
    mask_truncated_completions: bool = _doc(
        "Completions cut by max_new_tokens (no EOS) carry no loss (DAPO's overlong filtering, Yu et al. 2025). "
        "Default false: they are trained on like any other.", default=False,
    )
    dynamic_sampling: bool = _doc(
        "DAPO's dynamic sampling (Yu et al. 2025): groups whose rewards all agree (zero advantage) are dropped and "
        "more prompts are drawn from the same seeded stream until the step holds prompts_per_step x grad_accum "
        "informative groups, or dynamic_sampling_max_draws extra draws were made (then the step trains on what "
        "it kept, and says so). Each step logs groups_drawn, groups_kept, rollouts. Default false.", default=False,
    )
    dynamic_sampling_max_draws: int = _doc(
        "dynamic_sampling: the most extra draws of prompts_per_step prompts per step (0: only drop, never "
        "redraw). Default 4.", ge=0, default=4,
    )
    adapter: Literal["lora", "full"] = _doc("Train LoRA adapters or every weight.", default="lora")
    lora: LoraConfig = _doc("LoRA settings (adapter: lora).", default_factory=LoraConfig)
    checkpoint_every: int = _doc("Steps between periodic checkpoints (0: only the final one).", ge=0, default=50)
    max_nonfinite_steps: int = _doc("Consecutive non-finite losses tolerated before aborting.", ge=0, default=3)
    log_samples: int = _doc("Sample trajectories rendered to the HTML artifact.", ge=0, default=8)
    mixed_precision: Literal["auto", "no", "bf16"] = _doc("bf16 on GPU when 'auto', fp32 on CPU.", default="auto")
    # Mode-specific knobs (ignored by methods that do not use them).
    soft_top_k: int = _doc("TARPO: top-K tokens mixed into a soft input.", ge=1, default=10)
    tau_a: float = _doc("TARPO: action softmax temperature.", gt=0, default=1.0)
    action_loss_weight: float = _doc("TARPO: weight w_a of the action term.", ge=0, default=0.1)
    action_loss_positions: Literal["thinking", "all"] = _doc(
        "TARPO: positions the action term covers ('all' reproduces the authors' loss).", default="thinking"
    )
    action_bias_hard: float = _doc("TARPO: initial bias of the hard action (4.6 ~ 1% soft).", default=4.6)
    action_init_std: float = _doc("TARPO: std of the action head's initial weights.", ge=0, default=0.001)
    action_detach_hidden: bool = _doc(
        "TARPO: detach h_t before the action head, so the action term trains the head only (false: its gradient "
        "also reaches the backbone through h_t; METHODS.md does not say which).", default=False)
    action_router: Literal["learned", "random"] = _doc(
        "TARPO: 'random' is the control for the router's choices: each thinking step goes soft with probability "
        "`random_soft_ratio`, whatever h_t, and the action head is frozen (its action term is constant).",
        default="learned")
    random_soft_ratio: float = _doc(
        "TARPO with action_router 'random': the probability of a soft step (set it to the trained router's mean "
        "soft ratio).", gt=0, lt=1, default=0.1)
    hrpo_r_min: float = _doc("HRPO: lower end of the initial gate a at r = 1.", gt=0, lt=1, default=0.98)
    hrpo_r_max: float = _doc("HRPO: upper end of the initial gate a at r = 1.", gt=0, lt=1, default=0.999)
    hrpo_c: float = _doc("HRPO: gate sharpness c.", gt=0, default=8.0)
    lepo_top_k: int = _doc("LEPO: top-K support of the Gumbel-Softmax relaxation.", ge=1, default=10)
    lepo_tau_g: float = _doc("LEPO: Gumbel-Softmax temperature.", gt=0, default=0.5)
    advantage_eps: float = _doc("Added to the group's reward std in the advantage (ATP-Latent's default: 1e-8).",
                                gt=0, default=1e-4)
    log_ratio_clamp: float = _doc("Clamp each log-ratio of the policy term to +-this (0: off; ATP-Latent's default: 3).",
                                  ge=0, default=0.0)
    atp_latents_per_step: int = _doc("ATP-Latent: latents per CoT step (c).", ge=1, default=2)
    atp_max_steps: int = _doc("ATP-Latent: most latent CoT steps K; the block holds at most c * K latents.", ge=1, default=10)
    accuracy_weight: float = _doc("ATP-Latent reward: weight of accuracy (0: the coherence-only ablation).", ge=0, default=1.0)
    format_weight: float = _doc("ATP-Latent reward: weight of the format term (block ended, answer given).", ge=0,
                                default=0.5)
    coherence_weight: float = _doc("ATP-Latent reward: weight of coherence x accuracy (0: the w/o-coherence ablation).",
                                   ge=0, default=0.1)


@dataclass
class Resources:
    """Scheduler resources of one rule's jobs."""

    threads: int = _doc("CPU threads.", ge=1, default=2)
    gpus: int = _doc("GPUs (training uses one process per GPU).", ge=0, default=0)
    mem_mb: int = _doc("Memory in MB.", ge=1, default=8000)
    runtime: int = _doc("Wall-clock limit in minutes.", ge=1, default=60)


@dataclass
class ResourcesConfig:
    prepare: Resources = _doc("Dataset preparation.", default_factory=lambda: Resources(threads=1, mem_mb=2000, runtime=30))
    backbone: Resources = _doc("Backbone build / snapshot.", default_factory=Resources)
    train: Resources = _doc("RL training.", default_factory=lambda: Resources(runtime=240))
    atp_sft: Resources = _doc("ATP-Latent's supervised stage (one process: one GPU at most).",
                              default_factory=lambda: Resources(runtime=240))
    evaluate: Resources = _doc("Evaluation.", default_factory=Resources)


@dataclass
class BackboneConfig:
    """A policy backbone: the embedded tiny Qwen2, or a hub model."""

    kind: Literal["embedded", "hub"] = _doc("'embedded' builds and warm-starts a tiny model here.", default="embedded")
    repo_id: str = _doc("Hub repository id (kind: hub), e.g. Qwen/Qwen2.5-1.5B-Instruct.", default="")
    revision: str = _doc("Hub revision (commit sha or tag) pinned for reproducibility.", default="main")
    dtype: Literal["auto", "float32", "bfloat16"] = _doc("Weights dtype when loading.", default="auto")
    model: TinyModelConfig = _doc("Embedded model shape (kind: embedded).", default_factory=TinyModelConfig)
    warm_start: WarmStartConfig = _doc("Embedded model warm start (kind: embedded).", default_factory=WarmStartConfig)
    warm_start_dataset: str = _doc("Dataset the embedded model is warm-started on.", default="synthetic")
    train: dict[str, Any] = _doc("Overrides of `train` for this backbone.", schema="train", default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = _doc(
        "Per-method overrides of `train` for this backbone (e.g. tarpo: {action_bias_hard: 2.2}).",
        schema="train_by_name",
        default_factory=dict,
    )
    resources: dict[str, dict[str, Any]] = _doc(
        "Per-rule overrides of `resources` for this backbone.", schema="resources", default_factory=dict
    )


@dataclass
class EvaluateConfig:
    benchmarks: list[str] = _doc(
        "Benchmarks every method is evaluated on: registry names (`tarpo.data.benchmarks`) or DATASET_test_id / "
        "DATASET_test_ood of a configured dataset.",
        min_items=1, unique=True, default_factory=lambda: ["synthetic_test_id", "synthetic_test_ood"],
    )
    k: int = _doc("Samples per problem (pass@1 is their mean accuracy; pass@j for j <= k).", ge=1, default=4)
    temperature: float = _doc(
        "Sampling temperature; 0 is greedy decoding (argmax, so the k samples are identical).", ge=0, default=0.5
    )
    max_new_tokens: int = _doc("Completion length limit.", ge=1, default=1024)
    batch_size: int = _doc("Problems per rollout batch.", ge=1, default=32)
    max_problems: int = _doc("Evaluate at most this many problems per benchmark (0: all).", ge=0, default=0)
    compile_decode: bool = _doc(
        "Decode on a static KV cache with a torch.compile'd step (tarpo.decode); false: the eager reference.",
        default=False,
    )


@dataclass
class AblationConfig:
    """An ablation arm: a trained method with some of its training settings changed. It is trained and evaluated
    like a method, per seed, under {root}/{backbone}/{arm}/seed{seed}/, and compared with its method (arm minus
    method, paired by seed and problem) in the ablation table (`snakemake ablations`, tarpo.ablations)."""

    method: str = _doc("The method this arm changes: a trained method of `methods` (its settings are the arm's "
                       "starting point).", default="")
    train: dict[str, Any] = _doc(
        "Overrides of the method's training settings, merged last (over `train`, the backbone's, the method's "
        "defaults and overrides), e.g. {action_loss_weight: 0.0}.", schema="train", default_factory=dict,
    )


@dataclass
class RouterConfig:
    """TARPO's router probe (tarpo.router_probe): per trained TARPO run (and arm), its soft ratio against
    position, next-token entropy and correctness, before and after training; a figure and table per backbone."""

    problems: int = _doc("Problems of the in-distribution test benchmark (its first N) sampled per probe; 0: no "
                         "probe.", ge=0, default=128)
    k: int = _doc("Completions per problem.", ge=1, default=4)


@dataclass
class TuningConfig:
    """Choosing hyperparameters on validation (`snakemake --cores 2 tune`, tarpo.tuning): every tuned method is
    trained once per grid point ("trial") and seed, with the same grid, seeds and steps (the same budget), and
    scored on a validation benchmark; the highest mean pass@1 wins. Test splits are never used for a choice."""

    benchmark: str = _doc(
        "Validation benchmark the trials are scored on: distribution 'val' (e.g. DATASET_val of a configured "
        "dataset). A test split is an error: test splits are for reporting only.",
        default="synthetic_val",
    )
    seeds: list[int] = _doc("Training (and sampling) seeds of every trial, the same for every method.", ge=0,
                            min_items=1, unique=True, default_factory=lambda: [0])
    grid: dict[str, list[Any]] = _doc(
        "Keys of `train` -> the values tried (at least 2 each); every combination is one trial, named "
        "`key=value` (keys in alphabetical order, joined by ','). In a trial the value replaces the method's "
        "configured one, whichever layer set it (e.g. atp_latent's own learning_rate).",
        schema="grid", default_factory=lambda: {"learning_rate": [3e-5, 1e-4, 3e-4]},
    )
    methods: list[str] = _doc("Trained methods to tune (names in `methods`); empty: every trained method.",
                              unique=True, default_factory=list)


@dataclass
class Config:
    """The whole pipeline configuration (the workflow's config file)."""

    name: str = _doc(
        "The config's name: its results root results/{name}/ (each config's outputs side by side; another config "
        "file with the same name is refused) and its MLflow experiment. Letters, digits, '.', '_', '-'.",
        default="default",
    )
    seed: int = _doc("Seed of the embedded backbone's warm start (the synthetic data has its own, datasets.NAME.seed).",
                     ge=0, default=0)
    seeds: list[int] = _doc(
        "Seeds of training and evaluation: every trained method is trained and evaluated once per seed, CoT "
        "evaluated once per seed (its sampling seed), so comparisons pair by seed. `tarpo train` / `tarpo "
        "evaluate --seed S` runs one of them (default: the first).",
        ge=0, min_items=1, unique=True, default_factory=lambda: [0],
    )
    results_page: str = _doc(
        "Markdown page `snakemake all` writes from the summaries (main table with 95% CIs, paired comparisons, "
        "lucky share, tokens, machine); empty: results/{name}/figures/tables/results.md, under the config's root. "
        "config/config.yaml sends the default run's to the tracked docs/results.md. A page under results/ must lie "
        "under the config's own root.",
        default="",
    )
    datasets: dict[str, SyntheticDataConfig] = _doc(
        "Generated datasets by name.", default_factory=lambda: {"synthetic": SyntheticDataConfig()}
    )
    backbones: dict[str, BackboneConfig] = _doc("Backbones by name.", default_factory=lambda: {"tiny": BackboneConfig()})
    methods: dict[str, dict[str, Any]] = _doc(
        "Trained methods with overrides of `train`; `tarpo methods` lists the registered ones (grpo, hrpo, lepo, "
        "tarpo, atp_latent).",
        schema="train_by_name",
        default_factory=lambda: {"grpo": {}, "hrpo": {}, "lepo": {}, "tarpo": {}},
    )
    baselines: list[str] = _doc("Untrained baselines evaluated as they are (registered ones: cot).", unique=True,
                                default_factory=lambda: ["cot"])
    train: TrainConfig = _doc("Training defaults.", default_factory=TrainConfig)
    atp_sft: AtpSftConfig = _doc("ATP-Latent's supervised stage (used when `methods` has atp_latent).",
                                 default_factory=AtpSftConfig)
    evaluate: EvaluateConfig = _doc("Evaluation settings.", default_factory=EvaluateConfig)
    router: RouterConfig = _doc("TARPO's router probe (the figure of what the router learned).",
                                default_factory=RouterConfig)
    resources: ResourcesConfig = _doc("Scheduler resources per rule.", default_factory=ResourcesConfig)
    benchmarks: dict[str, dict[str, Any]] = _doc("Benchmark registry overrides (local files, revisions).", default_factory=dict)
    ablations: dict[str, AblationConfig] = _doc(
        "Ablation arms by name (a name that is no method's): each a trained method with training overrides, "
        "trained and evaluated per seed like a method and tabled against it (`snakemake ablations`; part of `all` "
        "when there are any).", default_factory=dict,
    )
    tuning: TuningConfig | None = _doc(
        "Choosing hyperparameters on validation (`snakemake tune`; not part of `all`). Absent: `tune` uses the "
        "defaults.", default=None,
    )

    @property
    def results_root(self) -> str:
        """Where this config's outputs go: results/{name} (tarpo.layout)."""
        return results_root(self.name)

    def method_of(self, name: str) -> str:
        """The registered method behind `name`: an ablation arm's method, else `name` itself (a registered
        method). What the registry's hooks, the mode and the saved policy are looked up by."""
        if name in self.ablations:
            return self.ablations[name].method
        if name in method_names():
            return name
        raise ConfigError(f"unknown method '{name}'; registered: {', '.join(method_names())}"
                          + (f"; arms of `ablations`: {', '.join(self.ablations)}" if self.ablations else ""))

    def train_config(self, backbone: str, method: str) -> TrainConfig:
        """The effective training config: defaults <- train <- backbone.train <- methods[m] <- backbone.method_overrides[m];
        for an ablation arm, its method's <- ablations[arm].train."""
        if backbone not in self.backbones:
            raise ConfigError(f"unknown backbone '{backbone}'; configured: {sorted(self.backbones)}")
        if method in self.ablations:
            arm = self.ablations[method]
            merged = _merge(to_dict(self.train_config(backbone, arm.method)), arm.train)
            return from_dict(TrainConfig, merged, f"ablations.{method}.train")
        if method not in self.methods:
            raise ConfigError(f"unknown method '{method}'; configured: {sorted(self.methods)}")
        merged = to_dict(self.train)
        bb = self.backbones[backbone]
        for where, overrides in (
            (f"backbones.{backbone}.train", bb.train),
            (f"the defaults of {method}", dict(get_method(method).train_defaults)),
            (f"methods.{method}", self.methods[method]),
            (f"backbones.{backbone}.method_overrides.{method}", bb.method_overrides.get(method, {})),
        ):
            merged = _merge(merged, overrides)
            from_dict(TrainConfig, merged, where)  # name the layer that introduced a bad key
        return from_dict(TrainConfig, merged, "train")

    def resources_for(self, backbone: str, rule: str) -> Resources:
        base = to_dict(getattr(self.resources, rule))
        merged = _merge(base, self.backbones[backbone].resources.get(rule, {}))
        return from_dict(Resources, merged, f"backbones.{backbone}.resources.{rule}")




# ---------------------------------------------------------------- loading


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _optional(tp: Any) -> Any:
    """X for `X | None`, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _check_type(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"'{path}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if _optional(tp) is not None:  # X | None: absent or null is None, anything else must be an X
        return None if value is None else _check_type(_optional(tp), value, path)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(arg, value, path)
            except ConfigError:
                pass
        raise ConfigError(f"'{path}' has the wrong type: {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{path}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _check_type(item, v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf would pass every bound check
            raise ConfigError(f"'{path}' must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"'{path}' must be a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{where}'{hint}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _check_limits(f, _check_type(hints[f.name], data[f.name], where), where)
    return cls(**kwargs)


def _why(f: dataclasses.Field) -> str:
    """The field's doc, for an out-of-bounds error: it says what the value means."""
    return f" ({f.metadata['doc'].rstrip('.')})" if f.metadata.get("doc") else ""


def _check_limits(f: dataclasses.Field, value: Any, path: str) -> Any:
    """The field's bounds (`_doc(ge=..., ...)`), on the value or on each item of a list."""
    lists = f.metadata.get("lists", {})
    if isinstance(value, list):
        if len(value) < lists.get("minItems", 0):
            raise ConfigError(f"'{path}' must list at least one item, got []" if lists["minItems"] == 1 else
                              f"'{path}' must list at least {lists['minItems']} items, got {value}")
        if lists.get("uniqueItems") and len(set(map(str, value))) != len(value):
            raise ConfigError(f"'{path}' must not repeat an item, got {value}")
    tests = {"minimum": (lambda v, b: v >= b, ">="), "exclusiveMinimum": (lambda v, b: v > b, ">"),
             "maximum": (lambda v, b: v <= b, "<="), "exclusiveMaximum": (lambda v, b: v < b, "<")}
    for item in value if isinstance(value, list) else [value]:
        if item is None:  # an optional number left unset
            continue
        for key, bound in f.metadata.get("bounds", {}).items():
            ok, op = tests[key]
            if not ok(item, bound):
                words = {(">=", 0): "non-negative (>= 0)", (">", 0): "positive (> 0)"}.get((op, bound), f"{op} {bound}")
                raise ConfigError(f"'{path}' must be {words}, got {item!r}{_why(f)}")
    return value


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


# Names that become path segments, wildcard values and shell words: no slashes, spaces or quotes, and short
# enough for a file name with room to spare (a file name holds at most 255 bytes; job and log names add to it).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 64


def validate(cfg: Config, partial: bool = False) -> Config:
    """Cross-field checks the types cannot express.

    `partial`: `cfg` is one job's slice of the workflow config (`--config-json`), which leaves out the
    datasets other jobs read, so the benchmark and training-set names are not checked (the whole config
    was checked when the workflow parsed it)."""
    for section in ("datasets", "backbones"):
        for name in getattr(cfg, section):
            if not NAME.fullmatch(name):
                raise ConfigError(f"'{section}.{name}': a name may hold only letters, digits, '.', '_' and '-' "
                                  "(it becomes a path and a shell word), starting with a letter or digit")
            if len(name) > NAME_MAX:
                raise ConfigError(f"'{section}.{name[:20]}...': a name may be at most {NAME_MAX} characters long "
                                  f"(it becomes a file and job name), got {len(name)}")
    if not NAME.fullmatch(cfg.name):
        raise ConfigError(f"'name': {cfg.name!r} may hold only letters, digits, '.', '_' and '-', starting with a "
                          f"letter or digit (it names the results root {RESULTS_DIR}/NAME/ and the MLflow experiment)")
    if len(cfg.name) > NAME_MAX:
        raise ConfigError(f"'name' may be at most {NAME_MAX} characters long (the MLflow experiment and run names "
                          f"are built from it), got {len(cfg.name)}")
    check_root_name(cfg.name)
    if not cfg.results_page.strip():
        cfg.results_page = default_results_page(cfg.name)
    page = Path(cfg.results_page)
    if not page.is_absolute() and page.parts[:1] == (RESULTS_DIR,) and page.parts[:2] != (RESULTS_DIR, cfg.name):
        raise ConfigError(f"'results_page': {cfg.results_page} lies under {RESULTS_DIR}/ but outside this config's "
                          f"root {cfg.results_root}/ (another config's results); leave it out for "
                          f"{default_results_page(cfg.name)}, or put it under {cfg.results_root}/ or outside "
                          f"{RESULTS_DIR}/ (e.g. docs/)")
    trained, baselines = method_names(trained=True), method_names(trained=False)
    for name in cfg.methods:
        if name not in trained:
            raise ConfigError(f"unknown method 'methods.{name}'; known methods: {', '.join(trained)}")
    for name in cfg.baselines:
        if name not in baselines:
            raise ConfigError(f"unknown baseline '{name}' in 'baselines'; known: {', '.join(baselines)}")
    _check_ablations(cfg)  # before the merges below, which an arm of an unknown method would fail less clearly
    for bname, bb in cfg.backbones.items():
        if bb.kind == "hub" and not bb.repo_id:
            raise ConfigError(f"'backbones.{bname}.repo_id' is required for a hub backbone")
        if bb.kind == "embedded" and bb.warm_start_dataset not in cfg.datasets:
            raise ConfigError(f"'backbones.{bname}.warm_start_dataset' names unknown dataset '{bb.warm_start_dataset}'")
        if bb.kind == "embedded":
            _check_model(bb.model, f"backbones.{bname}.model")
        for method in [*cfg.methods, *cfg.ablations]:
            tc = cfg.train_config(bname, method)  # every merge must be valid
            if tc.loss_type == "dr_grpo" and tc.scale_rewards == "batch":
                raise ConfigError(f"training {bname}/{method}: loss_type 'dr_grpo' centres advantages without a std; "
                                  "'scale_rewards: batch' contradicts it (use group, the default, or none)")
            if tc.hrpo_r_min > tc.hrpo_r_max:
                raise ConfigError(f"training {bname}/{method}: 'hrpo_r_min' ({tc.hrpo_r_min}) exceeds 'hrpo_r_max' "
                                  f"({tc.hrpo_r_max})")
        for rule in bb.resources:
            if rule not in {f.name for f in dataclasses.fields(ResourcesConfig)}:
                raise ConfigError(f"unknown rule 'backbones.{bname}.resources.{rule}'")
            cfg.resources_for(bname, rule)
    for dname, ds in cfg.datasets.items():
        if ds.ood_min_steps <= ds.max_steps or ds.ood_max_operand < ds.max_operand:
            raise ConfigError(f"'datasets.{dname}': test_ood must have more steps than train "
                              "(ood_min_steps > max_steps) and ood_max_operand >= max_operand")
        if ds.ood_shift == "order" and ds.max_steps < 2:
            raise ConfigError(f"'datasets.{dname}': ood_shift 'order' needs max_steps >= 2 (a held-out pair of "
                              f"operations), got {ds.max_steps}")
        # What the generator needs (tarpo.data.synthetic): non-empty ranges, room for every start and step.
        if ds.min_steps > ds.max_steps or ds.ood_min_steps > ds.ood_max_steps:
            raise ConfigError(f"'datasets.{dname}': min_steps must not exceed max_steps, nor ood_min_steps ood_max_steps")
        if ds.max_value < 2 * ds.ood_max_operand:
            raise ConfigError(f"'datasets.{dname}.max_value' must be at least 2 x ood_max_operand "
                              f"({2 * ds.ood_max_operand}), got {ds.max_value}")
    if cfg.tuning is not None:
        cfg.tuning = _check_tuning(cfg, cfg.tuning, partial)
    if not partial:  # a job's slice holds only the backbones and methods it reads
        if not cfg.backbones:
            raise ConfigError("'backbones' must name at least one backbone")
        if not cfg.methods and not cfg.baselines:
            raise ConfigError("nothing to evaluate: 'methods' and 'baselines' are both empty")
        _check_benchmark_names(cfg)
    return cfg


# Directories of {root}/{backbone}/ that are not a method's or an arm's.
RESERVED_ARMS = ("tune",)


def _check_ablations(cfg: Config) -> None:
    """Each arm: a name that is a path segment and no method's, a trained method of the config as its method
    (its override keys are checked by the merge, `Config.train_config`, in `validate`)."""
    registered = method_names()
    for arm, spec in cfg.ablations.items():
        where = f"ablations.{arm}"
        if not NAME.fullmatch(arm) or len(arm) > NAME_MAX:
            raise ConfigError(f"'{where}': an arm's name may hold only letters, digits, '.', '_' and '-', starting "
                              f"with a letter or digit, at most {NAME_MAX} characters (it becomes a path and a "
                              "shell word)")
        if arm in registered or arm in RESERVED_ARMS:
            what = "a method's name" if arm in registered else "taken ({backbone}/tune/ holds the tuning trials)"
            raise ConfigError(f"'{where}': '{arm}' is {what}; an arm needs a name of its own (its results go to "
                              f"{{backbone}}/ARM/), e.g. '{spec.method or 'method'}_{arm}'")
        if spec.method not in cfg.methods:
            known = ", ".join(cfg.methods) or "none"
            hint = (" (a registered method, but not trained by this config: add it to `methods`)"
                    if spec.method in method_names(trained=True) else "")
            raise ConfigError(f"'{where}.method': '{spec.method}' is not a trained method of this config{hint}; "
                              f"`methods`: {known}")


def tunable_keys() -> list[str]:
    """The keys of `train` a tuning grid may vary: its numbers, flags and choices, but not `steps` (the budget,
    the same for every trial), the training set or the nested `lora`."""
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "steps"
            and (hints[f.name] in (int, float, bool) or typing.get_origin(hints[f.name]) is Literal)]


def _check_tuning(cfg: Config, tuning: TuningConfig, partial: bool) -> TuningConfig:
    """The tuning section checked (grid keys and values; with the whole config, the benchmark, the methods and
    their equal steps), its grid values as their keys' types. `partial`: see `validate`."""
    tuning = copy.deepcopy(tuning)
    keys = tunable_keys()
    if not tuning.grid:
        raise ConfigError("'tuning.grid' must name at least one key of `train`")
    for key, values in tuning.grid.items():
        where = f"tuning.grid.{key}"
        if key == "steps":
            raise ConfigError(f"'{where}': the training budget is not tuned: every trial trains `train.steps`")
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{where}'{hint}: a grid varies keys of `train` (numbers, flags and "
                              f"choices); tunable: {', '.join(keys)}")
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"'{where}' must list at least 2 values, got {values!r}")
        typed = [getattr(from_dict(TrainConfig, {key: v}, "tuning.grid"), key) for v in values]
        if len(set(map(str, typed))) != len(typed):
            raise ConfigError(f"'{where}' must not repeat a value, got {values}")
        tuning.grid[key] = typed
    if partial:
        return tuning
    for i, method in enumerate(tuning.methods):
        if method not in cfg.methods:
            raise ConfigError(f"'tuning.methods[{i}]': '{method}' is not a trained method of this config "
                              f"(`methods`: {', '.join(cfg.methods) or 'none'})")
    from tarpo.data.benchmarks import get_benchmark

    try:
        bench = get_benchmark(tuning.benchmark, cfg.datasets)
    except ConfigError:
        raise ConfigError(f"unknown benchmark '{tuning.benchmark}' in 'tuning.benchmark'; a validation benchmark "
                          f"is DATASET_val of a configured dataset ({', '.join(cfg.datasets) or 'none'})") from None
    if bench.distribution != "val":
        raise ConfigError(f"'tuning.benchmark': '{tuning.benchmark}' is not a validation benchmark (its distribution "
                          f"is '{bench.distribution}'): hyperparameters are chosen on DATASET_val, test splits are "
                          "for reporting only")
    dataset = tuning.benchmark[: -len("_" + bench.split)]
    if bench.source == "synthetic" and dataset not in cfg.datasets:
        raise ConfigError(f"'tuning.benchmark': '{tuning.benchmark}' is a split of the dataset '{dataset}', which "
                          f"`datasets` does not configure ({', '.join(cfg.datasets) or 'none'})")
    for bname in cfg.backbones:  # the same budget: every tuned method trains as many steps
        steps = {m: cfg.train_config(bname, m).steps for m in tuning.methods or cfg.methods}
        if len(set(steps.values())) > 1:
            raise ConfigError(f"tuning {bname}: the tuned methods train different numbers of steps {steps}; "
                              "the same budget for every method needs the same `steps`")
    return tuning


def resolved_tuning(cfg: Config) -> TuningConfig:
    """What `snakemake tune` runs: the config's tuning section (its defaults when it has none), checked against
    the whole config, with `methods` filled in (empty: every trained method, in the config's order)."""
    tuning = _check_tuning(cfg, cfg.tuning if cfg.tuning is not None else TuningConfig(), partial=False)
    tuning.methods = list(tuning.methods or cfg.methods)
    return tuning


def _check_model(m: TinyModelConfig, path: str) -> None:
    """Shapes the Qwen2 architecture accepts: whole, even head dims; query heads shared evenly by kv heads."""
    if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
        raise ConfigError(f"'{path}': hidden_size ({m.hidden_size}) must be num_heads ({m.num_heads}) x an even head size")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"'{path}': num_heads ({m.num_heads}) must be a multiple of num_kv_heads ({m.num_kv_heads})")


def _check_benchmark_names(cfg: Config) -> None:
    """Every benchmark and training set the config names exists, so a typo fails before any training runs."""
    from tarpo.data.benchmarks import OVERRIDE_KEYS, REGISTRY, TRAIN_SETS, get_benchmark

    known = list(REGISTRY) + [f"{d}_{split}" for d in cfg.datasets for split in ("val", "test_id", "test_ood")]

    def check(name: str, where: str) -> Any:
        try:
            return get_benchmark(name, cfg.datasets)
        except ConfigError:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown benchmark '{name}' in '{where}'{hint}; known: {', '.join(known)}") from None

    for i, name in enumerate(cfg.evaluate.benchmarks):
        if not check(name, f"evaluate.benchmarks[{i}]").is_eval:  # it would count as an ID score
            raise ConfigError(f"'evaluate.benchmarks[{i}]': '{name}' is a training set, not an evaluation benchmark")
    for name, over in cfg.benchmarks.items():
        check(name, f"benchmarks.{name}")
        unknown = sorted(set(over) - set(OVERRIDE_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in 'benchmarks.{name}'; valid: {', '.join(OVERRIDE_KEYS)}")
        if not isinstance(over.get("skip_bad_rows", False), bool):
            raise ConfigError(f"'benchmarks.{name}.skip_bad_rows' must be true or false, got {over['skip_bad_rows']!r}")
    for bname in cfg.backbones:
        for method in [*cfg.methods, *cfg.ablations]:
            dataset = cfg.train_config(bname, method).dataset
            if dataset not in cfg.datasets and dataset not in TRAIN_SETS:
                raise ConfigError(f"training set '{dataset}' of {bname}/{method} ('train.dataset') is neither in "
                                  f"'datasets' ({sorted(cfg.datasets)}) nor a registry training set ({', '.join(TRAIN_SETS)})")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last one)."""


def _unique_keys_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by explicit keys
            continue
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark)
        if isinstance(key, typing.Hashable):
            seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML / JSON config file; a missing or empty file, a YAML syntax error, a key given
    twice or a non-mapping is a one-line ConfigError naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = f" ({err.context} at line {err.context_mark.line + 1})" if err.context and err.context_mark else ""
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}{context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:  # an empty file would silently mean the full-size defaults
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping at its top level, got {type(data).__name__}")
    return data


def load_config(source: str | Path | dict[str, Any], partial: bool = False) -> Config:
    """Load and validate a config from a YAML/JSON file or a mapping (`partial`: see `validate`)."""
    data = source if isinstance(source, dict) else read_config_file(source)
    return validate(from_dict(Config, data), partial=partial)


def load_config_json(text: str) -> Config:
    """A job's config slice as the workflow passes it (`--config-json`)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config-json: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config-json: the config must be a JSON object, got {type(data).__name__}")
    return load_config(data, partial=True)


# ---------------------------------------------------------------- command-line overrides


def _field_type(cls: type, name: str) -> Any:
    """The type an override of field `name` of `cls` must have (override mappings: the section they override)."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        return None
    kind = f.metadata.get("schema", "")
    if kind == "train":
        return TrainConfig
    if kind == "train_by_name":
        return dict[str, TrainConfig]
    if kind == "resources":
        return ResourcesConfig
    if kind == "grid":
        return _TrainGrid
    return typing.get_type_hints(cls)[name]


class _TrainGrid:
    """The type of `tuning.grid` for `coerce_overrides`: keys of `train` -> lists of their values."""


def coerce_overrides(value: Any, tp: Any = Config) -> Any:
    """Snakemake's `--config KEY=VALUE` hands nested values (`'evaluate={k: 8}'`) and lists over as strings;
    turn each string into the number or boolean its key expects. Anything else is left to `load_config`."""
    tp = _optional(tp) or tp
    origin = typing.get_origin(tp)
    if tp is _TrainGrid and isinstance(value, dict):
        return {k: coerce_overrides(v, list[_field_type(TrainConfig, str(k)) or Any]) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub = _field_type(tp, str(key))
            out[key] = item if sub is None else coerce_overrides(item, sub)
        return out
    if origin is dict and isinstance(value, dict):
        return {k: coerce_overrides(v, typing.get_args(tp)[1]) for k, v in value.items()}
    if origin is list and isinstance(value, list):
        return [coerce_overrides(v, typing.get_args(tp)[0]) for v in value]
    if isinstance(value, str):
        try:
            if tp is int:
                return int(value)
            if tp is float:
                return float(value)
        except ValueError:
            return value
        if tp is bool and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


# ---------------------------------------------------------------- schema


def _schema_for(tp: Any) -> dict[str, Any]:
    if _optional(tp) is not None:
        inner = _schema_for(_optional(tp))
        return {**inner, "type": [inner["type"], "null"]}
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        for f in dataclasses.fields(tp):
            prop = _override_schema(f.metadata.get("schema", "")) or _schema_for(hints[f.name])
            if f.metadata.get("bounds"):  # a list's bounds hold for each item
                (prop["items"] if prop.get("type") == "array" else prop).update(f.metadata["bounds"])
            prop.update(f.metadata.get("lists", {}))
            if "doc" in f.metadata:
                prop["description"] = f.metadata["doc"]
            props[f.name] = prop
        out = {"type": "object", "properties": props, "additionalProperties": False}
        if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "("):
            out["description"] = " ".join(tp.__doc__.split())
        return out
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _schema_for(typing.get_args(tp)[0])}
    if origin is dict:
        item = typing.get_args(tp)[1]
        return {"type": "object", "additionalProperties": _schema_for(item) if item is not Any else True}
    if tp is Any:
        return {}
    return {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]}


def _override_schema(kind: str) -> dict[str, Any] | None:
    """Override mappings accept exactly the keys of the section they override (none required)."""
    if kind == "train":
        return _schema_for(TrainConfig)
    if kind == "train_by_name":
        return {"type": "object", "additionalProperties": _schema_for(TrainConfig)}
    if kind == "resources":
        return {"type": "object", "properties": {f.name: _schema_for(Resources) for f in dataclasses.fields(ResourcesConfig)},
                "additionalProperties": False}
    if kind == "grid":  # a tunable key of `train` -> at least 2 distinct values of its type
        train = _schema_for(TrainConfig)["properties"]
        items = {k: {key: v for key, v in train[k].items() if key != "description"} for k in tunable_keys()}
        return {"type": "object", "properties": {k: {"type": "array", "items": item, "minItems": 2, "uniqueItems": True}
                                                 for k, item in items.items()}, "additionalProperties": False}
    return None


def json_schema() -> dict[str, Any]:
    """JSON schema of `Config` (written to workflow/schemas/config.schema.yaml)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **_schema_for(Config)}
    # method names come from the registry (tarpo.methods): a registered method is a valid key
    props = schema["properties"]
    props["methods"]["propertyNames"] = {"enum": method_names(trained=True)}
    props["baselines"]["items"]["enum"] = method_names(trained=False)
    overrides = props["backbones"]["additionalProperties"]["properties"]["method_overrides"]
    overrides["propertyNames"] = {"enum": method_names(trained=True)}
    props["ablations"]["propertyNames"] = {"pattern": f"^{NAME.pattern}$", "not": {"enum": method_names()}}
    props["ablations"]["additionalProperties"]["properties"]["method"]["enum"] = method_names(trained=True)
    props["ablations"]["additionalProperties"]["required"] = ["method"]
    schema["description"] = "TARPO pipeline configuration. Generated by `tarpo schema`; edit src/tarpo/config.py instead."
    return schema


def schema_yaml() -> str:
    return yaml.safe_dump(json_schema(), sort_keys=False, width=120)
