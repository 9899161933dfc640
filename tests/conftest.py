"""Shared fixtures: a tiny tokenizer and randomly initialised Qwen2 models small enough for 2 CPU cores."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from tarpo.allocator import keep_freed_memory
from tarpo.backbone import build_tiny_model
from tarpo.config import TinyModelConfig
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


def write_eval_json(results: Path, backbone: str, method: str, seed: int, bench: str, split: str, correct: list[int],
                    k: int) -> None:
    """An evaluation JSON as `tarpo evaluate` writes it, with only what the summaries read: correct samples (of
    k) on problems p0, p1, ..."""
    path = results / backbone / method / f"seed{seed}" / "eval" / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    per_problem = {f"p{i}": c for i, c in enumerate(correct)}
    path.write_text(json.dumps({"benchmark": bench, "distribution": split, "k": k, "seed": seed,
                                "pass@1": sum(correct) / (k * len(correct)), "correct_per_problem": per_problem}))


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


# ---------------------------------------------------------------- a tiny model that writes the task's format


def format_corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, completion) pairs in the task's answer format, e.g. 'Ann has 5 coins.' -> '5 + 3 = 8. 8 - 2 = 6. #### 6'.

    Written here rather than taken from the synthetic generator, so these tests
    do not move when the task's defaults do.
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        value = rng.randint(2, 12)
        prompt = f"{rng.choice(['Ann', 'Ben', 'Cara', 'Dan'])} has {value} {rng.choice(['apples', 'coins', 'cards'])}."
        steps = []
        for _ in range(rng.randint(2, 3)):
            k = rng.randint(1, 9)
            if value <= k or rng.random() < 0.5:
                steps.append(f"{value} + {k} = {value + k}.")
                value += k
            else:
                steps.append(f"{value} - {k} = {value - k}.")
                value -= k
        pairs.append((prompt, f"{' '.join(steps)} #### {value}"))
    return pairs


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def format_model(tiny_tokenizer):
    """A tiny Qwen2 trained for 100 steps on `format_corpus`'s raw prompts (about 2 s).

    It has learnt the format, not the arithmetic: sampled and greedy
    completions write a few steps, then `####`, a number and EOS.
    """
    return train_format_model(tiny_tokenizer, lambda prompt: tiny_tokenizer(prompt)["input_ids"])


def train_format_model(tok, prompt_ids) -> torch.nn.Module:
    """`format_model`'s training, each prompt encoded by `prompt_ids(prompt) -> ids`."""
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                             intermediate_size=64), tok)
    pairs = [(prompt_ids(prompt), tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
             for prompt, completion in format_corpus(200)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):
        batch = [pairs[i] for i in torch.randint(len(pairs), (16,), generator=gen).tolist()]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (p, c) in enumerate(batch):
            ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            labels[row, len(p): len(p) + len(c)] = torch.tensor(c)  # loss on the completion only
            mask[row, : len(p) + len(c)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# The embedded Qwen2 of `tiny_model` (2 layers) by hand: q/k/v have biases; RMSNorms before attention, MLP and
# the LM head; the LM head is tied to the embedding (one parameter). Which are exempt from weight decay
# (biases, norm weights, the embedding) and which are decayed, as `named_parameters` names them.
TINY_NO_DECAY = sorted(["model.embed_tokens.weight", "model.norm.weight"] + [
    f"model.layers.{i}.{name}" for i in range(2)
    for name in ("input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")])
TINY_DECAYED = sorted(f"model.layers.{i}.{name}.weight" for i in range(2)
                      for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
