"""Shared fixtures: a tiny tokenizer and randomly initialised Qwen2 models small enough for 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

from tarpo.allocator import keep_freed_memory
from tarpo.console import setup_logging

# As `tarpo` sets it up: the package logs INFO records to the current stdout (capsys sees them), and
# glibc keeps freed memory in the process.
setup_logging()
keep_freed_memory()

os.environ.setdefault("TARPO_TRACKING", "off")  # tests that track set up their own store


# Test files that spend most of their time waiting (on SLURM's scheduler, servers, DVC) run first: with
# `make test`'s workers (pytest-xdist, a file per worker) the wait then overlaps the other files' work
# instead of ending the run alone.
WAITING_FIRST = ("test_slurm_real.py", "test_dvc.py", "test_mlflow_ui.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(WAITING_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def synthetic_records():
    from tarpo.config import SyntheticDataConfig
    from tarpo.data.synthetic import generate_split

    # ood_shift "length" keeps the train problems these fixtures were built around (the "order" shift rejects
    # some and so draws others): the format-trained test models below cross `####` and EOS on them
    return generate_split(SyntheticDataConfig(n_train=120, n_test_id=8, n_test_ood=8, ood_shift="length"), "train")


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_records):
    from tarpo.backbone import build_tokenizer, tokenizer_corpus

    return build_tokenizer(tokenizer_corpus(synthetic_records), vocab_size=300)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from tarpo.backbone import build_tiny_model
    from tarpo.config import TinyModelConfig

    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                             intermediate_size=64), tiny_tokenizer)
    return model.eval()


# ---------------------------------------------------------------- helpers shared by test modules


def with_key(data: dict, dotted: str, value) -> dict:
    """A deep copy of a config mapping with `dotted` (e.g. "train.steps") set to `value`."""
    import copy

    data = copy.deepcopy(data)
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def slurm_workdir(tmp_path):
    """A copy of the workflow files, the profiles and the repository's `slurm` profile link, in tmp_path/wf."""
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy(repo / "Snakefile", wd / "Snakefile")
    for sub in ("workflow", "config", "envs", "profiles"):
        shutil.copytree(repo / sub, wd / sub)
    link = repo / "slurm"
    assert link.is_symlink() and (link / "config.yaml").is_file(), "the repository root needs the `slurm` profile link"
    os.symlink(os.readlink(link), wd / "slurm")
    return wd
