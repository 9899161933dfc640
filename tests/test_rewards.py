"""The correctness oracle: answer extraction, math/choice/code verification, the reward."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tarpo.rewards import ANSWER_MARKER, code_program, extract_answer, reward, verify_choice, verify_math


def test_marker() -> None:
    assert ANSWER_MARKER == "####"


@pytest.mark.parametrize("completion,expected", [
    ("2 + 2 is 4 #### 4", "4"),
    ("reasoning ####   \\frac{1}{2}  \n", "\\frac{1}{2}"),
    ("so #### 42<|endoftext|>", "42"),
    ("so #### 42 <|im_end|>\n<|endoftext|>", "42"),
    ("so #### 42</s>", "42"),
    ("#### 7", "7"),
    ("empty answer ####", ""),
    ("no marker at all, 42", None),
    ("", None),
    ("two #### 4 #### 5", None),
    ("marker only in junk ######## 5", None),  # eight hashes are two markers
])
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


MATH_CASES = [
    # fractions, decimals, LaTeX vs plain
    ("1/2", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac12", "1/2", True),
    ("\\dfrac{1}{2}", "0.5", True),
    ("2/4", "\\frac{1}{2}", True),
    ("$\\frac{1}{2}$", "0.5", True),
    ("1/3", "0.5", False),
    ("0.33", "\\frac{1}{3}", False),
    # \boxed{}
    ("\\boxed{3}", "3", True),
    ("\\boxed{\\frac{3}{4}}", "0.75", True),
    ("3", "\\boxed{3}", True),
    ("\\boxed{4}", "3", False),
    # thousands separators
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("1,234,567", "1234567", True),
    ("12,345.5", "12345.5", True),
    ("1{,}000", "1000", True),
    ("1,000", "100", False),
    ("1,000", "10000", False),
    # negatives
    ("-3", "-3", True),
    ("\u22123", "-3", True),  # unicode minus
    ("-\\frac{1}{2}", "-0.5", True),
    ("-3", "3", False),
    ("3", "-3", False),
    # units, currency, percent, trailing words
    ("12 apples", "12", True),
    ("$5", "5", True),
    ("\\$5.00", "5", True),
    ("5 dollars", "5", True),
    ("50%", "50", True),
    ("50\\%", "50", True),
    ("12 cm", "12", True),
    ("12\\text{ cm}", "12", True),
    ("\\text{12 cm}", "12", True),
    ("90^\\circ", "90", True),
    ("3/4 cup", "0.75", True),
    ("The answer is 42", "42", True),
    ("13 apples", "12", False),
    ("5 dollars", "6", False),
    ("$6", "5", False),
    ("51%", "50", False),
    # symbolic and structured answers
    ("\\sqrt{2}", "2^{1/2}", True),
    ("x^2+1", "1+x^2", True),
    ("2\\pi", "\\pi", False),
    ("(1,2)", "(1, 2)", True),
    ("(1,2)", "(2,1)", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("x=3", "3", True),
    ("\\infty", "\\infty", True),
    # whitespace and trailing punctuation
    ("  42  ", "42", True),
    ("42.", "42", True),
    ("yes", "Yes", True),
    ("43", "42", False),
    # empty / malformed
    ("", "5", False),
    ("   ", "5", False),
    ("5", "", False),
    ("{", "1", False),
    ("\\frac{1}{", "1", False),
    ("}}}{{{", "1", False),
    ("\\boxed{", "1", False),
    ("NaN", "1", False),
]


@pytest.mark.parametrize("pred,gold,expected", MATH_CASES)
def test_verify_math_table(pred: str, gold: str, expected: bool) -> None:
    assert verify_math(pred, gold) is expected


@pytest.mark.parametrize("pred", [
    "9^{9^{9}}", "9^9^9", "9**9**9", "10^{10}^{10}", "2^{10^{6}}", "(10^{999})^{999}^{999}",
    "\\binom{1000000}{500000}", "1000000!", "(5!)!!",
])
def test_explosive_answers_are_rejected_fast(pred: str) -> None:
    start = time.monotonic()
    assert verify_math(pred, "1") is False
    assert time.monotonic() - start < 2.0


def _garbage(rng: random.Random, n: int) -> str:
    alphabet = "0123456789{}()[]\\^_$#%&!,.;:+-*/=<>|~ abcxyzABC\n\t\x00\u2212\u00b0\ud800\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_garbage_never_raises() -> None:
    rng = random.Random(0)
    samples = [_garbage(rng, rng.randint(1, 60)) for _ in range(150)]
    samples += [bytes(rng.randrange(256) for _ in range(64)).decode("latin-1") for _ in range(20)]
    samples += ["{" * 5000, "}" * 5000, "\\frac{" * 300, "(" * 3000 + "1", "1" * 100_000,
                "\\boxed{" * 200 + "1", "#" * 1000, "\\left(" * 200, "\x00" * 100]
    start = time.monotonic()
    for s in samples:
        # gold 987654321 is not a plausible reading of any of these
        assert verify_math(s, "987654321") is False
        assert verify_math("987654321", s) is False
        assert verify_choice(s, "B") is False
        assert reward(f"x {ANSWER_MARKER} {s}", "987654321") == 0.0
    assert time.monotonic() - start < 30.0


@pytest.mark.parametrize("bad", [None, 5, b"5", ["5"]])
def test_non_strings_are_false(bad: object) -> None:
    assert verify_math(bad, "5") is False  # type: ignore[arg-type]
    assert verify_math("5", bad) is False  # type: ignore[arg-type]
    assert verify_choice(bad, "B") is False  # type: ignore[arg-type]
    assert reward(bad, "5") == 0.0  # type: ignore[arg-type]


def test_verify_math_works_off_the_main_thread() -> None:
    # math-verify's default SIGALRM timeout raises off the main thread; ours must not.
    results: dict[str, bool] = {}

    def work() -> None:
        results["frac"] = verify_math("\\frac{1}{2}", "0.5")
        results["poly"] = verify_math("x^2+1", "1+x^2")
        results["wrong"] = verify_math("3", "4")
        results["tower"] = verify_math("9^{9^{9}}", "1")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results == {"frac": True, "poly": True, "wrong": False, "tower": False}


@pytest.mark.parametrize("pred,expected", [
    ("B", True), ("(B)", True), ("B)", True), ("b", True), ("B.", True), ("The answer is B", True),
    ("answer: (b).", True), ("B) 42", True), ("(B) Paris", True), ("\\boxed{B}", True), ("**B**", True),
    ("A", False), ("(C)", False), ("A or B", False), ("AB", False), ("F", False), ("banana", False),
    ("I think B", False), ("", False), ("()", False), ("\x00", False),
])
def test_verify_choice(pred: str, expected: bool) -> None:
    assert verify_choice(pred, "B") is expected
    assert verify_choice(pred, "(B)") is expected  # gold written either way


def test_verify_choice_a_to_e() -> None:
    assert verify_choice("E", "E") is True
    assert verify_choice("e)", "E") is True
    assert verify_choice("D", "E") is False


@pytest.mark.parametrize("completion,gold,expected", [
    ("2 + 2 = 4 #### 4", "4", 1.0),
    ("half #### \\frac{1}{2}<|im_end|>", "0.5", 1.0),
    ("the total is #### 1,000 dollars", "1000", 1.0),
    ("2 + 2 = 4 #### 5", "4", 0.0),
    ("2 + 2 = 4, so 4", "4", 0.0),  # no marker
    ("#### 4 #### 4", "4", 0.0),  # two markers, even when both agree
    ("2 + 2 = 4 ####", "4", 0.0),  # empty answer
    ("", "4", 0.0),
])
def test_reward_math(completion: str, gold: str, expected: float) -> None:
    assert reward(completion, gold) == expected
    assert reward(completion, gold, kind="math") == expected


def test_reward_choice() -> None:
    assert reward("it must be B #### (B)", "B", kind="choice") == 1.0
    assert reward("it must be B #### C", "B", kind="choice") == 0.0
    assert reward("it must be B", "B", kind="choice") == 0.0


def test_reward_unknown_kind() -> None:
    with pytest.raises(ValueError):
        reward("#### 1", "1", kind="essay")


PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


@pytest.mark.parametrize("answer,expected", [
    ("\n    return a + b\n", 1.0),  # body continuing the prompt
    ("\nreturn a + b", 1.0),  # unindented body
    ("\n```python\ndef add(a, b):\n    return a + b\n```\n", 1.0),  # full definition in a fence
    ("\n    return a - b\n", 0.0),
    ("\n    import sys; sys.exit(0)\n", 0.0),  # exiting 0 before the tests is no pass
    ("\n    return (\n", 0.0),  # syntax error
])
def test_reward_code(answer: str, expected: float) -> None:
    completion = f"I add them. {ANSWER_MARKER}{answer}"
    assert reward(completion, "", kind="code", prompt=PROMPT, test=TEST, entry_point="add") == expected


def test_reward_code_uses_gold_as_test_and_needs_one_marker() -> None:
    good = f"add {ANSWER_MARKER}\n    return a + b\n"
    assert reward(good, TEST, kind="code", prompt=PROMPT, entry_point="add") == 1.0
    twice = f"{ANSWER_MARKER} {ANSWER_MARKER}\n    return a + b\n"
    assert reward(twice, TEST, kind="code", prompt=PROMPT, entry_point="add") == 0.0


def test_code_program_shapes() -> None:
    body = code_program("\n    return a + b\n", PROMPT, "add")
    assert body == PROMPT + "    return a + b\n"
    full = code_program("```py\ndef add(a, b):\n    return a + b\n```", PROMPT, "add")
    assert full == PROMPT + "\ndef add(a, b):\n    return a + b\n"


# ---------------------------------------------------------------------------
# reasoning chains


def test_reasoning_chain_reads_the_number_after_each_equals_sign() -> None:
    from tarpo.rewards import chain_correct, gold_chain, reasoning_chain

    gold = "5 + 3 = 8. 8 - 2 = 6. 6 * 2 = 12. #### 12"
    assert gold_chain(gold) == ["8", "6", "12"]
    assert reasoning_chain("5 + 3 = 8. 8 - 2 = 6. 6 * 2 = 12. #### 12") == ["8", "6", "12"]
    assert reasoning_chain("a = 1,200. b = 8.0. c =-3 #### 1 = 2") == ["1200", "8", "-3"]  # after #### ignored
    assert reasoning_chain("5 + 3 = . 8 - 2 = 6 #### 6") == ["", "6"]  # a step without a result
    assert reasoning_chain("no steps #### 6") is None
    assert chain_correct(gold, gold) is True
    assert chain_correct("5 + 3 = 8. 8 - 2 = 6. 6 * 2 = 12.0 #### 12", gold) is True
    # the right answer from the wrong steps (a slip that cancels out, a skipped step, no steps at all)
    assert chain_correct("5 + 3 = 9. 9 - 3 = 6. 6 * 2 = 12. #### 12", gold) is False
    assert chain_correct("5 + 3 = 8. 8 * 2 = 12. #### 12", gold) is False
    assert chain_correct("#### 12", gold) is False


def test_gold_without_a_readable_chain_gives_none() -> None:
    from tarpo.rewards import chain_correct, gold_chain

    assert gold_chain(None) is None and gold_chain("") is None
    assert gold_chain("Natalia sold 48/2 = <<48/2=24>>24 clips. #### 72") is None  # GSM8K annotations
    assert gold_chain("So $x = \\frac{1}{2}$, and the answer is $\\boxed{3}$.") is None  # MATH: no marker
    assert gold_chain("It is 7. #### 7") is None  # no steps
    assert gold_chain("x = y. y = 3. #### 3") is None  # a step without a number
    assert chain_correct("5 = 5 #### 5", None) is None
