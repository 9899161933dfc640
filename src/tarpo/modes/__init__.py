"""Reasoning modes: how the next input embedding is formed and which log-probs enter the loss.

Which method uses which mode is declared in the method registry (`tarpo.methods`, `build_mode`).
"""

from __future__ import annotations

from tarpo.modes.atp_latent import AtpLatentMode
from tarpo.modes.base import Mode, StepDraw
from tarpo.modes.hrpo import HrpoMode
from tarpo.modes.lepo import LepoMode
from tarpo.modes.tarpo import TarpoMode

__all__ = ["Mode", "StepDraw", "AtpLatentMode", "HrpoMode", "LepoMode", "TarpoMode"]
