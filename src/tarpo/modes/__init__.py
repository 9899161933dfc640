"""Reasoning modes: how the next input embedding is formed and which log-probs enter the loss."""

from __future__ import annotations

from tarpo.config import TrainConfig
from tarpo.modes.atp_latent import AtpLatentMode
from tarpo.modes.base import Mode, StepDraw
from tarpo.modes.hrpo import HrpoMode
from tarpo.modes.lepo import LepoMode
from tarpo.modes.tarpo import TarpoMode

# Method name -> mode. `cot` is the untrained backbone sampled explicitly.
MODES: dict[str, type[Mode]] = {
    "cot": Mode,
    "grpo": Mode,
    "hrpo": HrpoMode,
    "lepo": LepoMode,
    "tarpo": TarpoMode,
    "atp_latent": AtpLatentMode,
}


def build_mode(method: str, cfg: TrainConfig, hidden_size: int) -> Mode:
    if method not in MODES:
        raise ValueError(f"unknown method '{method}'; known: {', '.join(MODES)}")
    return MODES[method](cfg, hidden_size)


__all__ = ["MODES", "Mode", "StepDraw", "build_mode", "AtpLatentMode", "HrpoMode", "LepoMode", "TarpoMode"]
