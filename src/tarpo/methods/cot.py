"""CoT: the warm-started backbone sampled explicitly, untrained (the baseline every method is compared with)."""

from tarpo.methods import Method, register
from tarpo.modes.base import Mode

COT = register(Method(name="cot", label="CoT", colour="#949494", marker="o", mode=Mode, rank=0, trained=False))
