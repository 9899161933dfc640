"""The optimiser's parameter groups: which parameters are weight-decayed, and at which learning rate."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from tarpo.config import TrainConfig
from tarpo.modes import Mode

# HF Trainer's rule (`Trainer.get_decay_parameter_names`, what the authors' trainer applies): no weight
# decay for biases and normalisation weights, matched by name or by an nn.LayerNorm parent.
NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of `module`'s parameters exempt from weight decay: biases, norm weights and embeddings.

    Biases and norms by HF Trainer's rule. Embeddings are exempt too (the GPT-2 / minGPT
    convention; HF's rule alone would decay them): decay would shrink the rows of tokens that
    rarely occur, and with tied embeddings the LM head with them. With LoRA the embeddings are
    frozen, so the authors' setting is the same under either rule. The same rule covers the
    policy's parameters; the mode's own (TARPO's action head, HRPO's gate and Lambda, ATP-Latent's
    heads) are all exempt (`optimizer_groups`).
    """
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    norms = {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    return {name for name, p in module.named_parameters()
            if NO_DECAY_NAME.search(name.lower()) or id(p) in embeddings or id(p) in norms}


def decay_groups(module: nn.Module, lr: float, weight_decay: float, name: str,
                 exempt_all: bool = False) -> list[dict[str, Any]]:
    """AdamW groups of `module`'s trainable parameters at `lr`: those `no_decay_names` exempts (all of them with
    `exempt_all`) at weight decay 0, the rest at `weight_decay`; empty groups are left out.

    The one no-decay rule of every optimiser here: the warm start, ATP-Latent's SFT and RL.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    exempt = {n for n, _ in named} if exempt_all else no_decay_names(module)
    groups = []
    for suffix, params, decay in (("", [p for n, p in named if n not in exempt], weight_decay),
                                  ("_no_decay", [p for n, p in named if n in exempt], 0.0)):
        if params:
            groups.append({"params": params, "lr": lr, "weight_decay": decay, "name": name + suffix})
    return groups


def optimizer_groups(model: nn.Module, mode: Mode, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: policy parameters split into weight-decayed and exempt ones (see `no_decay_names`),
    and the mode's parameters, none of them decayed; empty groups are left out.

    The mode's parameters train at `head_learning_rate`: TARPO's action head as METHODS.md
    says, and, our choice where it is silent, HRPO's gate (W_r, W_i, their biases, Lambda) too.
    """
    # The mode's heads are never decayed: the authors train them at lr <= 1e-4, where decay is
    # negligible; at this project's scaled head lr (3e-3 .. 3e-2) the decay step lr * wd * w is of the
    # size of Adam's own step and moved HRPO's gate with zero advantage (perf/head_decay_control.py).
    return (decay_groups(model, cfg.learning_rate, cfg.weight_decay, "policy")
            + decay_groups(mode, cfg.head_learning_rate, cfg.weight_decay, "head", exempt_all=True))
