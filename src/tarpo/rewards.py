"""What counts as "correct": the one definition used as training reward and by evaluation.

A completion is `{reasoning} #### {answer}`. It scores 1 only if it holds
exactly one marker and the answer after it verifies against the gold answer:
math by `math-verify` (after light normalisation), multiple choice by letter,
code by running the HumanEval tests in the sandbox (METHODS.md, "Shared").
"""

from __future__ import annotations

import functools
import re
import textwrap
import threading
from decimal import Decimal, InvalidOperation
from typing import Any

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from tarpo.data.template import ANSWER_MARKER
from tarpo.sandbox import run_check

__all__ = ["ANSWER_MARKER", "extract_answer", "verify_math", "verify_choice", "verify_code",
           "code_program", "reward", "reasoning_chain", "gold_chain", "chain_correct"]

MAX_ANSWER_CHARS = 512  # longer math "answers" (pred or gold) are rejected: rambling, and slow to parse
_MATH_TIMEOUT_S = 3  # math-verify's own (SIGALRM) timeout; only usable on the main thread

# Special tokens a decoder may leave at the end (<|endoftext|>, <|im_end|>, <|eot_id|>, </s>, ...).
_EOS_TAIL = re.compile(r"(?:\s*(?:<\|[^<>|\s]{1,40}\|>|</s>|<eos>|<end_of_turn>))+\s*$")


def _answer_text(completion: str) -> str | None:
    """The raw (unstripped) text after the marker, or None unless there is exactly one marker."""
    if not isinstance(completion, str):
        return None
    text = _EOS_TAIL.sub("", completion)
    if text.count(ANSWER_MARKER) != 1:
        return None
    return text.split(ANSWER_MARKER, 1)[1]


def extract_answer(completion: str) -> str | None:
    """The stripped text after the answer marker; None for zero or several markers.

    An empty answer ("... ####") gives "", which no verifier accepts.
    """
    raw = _answer_text(completion)
    return None if raw is None else raw.strip()


# ---------------------------------------------------------------------------
# math

_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b\s*(?:is|:|=)?\s*:?\s*", re.I)
_WRAPPER = re.compile(r"^\\(?:boxed|fbox|text|textbf|textrm|mathrm|mbox)\s*\{(.*)\}$", re.S)
_UNIT_TEXT = r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z\s.]*\}"
_UNIT_TEXT_SUFFIX = re.compile(rf"^(.*?[\d}}])\s*(?:{_UNIT_TEXT}\s*)+$", re.S)
_UNIT_WORD_SUFFIX = re.compile(r"^(.*?\d)\s+([A-Za-z][A-Za-z.]+(?:\s+[A-Za-z][A-Za-z.]*)*)$", re.S)
_NOT_UNITS = {"pi", "sqrt", "inf", "infty", "infinity", "and", "or"}  # words that are maths, not units
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*percent\s*\})$")
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)$")


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _normalise_math(s: str) -> str:
    """Light clean-up that math-verify does not do (or does not do for bare strings)."""
    s = s.strip().replace("\u2212", "-")  # unicode minus
    s = _LEAD_IN.sub("", s)
    s = s.replace("\\$", "").replace("$", "")  # currency signs and inline-math delimiters
    s = s.replace("{,}", "")  # LaTeX thousands separator 1{,}000
    while (m := _WRAPPER.match(s)) and _balanced(m.group(1)):
        s = m.group(1).strip()
    s = s.rstrip(" .")
    if not re.search(r"[()\[\]{}]", s):  # plain numbers only: "(1,234)" may be a tuple
        s = _THOUSANDS.sub("", s)
    if m := _UNIT_TEXT_SUFFIX.match(s):
        s = m.group(1)
    if (m := _UNIT_WORD_SUFFIX.match(s)) and m.group(2).split()[0].lower() not in _NOT_UNITS:
        s = m.group(1)
    s = _PERCENT.sub("", s)  # 50% is compared as 50: golds (GSM8K, MATH) write percentages that way
    s = _DEGREES.sub("", s)
    return s.strip()


def _squash(s: str) -> str:
    """Canonical string for the exact-match fallback."""
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left|\\right|\\[,;:! ]|\s+", "", s)
    return s if "\\" in s else s.casefold()  # "Yes" == "yes", but \Pi != \pi


def _exponents(s: str) -> list[str]:
    """The text of every exponent in `s` (brace or paren group, or one token)."""
    out = []
    for m in re.finditer(r"\^", s):
        i = m.end()
        while i < len(s) and s[i].isspace():
            i += 1
        if i < len(s) and s[i] in "{(":
            close, depth, j = {"{": "}", "(": ")"}[s[i]], 0, i
            while j < len(s):
                depth += (s[j] == s[i]) - (s[j] == close)
                if depth == 0:
                    break
                j += 1
            out.append(s[i + 1:j])
        else:
            out.append(re.match(r"[\w.]*", s[i:]).group(0))  # type: ignore[union-attr]
    return out


def _too_expensive(s: str) -> bool:
    """Reject answers whose evaluation could run for minutes inside sympy (e.g. 9^{9^{9}}).

    math-verify's timeout is a SIGALRM: off the main thread it is unavailable,
    and even on it a single huge big-int operation in C cannot be interrupted.
    Real answers never need these forms, so a cheap syntactic check is enough.
    """
    s = s.replace("**", "^")
    exps = _exponents(s)
    if any("^" in e or "!" in e for e in exps):  # towers: 2^{2^{100}}
        return True
    if re.search(r"\^\s*(?:\{[^{}]*\}|\([^()]*\)|[\w.]+)\s*\^", s):  # chains: 9^9^9, 10^{10}^{10}
        return True
    if sum(len(d) for e in exps for d in re.findall(r"\d+", e)) > 5:  # 2^{99999} is fine, 2^{10^{6}} is not
        return True
    if re.search(r"[)}!]\s*!", s):  # factorial of a factorial or of an expression
        return True
    if re.search(r"!|binom|choose|\\prod|\\sum", s) and re.search(r"\d{6,}", s):
        return True
    return False


@functools.lru_cache(maxsize=8192)  # gold answers recur for every completion of a group
def _parse_math(s: str, timeout: int | None) -> list[Any]:
    # Wrapped in \boxed{} so bare LaTeX (\frac12, x^2+1, (1,2)) is parsed as LaTeX;
    # plain parsing is the fallback when that finds nothing.
    wrapped = s if "\\boxed" in s or "\\fbox" in s else f"\\boxed{{{s}}}"
    return parse(wrapped, parsing_timeout=timeout) or parse(s, parsing_timeout=timeout)


def verify_math(pred: str, gold: str) -> bool:
    """Whether `pred` is mathematically the same answer as `gold` (never raises)."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return False
        p, g = _normalise_math(pred), _normalise_math(gold)
        if not p or not g:
            return False
        if _squash(p) == _squash(g):
            return True
        if _too_expensive(p) or _too_expensive(g):
            return False
        # SIGALRM-based timeouts fail off the main thread; there we rely on _too_expensive.
        timeout = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
        gold_parsed, pred_parsed = _parse_math(g, timeout), _parse_math(p, timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return False


# ---------------------------------------------------------------------------
# multiple choice

_CHOICE_PATTERNS = [
    re.compile(r"\(?\s*([A-Ea-e])\s*\)?[.:]?"),  # B, (B), B), b, B.
    re.compile(r"(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*:?\s*"
               r"\(?([A-Ea-e])\)?\.?", re.I),  # The answer is B, Answer: (b)
    re.compile(r"\(?([A-E])[).:]\s+\S.*", re.S),  # B) 42, (C) Paris, D. none of these
]


def _choice_letter(s: str) -> str | None:
    s = s.strip().replace("$", "").replace("*", "").strip("\"'` ")
    while (m := _WRAPPER.match(s)) and _balanced(m.group(1)):
        s = m.group(1).strip()
    for pattern in _CHOICE_PATTERNS:
        if m := pattern.fullmatch(s):
            return m.group(1).upper()
    return None


def verify_choice(pred: str, gold: str) -> bool:
    """Multiple choice, compared by option letter A-E (never raises)."""
    try:
        letter = _choice_letter(pred)
        return letter is not None and letter == _choice_letter(gold)
    except Exception:
        return False


# ---------------------------------------------------------------------------
# code


def verify_code(program: str, test: str, entry_point: str, timeout_s: float = 5.0,
                prompt: str | None = None) -> bool:
    """HumanEval style: `program` (prompt + completion) passes `test`'s check(entry_point).

    The test runs in a trusted process that calls the sandboxed program across
    a process boundary with plain data only (`sandbox.run_check`), so the
    program cannot forge the verdict (exit early, trace and replace `check`,
    return an always-equal object). `prompt`, when given, supplies the helpers
    a test may use besides the candidate (e.g. encode_cyclic) from the task
    rather than from the program. Whatever the program does, this returns
    False rather than raising; only a failure of the machine itself (no temp
    dir, say) propagates.
    """
    return run_check(program, test, entry_point, prompt=prompt, timeout_s=timeout_s).passed


def code_program(answer: str, prompt: str, entry_point: str) -> str:
    """The program to test, built from the raw answer-phase text of a code completion.

    The answer phase holds the code (a ```python fence is unwrapped). If it
    defines `entry_point` itself, it is appended after the prompt (the prompt's
    stub, a docstring-only function, is simply redefined; its imports stay).
    Otherwise it is taken as the function body and indented under the prompt.
    """
    if fence := re.search(r"```[^\n]*\n(.*?)(?:```|$)", answer, re.S):
        answer = fence.group(1)
    code = textwrap.dedent(answer).strip("\n")
    if not prompt.endswith("\n"):
        prompt += "\n"
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        return f"{prompt}\n{code}\n"
    return f"{prompt}{textwrap.indent(code, '    ')}\n"


def reward(completion: str, gold: str, kind: str = "math", **kw: Any) -> float:
    """1.0 if the completion has exactly one marker and its answer verifies against `gold`, else 0.0.

    kind: "math" | "choice" | "code". For "code" the answer phase is the code
    (see `code_program`); kw must carry `prompt` and `entry_point`, and `test`
    (the HumanEval check code; `gold` is used when it is absent), optionally
    `timeout_s`.
    """
    if kind not in ("math", "choice", "code"):
        raise ValueError(f"unknown answer kind {kind!r}")
    answer = _answer_text(completion)
    if answer is None:
        return 0.0
    if kind == "math":
        ok = verify_math(answer.strip(), gold)
    elif kind == "choice":
        ok = verify_choice(answer.strip(), gold)
    else:
        entry_point = kw["entry_point"]
        program = code_program(answer, kw["prompt"], entry_point)
        ok = verify_code(program, kw.get("test", gold), entry_point, timeout_s=kw.get("timeout_s", 5.0),
                         prompt=kw["prompt"])
    return 1.0 if ok else 0.0


# ---------------------------------------------------------------------------
# reasoning chains (is a correct answer backed by the right steps?)
#
# A GSM8K-shaped reasoning writes each step's result after an "=":
# "5 + 3 = 8. 8 - 2 = 6. #### 6". Its chain is the sequence of those results.
# A completion's chain is right iff it equals the gold solution's; a correct
# answer with a wrong chain was lucky (see evaluate's lucky_share).

_CHAIN_STEP = re.compile(r"=\s*(-?\d[\d,]*(?:\.\d+)?)?")


def _canonical_number(text: str) -> str:
    """'1,200' -> '1200', '8.0' -> '8', '-0' -> '0': equal numbers compare equal as strings."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return text
    value = value.normalize()
    return "0" if value == 0 else format(value, "f")


def reasoning_chain(text: str) -> list[str] | None:
    """The number after each '=' in the reasoning (the text before the first answer marker), canonical;
    a '=' followed by no number gives ''. None when the reasoning has no '='."""
    if not isinstance(text, str):
        return None
    reasoning = text.split(ANSWER_MARKER, 1)[0]
    steps = [_canonical_number(m.group(1)) if m.group(1) else "" for m in _CHAIN_STEP.finditer(reasoning)]
    return steps or None


def gold_chain(solution: str | None) -> list[str] | None:
    """The chain of a gold solution written as `steps #### answer` with a number after every '='; None
    where no such chain can be read: no solution or marker (MATH-style LaTeX proofs), GSM8K's `<<a+b=c>>`
    calculator annotations (its free-form prose is not comparable step for step), a '=' without a number."""
    if not isinstance(solution, str) or solution.count(ANSWER_MARKER) != 1 or "<<" in solution:
        return None
    chain = reasoning_chain(solution)
    if chain is None or "" in chain:
        return None
    return chain


def chain_correct(completion: str, solution: str | None) -> bool | None:
    """Whether the completion's chain equals the gold solution's; None when the gold has no chain."""
    gold = gold_chain(solution)
    if gold is None:
        return None
    return reasoning_chain(completion) == gold
