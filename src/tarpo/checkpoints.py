"""The checkpoint store of a training run: periodic checkpoints saved, verified and resumed, the run's
fingerprint, RNG states, and SIGTERM (preemption) turned into a checkpoint at the end of the step.

    train_state/{out name}/{fingerprint}/step-NNNNNN/    trainable weights, optimiser, scheduler, RNG states, step,
                                              with its SHA256SUMS
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tarpo.errors import NonFiniteLossError
from tarpo.io import MANIFEST_FILE, BadInputError, atomic_dir, disk_full_as_error, verify_manifest, write_manifest
from tarpo.modes import Mode

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
# A run's identity (its fingerprint, settings and code), in its train state and its final checkpoint: evaluation
# reads the fingerprint to find the run it nests under.
RUN_FILE = "run.json"
KEEP_CHECKPOINTS = 2


def trainable_parameters(model: nn.Module, mode: Mode) -> dict[str, nn.Parameter]:
    params = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    params.update({f"mode.{n}": p for n, p in mode.named_parameters() if p.requires_grad})
    return params


class CorruptCheckpointError(RuntimeError):
    pass


def checkpoints(state_dir: Path) -> list[Path]:
    """Complete periodic checkpoints, oldest first (atomic renames: a step-* directory is always whole)."""
    return sorted(p for p in Path(state_dir).glob("step-*") if (p / STATE_FILE).exists())


def latest_checkpoint(state_dir: Path) -> Path | None:
    done = checkpoints(state_dir)
    return done[-1] if done else None


def save_checkpoint(state_dir: Path, step: int, params: dict[str, nn.Parameter], extra: dict[str, Any]) -> Path:
    for name, p in params.items():
        if not torch.isfinite(p).all():
            raise NonFiniteLossError(f"refusing to checkpoint non-finite weights ({name}) at step {step}")
    target = Path(state_dir) / f"step-{step:06d}"
    previous = latest_checkpoint(state_dir)
    kept = f"the last complete checkpoint {previous} is intact" if previous else "no checkpoint was kept"
    with disk_full_as_error(target, "a checkpoint", kept), atomic_dir(target) as tmp:
        torch.save({"params": {n: p.detach().cpu() for n, p in params.items()}, **extra}, tmp / STATE_FILE)
        write_manifest(tmp)
    for old in checkpoints(state_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(ckpt: Path, params: dict[str, nn.Parameter]) -> dict[str, Any]:
    """The state saved in `ckpt`, verified: checksum, loadable, every trainable tensor present with
    its shape and finite. Raises CorruptCheckpointError saying what is wrong."""
    state_file = ckpt / STATE_FILE
    if not (ckpt / MANIFEST_FILE).exists():
        raise CorruptCheckpointError(f"{MANIFEST_FILE} is missing")
    try:
        verify_manifest(ckpt)
    except BadInputError as err:
        raise CorruptCheckpointError(str(err)) from None
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is corrupt
        raise CorruptCheckpointError(f"{STATE_FILE} does not load: {err}") from err
    missing = {"params", "optimizer", "scheduler", "rng", "step", "history"} - set(state)
    if missing:
        raise CorruptCheckpointError(f"missing entries {sorted(missing)}")
    saved = state["params"]
    if set(saved) != set(params):
        raise CorruptCheckpointError(f"holds tensors {sorted(set(saved) ^ set(params))[:3]}... that do not match the model")
    for name, p in params.items():
        if saved[name].shape != p.shape or not torch.isfinite(saved[name]).all():
            raise CorruptCheckpointError(f"tensor {name} has the wrong shape or non-finite values")
    return state


def fingerprint(identity: dict[str, Any]) -> str:
    """Short hash of what determines a run (see GrpoTrainer.identity)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two run identities, as `key: old -> new`."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Preemption:
    """Turns SIGTERM into a flag the loop checks at the end of each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "Preemption":
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self._previous)


