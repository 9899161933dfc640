"""The one prompt template every method and benchmark uses.

The model is asked for `{reasoning} #### {answer}`; the answer phase starts
once the marker has been emitted (METHODS.md).
"""

from __future__ import annotations

from typing import Any

ANSWER_MARKER = "####"
INSTRUCTION = "Think step by step, then write #### and the final answer."


def user_message(question: str) -> str:
    """The user turn for a question."""
    return f"{question.strip()}\n{INSTRUCTION}"


def build_prompt(tokenizer: Any, question: str) -> str:
    """The full prompt text (chat template applied, generation prompt opened)."""
    messages = [{"role": "user", "content": user_message(question)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
