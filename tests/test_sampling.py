"""The one sampling path: `sample_and_score` serves training, evaluation, ATP's SFT checks and the warm start's
quick check, so they draw the same completions for the same seed and score them with the same checker."""

import pytest
import torch

from tarpo.backbone import quick_pass_at_1
from tarpo.config import TrainConfig
from tarpo.data.template import build_prompt
from tarpo.evaluate import sample_batch
from tarpo.methods import get_method
from tarpo.rewards import reward
from tarpo.sampling import engine_defaults, reward_kwargs, sample_and_score, score_texts

from conftest import format_corpus, train_format_model


@pytest.fixture(scope="module")
def chat_model(tiny_tokenizer):
    """The format model trained on prompts as the pipeline writes them (chat template), about 2 s."""
    tok = tiny_tokenizer
    return train_format_model(tok, lambda prompt: tok(build_prompt(tok, prompt), add_special_tokens=False)["input_ids"])


def _records(n: int) -> list[dict]:
    return [{"question": q, "answer": c.split("####")[1].strip(), "kind": "math"} for q, c in format_corpus(n, seed=3)]


def test_rows_are_contiguous_per_record_decoded_and_scored(chat_model, tiny_tokenizer):
    tok, model = tiny_tokenizer, chat_model
    mode = get_method("grpo").build_mode(TrainConfig(), model.config.hidden_size)
    records = _records(5)
    drawn = sample_and_score(model, tok, mode, records, repeats=3, temperature=0.7, max_new_tokens=40,
                             max_prompt_tokens=256, generator=torch.Generator().manual_seed(1))
    assert drawn.rollout.tokens.shape[0] == len(drawn.texts) == len(drawn.rewards) == 15
    for i, text in enumerate(drawn.texts):
        valid = drawn.rollout.valid[i]
        assert text == tok.decode(drawn.rollout.tokens[i][valid], skip_special_tokens=True)
        assert drawn.rewards[i] == reward(text, records[i // 3]["answer"])
    assert drawn.correct == [r > 0 for r in drawn.rewards]
    # a record's repeats are its own draws, not copies
    assert len(set(drawn.texts[:3])) > 1


def test_the_warm_start_quick_check_is_the_evaluation_path(chat_model, tiny_tokenizer):
    """One explicit sample a problem at the same seed: the quick check's pass rate is evaluation's pass@1."""
    tok, model = tiny_tokenizer, chat_model
    records = _records(24)
    mode = get_method("cot").build_mode(TrainConfig(), model.config.hidden_size)
    eos_ids, marker, _ = engine_defaults(model, tok)

    def evaluated() -> list[bool]:
        rows = sample_batch(model, tok, mode, records, k=1, temperature=0.5, max_new_tokens=80,
                            max_prompt_tokens=10_000, seed=7, eos_ids=eos_ids, marker=marker,
                            device=torch.device("cpu"))
        return [r[0]["correct"] for r in rows]

    # gold answers that evaluation's samples at seed 7 hit for some problems and miss for others: the answer
    # a sample gave, where it gave one, for the even problems; an answer nobody writes for the odd ones
    first = sample_batch(model, tok, mode, records, k=1, temperature=0.5, max_new_tokens=80, max_prompt_tokens=10_000,
                         seed=7, eos_ids=eos_ids, marker=marker, device=torch.device("cpu"))
    for i, (record, rows) in enumerate(zip(records, first)):
        record["answer"] = (rows[0]["extracted"] or "-123456") if i % 2 == 0 else "-123456"
    correct = evaluated()
    assert 0 < sum(correct) <= 12
    quick = quick_pass_at_1(model, tok, records, temperature=0.5, max_new_tokens=80, seed=7)
    eos_ids, marker, _ = engine_defaults(model, tok)
    assert quick == sum(correct) / len(records)


def test_a_code_record_passes_its_tests_to_the_checker_and_math_is_the_default_kind():
    record = {"kind": "code", "answer": "", "prompt": "def add(a, b):\n", "entry_point": "add",
              "test": "def check(f):\n    assert f(2, 3) == 5\n"}
    assert reward_kwargs(record) == {"prompt": record["prompt"], "entry_point": "add", "test": record["test"]}
    assert reward_kwargs({"kind": "math", "answer": "5"}) == {}
    assert score_texts(["2 + 3 = 5. #### 5", "#### 6"], [{"answer": 5}, {"answer": "5"}]) == [1.0, 0.0]
