"""Errors every part of the package raises, in a module of their own so that any module can import them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, with the dotted path of the offending key."""


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses or weights: nothing non-finite is ever checkpointed."""
