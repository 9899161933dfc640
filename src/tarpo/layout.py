"""Where a config's results live: every config under a root of its own, `results/{name}/`.

    results/
      mlflow.db, mlruns/          the MLflow store, shared by every config: one experiment per config `name`
      mlflow-pending.jsonl        tracking records that missed the store (`tarpo track --replay`)
      {name}/                     one config's root (config/config.yaml: results/default/)
        .tarpo-config.json        the config file that owns the root (written by its first run)
        .tarpo-run.lock           held by the one run at a time on this root
        data/, backbones/, {backbone}/, figures/, logs/, benchmarks/

So the default, smoke, objectives and paper configs coexist, and two of them
may run at once (each holds its own root's lock; the shared SQLite store
takes their writes in turn). Two config files that name one root would
overwrite each other's results: the root's marker names the file that owns
it, and a run of another file is refused before it plans (`claim_root`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tarpo.errors import ConfigError
from tarpo.io import atomic_write_text

RESULTS_DIR = "results"  # every root, and the shared MLflow store, under it (relative to the working directory)
MARKER = ".tarpo-config.json"
RUN_LOCK = ".tarpo-run.lock"
# The MLflow store's own entries of results/: a config of one of these names would write into them.
RESERVED = ("mlruns",)
RESERVED_PREFIX = "mlflow"
# What results/ held before roots (one tree for every config): a root's marker is not there.
OLD_LAYOUT = ("data", "backbones", "figures", "logs", "benchmarks")


def results_root(name: str) -> str:
    """The results root of the config named `name`: `results/{name}`."""
    return f"{RESULTS_DIR}/{name}"


def default_results_page(name: str) -> str:
    """Where the results page of a config that names none goes: under its root."""
    return f"{results_root(name)}/figures/tables/results.md"


def check_root_name(name: str) -> None:
    """A config name is a directory of results/: none of the MLflow store's entries there."""
    if name in RESERVED or name.lower().startswith(RESERVED_PREFIX):
        raise ConfigError(f"'name': '{name}' is taken by the MLflow store in {RESULTS_DIR}/ (mlruns/, mlflow.db, "
                          f"mlflow-pending.jsonl); choose another name (its results go to {RESULTS_DIR}/NAME/)")


def _same_file(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def config_file_id(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """A config file as the marker records it: relative to the working directory (the repository root), so a
    moved clone keeps its roots, and `./config/x.yaml`, `config/x.yaml` and its absolute path are one file."""
    cwd = os.path.abspath(cwd or os.getcwd())
    return os.path.relpath(os.path.abspath(os.path.join(cwd, path)), cwd)


def read_marker(root: str | Path) -> dict | None:
    path = Path(root) / MARKER
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: nobody can be said to own it, and it is not silently taken over
    return data if isinstance(data, dict) else {}


def claim_root(root: str | Path, config_file: str, name: str, write: bool) -> None:
    """Check that `config_file` may write `root`, and with `write` record it as the owner if none is.

    The root belongs to the config file its marker names: the same file again (edited or not, with any
    `--config` overrides) is fine; another file is refused, naming both and the fix. `write=False` (a dry run)
    only checks. Raises ConfigError."""
    root = Path(root)
    marker = read_marker(root)
    if marker is None:
        if write:
            atomic_write_text(root / MARKER, json.dumps(
                {"config": config_file, "name": name, "claimed": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")
        return
    owner = marker.get("config")
    if isinstance(owner, str) and _same_file(owner, config_file):
        return
    owned = f"{owner} (name: {marker.get('name', '?')})" if isinstance(owner, str) else "an unreadable marker"
    raise ConfigError(
        f"{root}/ holds the results of {owned}, not of {config_file}: two config files with `name: {name}` would "
        f"overwrite each other's results. Give {config_file} another `name` (its results go to "
        f"{RESULTS_DIR}/NAME/); or, if {config_file} is that config moved or renamed, delete {root / MARKER}")


def old_layout(results_dir: str | Path = RESULTS_DIR) -> list[str]:
    """Entries of an unmoved pre-roots results tree (results/data/, results/backbones/, ... with no root's
    marker in them); README, "Moving an old results/ tree", says how to move them."""
    base = Path(results_dir)
    return [f"{base}/{d}" for d in OLD_LAYOUT if (base / d).is_dir() and not (base / d / MARKER).exists()]
