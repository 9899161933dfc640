"""HRPO: a learned gate mixes the token embedding with the hidden state while thinking (METHODS.md, `hrpo`)."""

from __future__ import annotations

from typing import Any

from tarpo.methods import Method, register
from tarpo.modes.hrpo import HrpoMode


def mean_gate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The gate a averaged over thinking steps (1 = fully explicit)."""
    gated = [(r["mean_gate"], r["n_thinking"]) for r in rows if "mean_gate" in r]
    weight = sum(n for _, n in gated)
    return {"mean_gate": sum(g * n for g, n in gated) / weight if weight else 1.0}


HRPO = register(Method(name="hrpo", label="HRPO", colour="#029e73", marker="^", mode=HrpoMode, rank=20,
                       eval_metrics=mean_gate))
