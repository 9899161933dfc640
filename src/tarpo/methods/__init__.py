"""The method registry: every method is declared once, as a `Method` in a module of this package.

A declaration says what a method is to the rest of the pipeline: its reasoning mode (`tarpo.modes`), how
tables and figures show it, the training defaults its algorithm fixes, whether it starts from a supervised
stage, and hooks for whatever differs from plain GRPO (its reward, frozen parts loaded with the policy,
extra per-sample fields and evaluation metrics). Config validation and the schema, the workflow rules, the
trainer, evaluation, tables and figures read it; none of them lists method names.

Adding a method = one new module here that calls `register(Method(...))` (it is imported with the
package), plus its tests. `register` also works from anywhere else, e.g. a test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the modes import the config, which reads this registry
    import torch
    from torch import Tensor

    from tarpo.config import TrainConfig
    from tarpo.modes.base import Mode
    from tarpo.rollout import Rollout


@dataclass(frozen=True)
class RewardInputs:
    """What a reward hook sees of one rollout batch: the verified accuracy (1/0 per completion) and context."""

    accuracy: Tensor
    rollout: Rollout
    texts: list[str]
    train: TrainConfig
    mode: Mode
    tokenizer: Any
    parts: Any  # what the method's `frozen_parts` hook loaded (None without one)


@dataclass(frozen=True)
class Method:
    """One method, declared once.

    `mode` builds the reasoning mode; `trained` is False for baselines evaluated as they are (CoT).
    `rank` orders tables and legends. `train_defaults` are what the algorithm fixes over the config's
    `train` (a config's `methods.NAME` still overrides them). `sft_stage`: training and evaluation load the
    output of the supervised stage (`tarpo atp-sft`, rule atp_sft: ATP-Latent's, the only one so far) instead
    of the backbone. `soft_positions`:
    the mode chooses soft or discrete inputs per step (its soft ratio is reported, also by position).
    """

    name: str
    label: str
    colour: str
    marker: str
    mode: type[Mode]
    rank: int = 100
    trained: bool = True
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    sft_stage: bool = False
    soft_positions: bool = False
    # hooks (None: plain GRPO's behaviour)
    reward: Callable[[RewardInputs], tuple[Tensor, dict[str, float]]] | None = None
    frozen_parts: Callable[[Path, torch.device], Any] | None = None  # loaded with the policy, e.g. a decoder
    init_mode: Callable[[Path, Mode], None] | None = None  # a fresh mode's weights, from the backbone dir
    sample_fields: Callable[[list[dict[str, Any]], Rollout, Mode, Any, Any], None] | None = None
    eval_metrics: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None

    def build_mode(self, cfg: TrainConfig, hidden_size: int) -> Mode:
        return self.mode(cfg, hidden_size)


_REGISTRY: dict[str, Method] = {}
_discovered = False
NAME_PATTERN = "a lowercase letter, then lowercase letters, digits or _"


def register(method: Method) -> Method:
    """Add `method` to the registry (a name can be declared once)."""
    name = method.name
    if not (name[:1].islower() and name.replace("_", "").isalnum() and name == name.lower()):
        raise ValueError(f"method name '{name}': {NAME_PATTERN}")
    if name in _REGISTRY and _REGISTRY[name] is not method:
        raise ValueError(f"method '{name}' is declared twice")
    _REGISTRY[name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register one clean up with this)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import every module of this package once: each declares its method."""
    global _discovered
    if not _discovered:
        _discovered = True
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            importlib.import_module(f"{__name__}.{info.name}")


def all_methods() -> list[Method]:
    """Every registered method, in table order (rank, then name)."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda m: (m.rank, m.name))


def method_names(trained: bool | None = None) -> list[str]:
    """Registered names in table order; `trained=True` the RL-trained methods, False the baselines."""
    return [m.name for m in all_methods() if trained is None or m.trained == trained]


def get_method(name: str) -> Method:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(method_names())}")
    return _REGISTRY[name]


def build_mode(method: str, cfg: TrainConfig, hidden_size: int) -> Mode:
    """The reasoning mode of `method` (untrained; the trainer or a checkpoint fills its weights)."""
    return get_method(method).build_mode(cfg, hidden_size)


def label(method: str) -> str:
    """How tables and figures name a method (its own name where it is not registered)."""
    _discover()
    return _REGISTRY[method].label if method in _REGISTRY else method


def method_order(methods: Iterable[str]) -> list[str]:
    """`methods` in table order: registered ones by rank, then any others by name."""
    methods = set(methods)
    known = [m for m in method_names() if m in methods]
    return known + sorted(methods - set(known))
