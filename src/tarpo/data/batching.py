"""General data helpers of training and evaluation: the training records, prompts as a batch, the batch order."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tarpo.data.template import build_prompt
from tarpo.io import MissingInputError, read_jsonl


def load_train_records(data_dir: Path) -> list[dict[str, Any]]:
    path = Path(data_dir) / "train.jsonl"
    if not path.exists():
        raise MissingInputError(
            f"training set {path} not found: create it with `tarpo prepare --out {data_dir}` "
            f"(or `snakemake --cores 2 {data_dir}`)"
        )
    return read_jsonl(path)


def encode_prompts(tokenizer: Any, questions: list[str], max_tokens: int, device: torch.device,
                   suffix: str = "") -> tuple[Tensor, Tensor]:
    """Left-padded (and left-truncated) prompt ids and mask; `suffix` (a mode's, e.g. `<bol>`) ends each prompt."""
    texts = [build_prompt(tokenizer, q) + suffix for q in questions]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_tokens:] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def batch_indices(n_records: int, seed: int, step: int, micro: int, grad_accum: int, world: int, rank: int,
                  per_process: int) -> list[int]:
    """Record indices of one micro-batch: a fixed shuffled order per epoch, so resuming needs only the step."""
    start = ((step * grad_accum + micro) * world + rank) * per_process
    out = []
    for position in range(start, start + per_process):
        epoch, offset = divmod(position, n_records)
        order = list(range(n_records))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out
