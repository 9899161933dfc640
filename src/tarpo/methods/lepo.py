"""LEPO: relaxed (Gumbel-softmax) soft inputs over the top-K tokens while thinking (METHODS.md, `lepo`)."""

from tarpo.methods import Method, register
from tarpo.methods.tarpo import soft_ratio
from tarpo.modes.lepo import LepoMode

LEPO = register(Method(name="lepo", label="LEPO", colour="#cc78bc", marker="D", mode=LepoMode, rank=30,
                       soft_positions=True, eval_metrics=soft_ratio))
