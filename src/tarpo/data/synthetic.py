"""Synthetic multi-step arithmetic word problems in GSM8K format.

The language is small and regular on purpose, so that a ~1-3M parameter model
can learn it in minutes on a CPU and every gold answer can be recomputed from
the question text alone (`recompute_answer` parses the templates back):

    Ann has 5 apples. She buys 3 more. She gives away 2. Then the number of
    apples doubles. How many apples does Ann have now?

    solution: "5 + 3 = 8. 8 - 2 = 6. 6 * 2 = 12. #### 12"

A problem is a starting amount followed by `steps` operations (add,
subtract, double / triple). Add / subtract operands are at most
`max_operand`; every intermediate value stays in `[1, max_value]`, so answers
spread over a wide range and a guessed number rarely scores.

Splits (each generated from its own `random.Random` stream seeded by
`(seed, split)`, so a split never depends on global random state):

- `train`, `val` and `test_id`: the same distribution (`min_steps..max_steps`
  operations, starting amount `<= max_operand`); `test_id` never repeats a
  train question, and `val` (for choosing hyperparameters: the test splits
  are for reporting only) never repeats a train or test_id question
  (deduplicated by question text). Adding `val` left the other splits'
  problems as they were: each split draws from its own stream.
- `test_ood`, by `ood_shift`:
  - `order` (default): the lengths, starts and operands of train, but every
    problem contains an operation order train and test_id never show: a
    multiplication directly followed by a subtraction (`HELD_OUT_ORDER`).
    Each step is familiar; their composition is not (a systematic split, as
    in SCAN or CFQ), and subtracting from a doubled or tripled value also
    reaches larger numbers than train's subtractions usually do.
  - `length`: longer chains (`ood_min_steps..ood_max_steps` operations) and a
    starting amount up to `ood_max_operand`, over the same value range. A
    1M-parameter model does not generalise in length (docs/experiments.md):
    its accuracy there is a chance floor.

Imperfect demonstrations (`demo_error_rate`): the warm start imitates the
train split's `demonstration` field, the gold chain replayed by a teacher
whose step result is one too large with that probability. RL with the exact
answer reward then has a shared, learnable thing to unlearn, and a slipped
chain never lands on the gold answer by luck. `solution` is always the clean
gold chain.

Record: `{"id": "test_id-00007", "question", "solution": "<steps> #### <n>",
"answer": "<n>", "steps": int}` (+ `"demonstration"` on train when
`demo_error_rate > 0`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tarpo.config import SyntheticDataConfig
from tarpo.data.template import ANSWER_MARKER
from tarpo.io import atomic_dir, write_jsonl

SPLITS = ("train", "val", "test_id", "test_ood")

# (name, subject pronoun)
NAMES: tuple[tuple[str, str], ...] = (
    ("Ann", "She"),
    ("Ben", "He"),
    ("Cara", "She"),
    ("Dan", "He"),
    ("Eve", "She"),
    ("Tom", "He"),
)
ITEMS: tuple[str, ...] = ("apples", "pencils", "marbles", "stickers", "cards", "coins")

# Operation sentences. `{p}` is the subject pronoun, `{n}` the operand, `{items}` the item.
ADD_TEMPLATES = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.")
SUB_TEMPLATES = ("{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}.")
MUL_TEMPLATES = {2: "Then the number of {items} doubles.", 3: "Then the number of {items} triples."}

#: ood_shift "order": the pair of consecutive operations held out of train and test_id
HELD_OUT_ORDER = ("*", "-")


_START_RE = re.compile(r"^(?P<name>[A-Z][a-z]+) has (?P<n>\d+) (?P<items>[a-z]+)$")
_ADD_RE = re.compile(r"^(?:She|He) (?:buys|finds|gets) (?P<n>\d+) more$")
_SUB_RE = re.compile(r"^(?:She|He) (?:gives away|loses|sells) (?P<n>\d+)$")
_MUL_RE = re.compile(r"^Then the number of [a-z]+ (?P<verb>doubles|triples)$")
_QUESTION_RE = re.compile(r"^How many [a-z]+ does [A-Z][a-z]+ have now\?$")


def _split_rng(seed: int, split: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"tarpo-synthetic:{seed}:{split}")


def _problem(rng: random.Random, n_steps: int, start_lo: int, start_hi: int, max_operand: int, cap: int
             ) -> tuple[dict[str, Any], int, list[tuple[str, int]]]:
    """One problem with exactly `n_steps` operations (values stay in [1, cap]), its start and operations."""
    name, pronoun = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    value = start = rng.randint(start_lo, start_hi)
    sentences = [f"{name} has {value} {items}."]
    ops_done: list[tuple[str, int]] = []
    for _ in range(n_steps):
        ops = []
        if value + 1 <= cap:
            ops.append("add")
        if value >= 2:
            ops.append("sub")
        if value * 2 <= cap:
            ops.append("mul")
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(1, min(max_operand, cap - value))
            sentences.append(rng.choice(ADD_TEMPLATES).format(p=pronoun, n=n))
            ops_done.append(("+", n))
            value += n
        elif op == "sub":
            n = rng.randint(1, min(max_operand, value - 1))
            sentences.append(rng.choice(SUB_TEMPLATES).format(p=pronoun, n=n))
            ops_done.append(("-", n))
            value -= n
        else:
            k = 3 if value * 3 <= cap and rng.random() < 0.5 else 2
            sentences.append(MUL_TEMPLATES[k].format(items=items))
            ops_done.append(("*", k))
            value *= k
    sentences.append(f"How many {items} does {name} have now?")
    record = {
        "question": " ".join(sentences),
        "solution": chain(start, ops_done),
        "answer": str(value),
        "steps": n_steps,
    }
    return record, start, ops_done


def chain(start: int, ops: list[tuple[str, int]], error_rate: float = 0.0, rng: random.Random | None = None) -> str:
    """The solution text of `ops` applied from `start`: the gold chain, or with `error_rate > 0` an
    imperfect teacher's, each result one too large with that probability (drawn from `rng`).

    Every operation is increasing in its input, so a slip is never undone by a
    later step: a chain with a slip always ends on a wrong answer.
    """
    value, steps = start, []
    for op, n in ops:
        result = value + n if op == "+" else value - n if op == "-" else value * n
        if error_rate > 0 and rng.random() < error_rate:
            result += 1
        steps.append(f"{value} {op} {n} = {result}.")
        value = result
    return f"{' '.join(steps)} {ANSWER_MARKER} {value}"


def split_ranges(cfg: SyntheticDataConfig, split: str) -> tuple[int, int, int, int, int]:
    """(min steps, max steps, smallest start, largest start, value cap) of a split."""
    if split == "test_ood" and cfg.ood_shift == "length":
        return cfg.ood_min_steps, cfg.ood_max_steps, 1, cfg.ood_max_operand, cfg.max_value
    return cfg.min_steps, cfg.max_steps, 1, cfg.max_operand, cfg.max_value


def has_held_out_order(ops: list[tuple[str, int]]) -> bool:
    """Whether a multiplication is directly followed by a subtraction somewhere in `ops`."""
    return any((a[0], b[0]) == HELD_OUT_ORDER for a, b in zip(ops, ops[1:]))


def _admits(cfg: SyntheticDataConfig, split: str, ops: list[tuple[str, int]]) -> bool:
    """The 'order' shift's rule: test_ood problems contain the held-out order, the others never do."""
    if cfg.ood_shift != "order":
        return True
    return has_held_out_order(ops) == (split == "test_ood")


def _generate(cfg: SyntheticDataConfig, split: str, n: int, exclude: set[str]) -> list[dict[str, Any]]:
    lo_steps, hi_steps, start_lo, start_hi, cap = split_ranges(cfg, split)
    if not (1 <= lo_steps <= hi_steps) or start_lo > start_hi or cfg.max_operand < 2 or cfg.max_value < 2 * start_hi:
        raise ValueError(f"synthetic split '{split}': empty range (steps {lo_steps}..{hi_steps}, start {start_lo}..{start_hi})")
    rng = _split_rng(cfg.seed, split)
    # Slips draw from their own stream: the questions do not depend on the error rate.
    demo_rng = _split_rng(cfg.seed, f"{split}:demonstrations")
    demo_error_rate = cfg.demo_error_rate if split == "train" else 0.0
    seen = set(exclude)
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"synthetic split '{split}': cannot find {n} distinct problems; widen the ranges")
        rec, start, ops = _problem(rng, rng.randint(lo_steps, hi_steps), start_lo, start_hi, cfg.max_operand, cap)
        if rec["question"] in seen or not _admits(cfg, split, ops):
            continue
        seen.add(rec["question"])
        if demo_error_rate > 0:
            rec["demonstration"] = chain(start, ops, demo_error_rate, demo_rng)
        out.append({"id": f"{split}-{len(out):05d}", **rec})
    return out


def generate_split(cfg: SyntheticDataConfig, split: str) -> list[dict[str, Any]]:
    """The records of one split ("train", "val", "test_id" or "test_ood"), deterministic from `cfg.seed`.

    test_id excludes every train question, val every train and test_id question
    (those splits are regenerated to know them); questions are also unique within a split.
    """
    if split == "train":
        return _generate(cfg, "train", cfg.n_train, set())
    if split == "test_id":
        train_questions = {r["question"] for r in _generate(cfg, "train", cfg.n_train, set())}
        return _generate(cfg, "test_id", cfg.n_test_id, train_questions)
    if split == "val":
        train_questions = {r["question"] for r in _generate(cfg, "train", cfg.n_train, set())}
        test_questions = {r["question"] for r in _generate(cfg, "test_id", cfg.n_test_id, train_questions)}
        return _generate(cfg, "val", cfg.n_val, train_questions | test_questions)
    if split == "test_ood":
        return _generate(cfg, "test_ood", cfg.n_test_ood, set())
    raise ValueError(f"unknown synthetic split '{split}'; expected one of {SPLITS}")


def recompute_answer(question: str) -> int:
    """Recompute a question's answer by parsing the templates back (independent of the generator's bookkeeping)."""
    sentences = re.findall(r"[^.?]+[.?]", question.strip())
    if len(sentences) < 2:
        raise ValueError(f"not a synthetic question: {question!r}")
    start = _START_RE.match(sentences[0].strip().rstrip("."))
    if not start or not _QUESTION_RE.match(sentences[-1].strip()):
        raise ValueError(f"not a synthetic question: {question!r}")
    value = int(start["n"])
    for sentence in sentences[1:-1]:
        s = sentence.strip().rstrip(".")
        if m := _ADD_RE.match(s):
            value += int(m["n"])
        elif m := _SUB_RE.match(s):
            value -= int(m["n"])
        elif m := _MUL_RE.match(s):
            value *= 2 if m["verb"] == "doubles" else 3
        else:
            raise ValueError(f"unrecognised sentence {sentence.strip()!r} in {question!r}")
    return value


def prepare_dataset(cfg: SyntheticDataConfig, out_dir: Path) -> None:
    """Write train.jsonl, val.jsonl, test_id.jsonl and test_ood.jsonl into `out_dir` (all or nothing)."""
    splits = {split: generate_split(cfg, split) for split in SPLITS}
    with atomic_dir(out_dir) as tmp:
        for split, records in splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
