"""TARPO: an action head routes each thinking step to a discrete token or a soft top-K mixture (METHODS.md)."""

from __future__ import annotations

from typing import Any

from tarpo.methods import Method, register
from tarpo.modes.tarpo import TarpoMode


def soft_ratio(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Soft steps / thinking steps over all samples."""
    thinking = sum(r["n_thinking"] for r in rows)
    return {"soft_ratio": sum(sum(r["soft"]) for r in rows) / thinking if thinking else 0.0}


TARPO = register(Method(name="tarpo", label="TARPO", colour="#d55e00", marker="P", mode=TarpoMode, rank=40,
                        soft_positions=True, eval_metrics=soft_ratio))
