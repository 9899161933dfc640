"""The synthetic GSM8K-format task: determinism, recomputable answers, split disjointness and OOD ranges."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tarpo.config import SyntheticDataConfig
from tarpo.data.synthetic import SPLITS, generate_split, prepare_dataset, recompute_answer
from tarpo.io import read_jsonl

CFG = SyntheticDataConfig(n_train=200, n_val=40, n_test_id=60, n_test_ood=60, ood_max_operand=12, demo_error_rate=0.3)
STEP_RE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)\.$")


@pytest.fixture(scope="module")
def splits():
    return {split: generate_split(CFG, split) for split in SPLITS}


def _start(question: str) -> int:
    return int(re.match(r"^[A-Z][a-z]+ has (\d+) ", question).group(1))


def _question_numbers(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def test_example_from_the_docs():
    q = ("Ann has 5 apples. She buys 3 more. She gives away 2. Then the number of apples doubles. "
         "How many apples does Ann have now?")
    assert recompute_answer(q) == 12
    q = "Tom has 4 cards. Then the number of cards triples. He sells 5. How many cards does Tom have now?"
    assert recompute_answer(q) == 7


@pytest.mark.parametrize("bad", ["", "What is 2 + 2?", "Ann has 5 apples. She flies away. How many apples does Ann have now?"])
def test_recompute_rejects_other_text(bad):
    with pytest.raises(ValueError):
        recompute_answer(bad)


def test_same_seed_same_records_different_seed_different():
    a = generate_split(CFG, "train")
    assert generate_split(CFG, "train") == a
    other = generate_split(SyntheticDataConfig(seed=CFG.seed + 1, n_train=200), "train")
    assert len(other) == len(a) == 200
    assert sum(x["question"] == y["question"] for x, y in zip(a, other)) < 10


def test_record_format(splits):
    for split, records in splits.items():
        assert len(records) == {"train": 200, "val": 40, "test_id": 60, "test_ood": 60}[split]
        for i, r in enumerate(records):
            extra = {"demonstration"} if split == "train" else set()  # only train is imitated
            assert set(r) == {"id", "question", "solution", "answer", "steps"} | extra
            assert r["id"] == f"{split}-{i:05d}"
            assert r["solution"].count("####") == 1
            assert r["solution"].endswith(f" #### {r['answer']}")
            assert r["answer"] == str(int(r["answer"]))


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _steps(chain: str) -> list[tuple[int, str, int, int]]:
    body = chain.split(" #### ")[0]
    steps = [s + "." for s in body.split(". ")]
    steps[-1] = steps[-1][:-1]  # the last one kept its own '.'
    out = []
    for step in steps:
        m = STEP_RE.match(step)
        assert m, step
        out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return out


def test_gold_answers_recompute_and_steps_are_correct(splits):
    for split, records in splits.items():
        for r in records:
            assert recompute_answer(r["question"]) == int(r["answer"]), r
            steps = _steps(r["solution"])
            assert len(steps) == r["steps"]
            value = _start(r["question"])
            for a, op, b, c in steps:
                assert a == value  # each step continues from the previous result
                assert OPS[op](a, b) == c
                assert 1 <= c <= CFG.max_value  # intermediate values positive and bounded
                value = c
            assert value == int(r["answer"])


def test_demonstrations_slip_by_one_at_the_configured_rate(splits):
    slips = total = 0
    for r in splits["train"]:
        gold, demo = _steps(r["solution"]), _steps(r["demonstration"])
        assert [(op, b) for _, op, b, _ in demo] == [(op, b) for _, op, b, _ in gold]  # same operations
        value = _start(r["question"])
        for a, op, b, c in demo:
            assert a == value  # the teacher goes on from its own (possibly wrong) result
            assert c - OPS[op](a, b) in (0, 1)
            slips += c != OPS[op](a, b)
            total += 1
            value = c
        final = int(r["demonstration"].split(" #### ")[1])
        assert final == value
        # a slipped chain never reaches the gold answer (every operation is increasing)
        assert (final == int(r["answer"])) == (demo == gold)
    assert abs(slips / total - CFG.demo_error_rate) < 0.05
    clean = generate_split(SyntheticDataConfig(n_train=200, demo_error_rate=0.0), "train")
    assert "demonstration" not in clean[0]
    # the questions do not depend on the error rate
    assert [r["question"] for r in clean] == [r["question"] for r in splits["train"]]


def test_test_id_disjoint_from_train_and_questions_unique(splits):
    train_q = {r["question"] for r in splits["train"]}
    assert not train_q & {r["question"] for r in splits["test_id"]}
    val_q = {r["question"] for r in splits["val"]}
    assert not val_q & train_q and not val_q & {r["question"] for r in splits["test_id"]}
    for records in splits.values():
        assert len({r["question"] for r in records}) == len(records)
        assert len({r["id"] for r in records}) == len(records)


def test_id_ranges(splits):
    for split in ("train", "test_id"):
        for r in splits[split]:
            assert CFG.min_steps <= r["steps"] <= CFG.max_steps
            assert max(_question_numbers(r["question"])) <= CFG.max_operand
    assert {r["steps"] for r in splits["train"]} == set(range(CFG.min_steps, CFG.max_steps + 1))


def _operations(question: str) -> list[str]:
    """The question's operation sentences as '+', '-' or '*', read from its text."""
    kinds = {"buys": "+", "finds": "+", "gets": "+", "gives": "-", "loses": "-", "sells": "-",
             "doubles": "*", "triples": "*"}
    sentences = re.findall(r"[^.?]+[.?]", question)[1:-1]
    return [next(kinds[w] for w in re.findall(r"[a-z]+", s) if w in kinds) for s in sentences]


def test_order_shift_holds_a_multiplication_then_subtraction_out_of_train(splits):
    """Default shift: test_ood problems all contain '* then -'; train and test_id never do; lengths and starts
    stay in the train ranges."""
    assert CFG.ood_shift == "order"
    pair = lambda ops: any(a == "*" and b == "-" for a, b in zip(ops, ops[1:]))  # noqa: E731
    for split in ("train", "test_id"):
        assert not any(pair(_operations(r["question"])) for r in splits[split])
    for r in splits["test_ood"]:
        ops = _operations(r["question"])
        assert pair(ops) and len(ops) == r["steps"] and CFG.min_steps <= r["steps"] <= CFG.max_steps
        assert 1 <= _start(r["question"]) <= CFG.max_operand
        assert recompute_answer(r["question"]) == int(r["answer"])
    # every other pair of consecutive operations does occur in train
    seen = {(a, b) for r in splits["train"] for ops in [_operations(r["question"])] for a, b in zip(ops, ops[1:])}
    assert seen == {(a, b) for a in "+-*" for b in "+-*"} - {("*", "-")}


def test_order_shift_needs_two_steps():
    from tarpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="ood_shift 'order' needs max_steps >= 2"):
        load_config({"datasets": {"synthetic": {"min_steps": 1, "max_steps": 1}}}, partial=True)


def test_ood_chains_are_longer_than_train():
    length = dataclasses.replace(CFG, ood_shift="length")
    splits = {split: generate_split(length, split) for split in SPLITS}
    train_max_steps = max(r["steps"] for r in splits["train"])
    train_max_start = max(_start(r["question"]) for r in splits["train"])
    assert train_max_steps == CFG.max_steps and train_max_start <= CFG.max_operand
    for r in splits["test_ood"]:
        assert CFG.ood_min_steps <= r["steps"] <= CFG.ood_max_steps
        assert r["steps"] > train_max_steps
        assert 1 <= _start(r["question"]) <= CFG.ood_max_operand
    assert max(_start(r["question"]) for r in splits["test_ood"]) > train_max_start  # ood_max_operand 12 > 9
    assert {r["steps"] for r in splits["test_ood"]} == set(range(CFG.ood_min_steps, CFG.ood_max_steps + 1))


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown synthetic split"):
        generate_split(CFG, "valid")


def test_prepare_writes_parseable_identical_files(tmp_path):
    prepare_dataset(CFG, tmp_path / "a")
    prepare_dataset(CFG, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test_id.jsonl", "test_ood.jsonl", "train.jsonl", "val.jsonl"]
    for split in SPLITS:
        text = (tmp_path / "a" / f"{split}.jsonl").read_text()
        assert text == (tmp_path / "b" / f"{split}.jsonl").read_text()  # byte-identical from the same seed
        rows = read_jsonl(tmp_path / "a" / f"{split}.jsonl")
        assert rows == generate_split(CFG, split)
        assert all(json.loads(line)["id"].startswith(f"{split}-") for line in text.splitlines())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_adding_the_validation_split_left_the_other_splits_unchanged(splits):
    # each split has its own stream: val takes problems of its own, the reported splits are the ones
    # generated before it existed (their first records, pinned by question text)
    assert splits["val"][0]["id"] == "val-00000"
    for split in ("train", "test_id", "test_ood"):
        again = generate_split(SyntheticDataConfig(n_train=200, n_val=7, n_test_id=60, n_test_ood=60,
                                                   ood_max_operand=12, demo_error_rate=0.3), split)
        assert again == splits[split]
