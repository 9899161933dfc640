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
import difflib
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the dotted path of the offending key."""


def _doc(text: str, schema: str = "", **kw: Any) -> Any:
    # `schema` names a dataclass whose fields a free-form override mapping must use.
    return field(metadata={"doc": text, "schema": schema}, **kw)


@dataclass
class SyntheticDataConfig:
    """Multi-step arithmetic word problems in GSM8K format, generated from a seed."""

    seed: int = _doc("Seed of the generator; the same seed gives byte-identical files.", default=1234)
    n_train: int = _doc("Training problems.", default=4000)
    n_test_id: int = _doc("In-distribution test problems (disjoint from train).", default=500)
    n_test_ood: int = _doc("Out-of-distribution test problems (longer chains).", default=500)
    min_steps: int = _doc("Fewest arithmetic steps in a train / test_id problem.", default=2)
    max_steps: int = _doc("Most arithmetic steps in a train / test_id problem.", default=4)
    max_operand: int = _doc("Largest add / subtract operand and starting amount in a train / test_id problem.", default=9)
    max_value: int = _doc("Every intermediate value and answer stays in [1, max_value] (all splits).", default=99)
    ood_min_steps: int = _doc("Fewest steps in a test_ood problem (must exceed max_steps).", default=5)
    ood_max_steps: int = _doc("Most steps in a test_ood problem.", default=6)
    ood_max_operand: int = _doc("Largest starting amount in a test_ood problem (at least max_operand).", default=9)
    demo_error_rate: float = _doc(
        "Chance that a step of a train demonstration (what the warm start imitates) is off by one; "
        "the chain goes on from the slip. RL with the exact answer reward has this to unlearn. 0: clean.",
        default=0.3,
    )


@dataclass
class TinyModelConfig:
    """Shape of the embedded Qwen2 backbone and its tokenizer."""

    vocab_size: int = _doc("Byte-level BPE vocabulary size trained on the synthetic corpus.", default=512)
    hidden_size: int = _doc("Model width d.", default=128)
    num_layers: int = _doc("Decoder layers.", default=4)
    num_heads: int = _doc("Attention heads.", default=4)
    num_kv_heads: int = _doc("Key/value heads (grouped-query attention as in Qwen2).", default=2)
    intermediate_size: int = _doc("MLP width.", default=512)
    max_position_embeddings: int = _doc("Longest sequence the model supports.", default=512)


@dataclass
class WarmStartConfig:
    """Supervised warm start of the embedded backbone on synthetic solutions."""

    steps: int = _doc("Optimiser steps of supervised training.", default=1000)
    batch_size: int = _doc("Sequences per step.", default=32)
    learning_rate: float = _doc("Peak AdamW learning rate (cosine decay, 5% warmup).", default=3e-3)
    weight_decay: float = _doc("AdamW weight decay.", default=0.01)
    eval_problems: int = _doc("test_id / test_ood problems sampled to report pass@1 after the warm start.", default=100)


@dataclass
class LoraConfig:
    """LoRA adapters (peft)."""

    r: int = _doc("Adapter rank.", default=32)
    alpha: int = _doc("Adapter scaling alpha.", default=64)
    dropout: float = _doc("Adapter dropout.", default=0.0)
    target_modules: list[str] = _doc(
        "Projections that get adapters.",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class TrainConfig:
    """One RL run (every method shares these; methods override some)."""

    dataset: str = _doc("Training set: a name in `datasets`.", default="synthetic")
    steps: int = _doc("Optimiser steps (one epoch is used when 0).", default=60)
    prompts_per_step: int = _doc("Prompts per optimiser step per process (before accumulation).", default=8)
    grad_accum: int = _doc("Gradient accumulation micro-batches per optimiser step.", default=1)
    group_size: int = _doc("Completions sampled per prompt (G).", default=4)
    temperature: float = _doc("Sampling temperature T.", default=0.5)
    max_prompt_tokens: int = _doc("Prompts are left-truncated to this many tokens.", default=1024)
    max_new_tokens: int = _doc("Completion length limit.", default=1024)
    learning_rate: float = _doc("Policy (LoRA or full) learning rate.", default=5e-6)
    head_learning_rate: float = _doc("Learning rate of the action head / HRPO gate.", default=1e-4)
    beta: float = _doc("KL coefficient against the reference policy.", default=0.005)
    weight_decay: float = _doc("AdamW weight decay.", default=0.1)
    adam_beta1: float = _doc("AdamW beta1.", default=0.9)
    adam_beta2: float = _doc("AdamW beta2.", default=0.99)
    max_grad_norm: float = _doc("Gradient clipping norm.", default=0.1)
    warmup_ratio: float = _doc("Linear warmup fraction of a cosine schedule.", default=0.1)
    updates_per_batch: int = _doc("Policy updates per sampled batch (>1 enables PPO clipping).", default=1)
    clip_eps: float = _doc("PPO clip range when updates_per_batch > 1.", default=0.2)
    adapter: Literal["lora", "full"] = _doc("Train LoRA adapters or every weight.", default="lora")
    lora: LoraConfig = _doc("LoRA settings (adapter: lora).", default_factory=LoraConfig)
    checkpoint_every: int = _doc("Steps between periodic checkpoints (0: only the final one).", default=50)
    max_nonfinite_steps: int = _doc("Consecutive non-finite losses tolerated before aborting.", default=3)
    log_samples: int = _doc("Sample trajectories rendered to the HTML artifact.", default=8)
    mixed_precision: Literal["auto", "no", "bf16"] = _doc("bf16 on GPU when 'auto', fp32 on CPU.", default="auto")
    # Mode-specific knobs (ignored by methods that do not use them).
    soft_top_k: int = _doc("TARPO: top-K tokens mixed into a soft input.", default=10)
    tau_a: float = _doc("TARPO: action softmax temperature.", default=1.0)
    action_loss_weight: float = _doc("TARPO: weight w_a of the action term.", default=0.1)
    action_loss_positions: Literal["thinking", "all"] = _doc(
        "TARPO: positions the action term covers ('all' reproduces the authors' loss).", default="thinking"
    )
    action_bias_hard: float = _doc("TARPO: initial bias of the hard action (4.6 ~ 1% soft).", default=4.6)
    action_init_std: float = _doc("TARPO: std of the action head's initial weights.", default=0.001)
    hrpo_r_min: float = _doc("HRPO: lower end of the initial gate a at r = 1.", default=0.98)
    hrpo_r_max: float = _doc("HRPO: upper end of the initial gate a at r = 1.", default=0.999)
    hrpo_c: float = _doc("HRPO: gate sharpness c.", default=8.0)
    lepo_top_k: int = _doc("LEPO: top-K support of the Gumbel-Softmax relaxation.", default=10)
    lepo_tau_g: float = _doc("LEPO: Gumbel-Softmax temperature.", default=0.5)


@dataclass
class Resources:
    """Scheduler resources of one rule's jobs."""

    threads: int = _doc("CPU threads.", default=2)
    gpus: int = _doc("GPUs (training uses one process per GPU).", default=0)
    mem_mb: int = _doc("Memory in MB.", default=8000)
    runtime: int = _doc("Wall-clock limit in minutes.", default=60)


@dataclass
class ResourcesConfig:
    prepare: Resources = _doc("Dataset preparation.", default_factory=lambda: Resources(threads=1, mem_mb=2000, runtime=30))
    backbone: Resources = _doc("Backbone build / snapshot.", default_factory=Resources)
    train: Resources = _doc("RL training.", default_factory=lambda: Resources(runtime=240))
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
    benchmarks: list[str] = _doc("Benchmarks every method is evaluated on.", default_factory=lambda: ["synthetic_test_id", "synthetic_test_ood"])
    k: int = _doc("Samples per problem (pass@1 is their mean accuracy; pass@j for j <= k).", default=4)
    temperature: float = _doc("Sampling temperature.", default=0.5)
    max_new_tokens: int = _doc("Completion length limit.", default=1024)
    batch_size: int = _doc("Problems per rollout batch.", default=32)
    max_problems: int = _doc("Evaluate at most this many problems per benchmark (0: all).", default=0)


@dataclass
class Config:
    """The whole pipeline configuration (the workflow's config file)."""

    name: str = _doc("Experiment name (the MLflow experiment).", default="default")
    seed: int = _doc("Seed of the embedded backbone's warm start (the synthetic data has its own, datasets.NAME.seed).",
                     default=0)
    seeds: list[int] = _doc(
        "Seeds of training and evaluation: every trained method is trained and evaluated once per seed, CoT "
        "evaluated once per seed (its sampling seed), so comparisons pair by seed. `tarpo train` / `tarpo "
        "evaluate --seed S` runs one of them (default: the first).",
        default_factory=lambda: [0],
    )
    results_page: str = _doc(
        "Markdown page `snakemake all` writes from the summaries (main table with 95% CIs, paired comparisons, "
        "lucky share, tokens, machine); config/config.yaml sends the default run's to the tracked docs/results.md.",
        default="results/figures/tables/results.md",
    )
    datasets: dict[str, SyntheticDataConfig] = _doc(
        "Generated datasets by name.", default_factory=lambda: {"synthetic": SyntheticDataConfig()}
    )
    backbones: dict[str, BackboneConfig] = _doc("Backbones by name.", default_factory=lambda: {"tiny": BackboneConfig()})
    methods: dict[str, dict[str, Any]] = _doc(
        "Trained methods (grpo, hrpo, lepo, tarpo) with overrides of `train`.",
        schema="train_by_name",
        default_factory=lambda: {"grpo": {}, "hrpo": {}, "lepo": {}, "tarpo": {}},
    )
    baselines: list[str] = _doc("Untrained baselines evaluated as they are (cot).", default_factory=lambda: ["cot"])
    train: TrainConfig = _doc("Training defaults.", default_factory=TrainConfig)
    evaluate: EvaluateConfig = _doc("Evaluation settings.", default_factory=EvaluateConfig)
    resources: ResourcesConfig = _doc("Scheduler resources per rule.", default_factory=ResourcesConfig)
    benchmarks: dict[str, dict[str, Any]] = _doc("Benchmark registry overrides (local files, revisions).", default_factory=dict)

    def train_config(self, backbone: str, method: str) -> TrainConfig:
        """The effective training config: defaults <- train <- backbone.train <- methods[m] <- backbone.method_overrides[m]."""
        if backbone not in self.backbones:
            raise ConfigError(f"unknown backbone '{backbone}'; configured: {sorted(self.backbones)}")
        if method not in self.methods:
            raise ConfigError(f"unknown method '{method}'; configured: {sorted(self.methods)}")
        merged = to_dict(self.train)
        bb = self.backbones[backbone]
        for where, overrides in (
            (f"backbones.{backbone}.train", bb.train),
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


METHODS = ("grpo", "hrpo", "lepo", "tarpo")
BASELINES = ("cot",)


# ---------------------------------------------------------------- loading


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    for name in names:
        if name in data:
            kwargs[name] = _check_type(hints[name], data[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)


def validate(cfg: Config) -> Config:
    """Cross-field checks the types cannot express."""
    if not cfg.seeds:
        raise ConfigError("'seeds' must list at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"'seeds' must not repeat a seed, got {cfg.seeds}")
    if any(s < 0 for s in cfg.seeds):
        raise ConfigError(f"'seeds' must be non-negative integers, got {cfg.seeds}")
    for name in cfg.methods:
        if name not in METHODS:
            raise ConfigError(f"unknown method 'methods.{name}'; known methods: {', '.join(METHODS)}")
    for name in cfg.baselines:
        if name not in BASELINES:
            raise ConfigError(f"unknown baseline '{name}' in 'baselines'; known: {', '.join(BASELINES)}")
    for bname, bb in cfg.backbones.items():
        if bb.kind == "hub" and not bb.repo_id:
            raise ConfigError(f"'backbones.{bname}.repo_id' is required for a hub backbone")
        if bb.kind == "embedded" and bb.warm_start_dataset not in cfg.datasets:
            raise ConfigError(f"'backbones.{bname}.warm_start_dataset' names unknown dataset '{bb.warm_start_dataset}'")
        for method in cfg.methods:
            cfg.train_config(bname, method)  # every merge must be valid
        for rule in bb.resources:
            if rule not in {f.name for f in dataclasses.fields(ResourcesConfig)}:
                raise ConfigError(f"unknown rule 'backbones.{bname}.resources.{rule}'")
            cfg.resources_for(bname, rule)
    for dname, ds in cfg.datasets.items():
        if ds.ood_min_steps <= ds.max_steps or ds.ood_max_operand < ds.max_operand:
            raise ConfigError(f"'datasets.{dname}': test_ood must have more steps than train "
                              "(ood_min_steps > max_steps) and ood_max_operand >= max_operand")
        if not 0.0 <= ds.demo_error_rate < 1.0:
            raise ConfigError(f"'datasets.{dname}.demo_error_rate' must be in [0, 1)")
    return cfg


def load_config(source: str | Path | dict[str, Any]) -> Config:
    """Load and validate a config from a YAML/JSON file or a mapping."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at its top level")
    return validate(from_dict(Config, data))


def load_config_json(text: str) -> Config:
    return load_config(json.loads(text))


# ---------------------------------------------------------------- schema


def _schema_for(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {}
        for f in dataclasses.fields(tp):
            prop = _override_schema(f.metadata.get("schema", "")) or _schema_for(hints[f.name])
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
    return None


def json_schema() -> dict[str, Any]:
    """JSON schema of `Config` (written to workflow/schemas/config.schema.yaml)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **_schema_for(Config)}
    schema["description"] = "TARPO pipeline configuration. Generated by `tarpo schema`; edit src/tarpo/config.py instead."
    return schema


def schema_yaml() -> str:
    return yaml.safe_dump(json_schema(), sort_keys=False, width=120)
