"""GRPO: explicit tokens only, the shared loss and reward (METHODS.md, "Shared")."""

from tarpo.methods import Method, register
from tarpo.modes.base import Mode

GRPO = register(Method(name="grpo", label="GRPO", colour="#0173b2", marker="s", mode=Mode, rank=10))
