"""A policy = backbone (+ LoRA adapters or fully tuned weights) + its reasoning mode's parameters.

One place knows the checkpoint layout, so training and evaluation load the
same thing:

    checkpoint/
      adapter/  or  model/     peft adapter (LoRA) or full weights (save_pretrained)
      mode.safetensors         action head / HRPO gate (not LoRA layers)
      policy.json              method, adapter kind, resolved train config
      SHA256SUMS               every file's sha256 (written by the trainer), checked on load
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tarpo.backbone import load_backbone
from tarpo.config import ConfigError, TrainConfig, from_dict
from tarpo.io import BadInputError, MissingInputError, verify_manifest
from tarpo.methods import build_mode
from tarpo.modes import Mode

POLICY_FILE = "policy.json"
MODE_FILE = "mode.safetensors"


def default_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """bf16 weights on a GPU under 'auto'/'bf16', fp32 on the CPU."""
    if device.type == "cuda" and mixed_precision in ("auto", "bf16"):
        return torch.bfloat16
    return torch.float32


def add_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def save_policy(model: nn.Module, mode: Mode, cfg: TrainConfig, method: str, out_dir: Path) -> None:
    """Write the policy into an existing (temporary) directory."""
    out_dir = Path(out_dir)
    sub = "adapter" if cfg.adapter == "lora" else "model"
    model.save_pretrained(out_dir / sub)
    state = {k: v.detach().cpu().contiguous() for k, v in mode.state_dict().items()}
    if state:
        save_file(state, out_dir / MODE_FILE)
    (out_dir / POLICY_FILE).write_text(
        json.dumps({"method": method, "adapter": cfg.adapter, "train": dataclasses.asdict(cfg)}, indent=2)
    )


def read_policy_info(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / POLICY_FILE
    if not path.exists():
        raise MissingInputError(f"{checkpoint} holds no finished policy ({POLICY_FILE} missing); train it first")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BadInputError(f"{path} is not valid JSON ({err}); retrain the policy") from None


def load_policy(
    backbone_dir: Path,
    method: str,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, Any, Mode]:
    """(model, tokenizer, mode) on `device`; the bare backbone and a fresh mode when `checkpoint` is None."""
    device = torch.device(device)
    dtype = default_dtype(cfg.mixed_precision, device)
    if checkpoint is not None:
        info = read_policy_info(checkpoint)
        if info["method"] != method:
            raise ConfigError(f"{checkpoint} was trained as '{info['method']}', not '{method}'")
        verify_manifest(checkpoint)
        cfg = from_dict(TrainConfig, info["train"], "checkpoint")
    model, tokenizer = load_backbone(Path(backbone_dir), dtype=dtype)
    try:
        if checkpoint is not None and cfg.adapter == "full":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(Path(checkpoint) / "model", dtype=dtype)
        elif checkpoint is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, Path(checkpoint) / "adapter")
        mode = build_mode(method, cfg, model.config.hidden_size)
        mode.bind(tokenizer)
        if checkpoint is not None and (Path(checkpoint) / MODE_FILE).exists():
            mode.load_state_dict(load_file(Path(checkpoint) / MODE_FILE))
    except (OSError, ValueError, RuntimeError) as err:  # safetensors' errors derive from Exception only
        raise BadInputError(f"the policy in {checkpoint} does not load ({type(err).__name__}: {err}); retrain it") from err
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise BadInputError(f"the policy in {checkpoint} does not load ({err}); retrain it") from err
    model.to(device).eval()
    mode.to(device).eval()
    return model, tokenizer, mode
