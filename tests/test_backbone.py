"""Backbones: the tokenizer, the embedded tiny model's build / save / load, and hub resolution offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tarpo.backbone as backbone
from tarpo.backbone import (
    HUB_FILE,
    build_backbone,
    build_tiny_model,
    build_tokenizer,
    load_backbone,
    tokenizer_corpus,
)
from tarpo.config import SyntheticDataConfig, TinyModelConfig, load_config
from tarpo.data.synthetic import generate_split, prepare_dataset
from tarpo.data.template import build_prompt
from tarpo.io import MissingInputError

DATA = {"n_train": 200, "n_test_id": 8, "n_test_ood": 8}
MODEL = {"vocab_size": 320, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 256}
SMOKE = {
    "name": "test-backbone",
    "datasets": {"synthetic": DATA},
    "backbones": {"tiny": {"kind": "embedded", "model": MODEL,
                           "warm_start": {"steps": 5, "batch_size": 8, "eval_problems": 4}}},
}
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("TARPO_TRACKING", "off")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(tokenizer_corpus(generate_split(SyntheticDataConfig(**DATA), "train")), vocab_size=320)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare_dataset(SyntheticDataConfig(**DATA), out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
    """Build the smoke backbone once, keeping a handle on the in-memory model it trained."""
    made = []
    original = backbone.build_tiny_model

    def recording(cfg, tok):
        made.append(original(cfg, tok))
        return made[-1]

    out = tmp_path_factory.mktemp("bb") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TARPO_TRACKING", "off")
        mp.setattr(backbone, "build_tiny_model", recording)
        build_backbone(load_config(SMOKE), "tiny", data_dir, out)
    assert len(made) == 1
    return out, made[0]


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "Ann has 5 apples. She buys 3 more.",
        "5 + 3 = 8. 8 - 2 = 6. 6 * 2 = 12. #### 12",
        "####  ####\n\n\t 0071 -42 3.14159",
        "naïve café — 数学 🙂 ∑x²",
        "  leading and trailing spaces  ",
        "Zebra QUIZ xyzzy {}[]<>|\\ `~!@$%^&",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_digits_are_single_tokens(tokenizer):
    ids = tokenizer("1234567890", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == list("1234567890")
    assert len(tokenizer(" 205 ", add_special_tokens=False)["input_ids"]) >= 3
    # Even a corpus made of nothing but repeated numbers must not merge digits.
    numeric = build_tokenizer(["12 12 345 345 2024 12345"] * 100, vocab_size=300)
    ids = numeric("12 2024 12345", add_special_tokens=False)["input_ids"]
    assert [t for t in numeric.convert_ids_to_tokens(ids) if t not in ("Ġ",)] == list("12202412345")


def test_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 0
    assert tokenizer("<|im_start|>x<|im_end|>", add_special_tokens=False)["input_ids"][::2] == [1, 2]
    assert tokenizer.decode([1, 2], skip_special_tokens=True) == ""
    assert 259 < len(tokenizer) <= 320  # bytes + specials + some merges, bounded by vocab_size


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Q?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(tokenizer, "Ann has 1 apple.") == (
        "<|im_start|>user\nAnn has 1 apple.\nThink step by step, then write #### and the final answer.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ---------------------------------------------------------------- embedded backbone


def test_warm_start_labels_cover_completion_and_eos_only(tokenizer):
    records = [{"question": "Ann has 5 apples. How many apples does Ann have now?", "solution": "#### 5"},
               {"question": "Ben has 12 cards. He loses 2. How many cards does Ben have now?",
                "solution": "12 - 2 = 10. #### 10"}]
    examples = backbone._encode_sft(tokenizer, records)
    batch = backbone._collate(examples, tokenizer.pad_token_id)
    for row, (r, (ids, n_prompt)) in enumerate(zip(records, examples)):
        prompt_ids = tokenizer(build_prompt(tokenizer, r["question"]), add_special_tokens=False)["input_ids"]
        assert ids[:n_prompt] == prompt_ids and ids[-1] == tokenizer.eos_token_id
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == -100).all() and (labels[len(ids):] == -100).all()
        assert tokenizer.decode(labels[n_prompt:len(ids)]) == r["solution"] + "<|im_end|>"
        assert int(batch["attention_mask"][row].sum()) == len(ids)


def test_tiny_model_shape(tokenizer):
    model = build_tiny_model(TinyModelConfig(**MODEL), tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == 2 and model.config.pad_token_id == 0
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_build_backbone_writes_loadable_model(built, data_dir):
    out, model = built
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "warm_start.json"} <= names
    summary = json.loads((out / "warm_start.json").read_text())
    assert summary["n_params"] == sum(p.numel() for p in model.parameters())
    assert summary["losses"]["steps"] == 5 and len(summary["losses"]["loss_curve"]) >= 1
    assert summary["losses"]["loss_first"] > 4.0  # ~log(vocab) at initialisation
    assert summary["quick_pass_at_1"]["n_test_id"] == 4
    assert 0.0 <= summary["quick_pass_at_1"]["test_id"] <= 1.0

    tok = AutoTokenizer.from_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompt = build_prompt(tok, "Ann has 5 apples. She buys 3 more. How many apples does Ann have now?")
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    assert tok.decode(ids[0]) == prompt

    model2, tok2 = load_backbone(out)
    assert tok2.padding_side == "left" and tok2.eos_token_id == 2 and tok2.pad_token_id == 0
    with torch.no_grad():
        assert torch.equal(model2(ids).logits, loaded(ids).logits)


def test_build_backbone_is_deterministic(built, data_dir, tmp_path):
    out, _ = built
    build_backbone(load_config(SMOKE), "tiny", data_dir, tmp_path / "again")
    first = json.loads((out / "warm_start.json").read_text())["losses"]
    second = json.loads((tmp_path / "again" / "warm_start.json").read_text())["losses"]
    assert first["loss_curve"] == second["loss_curve"]
    assert (out / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()


def test_missing_train_split(tmp_path):
    with pytest.raises(MissingInputError, match=r"train\.jsonl.*tarpo prepare"):
        build_backbone(load_config(SMOKE), "tiny", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(MissingInputError, match="--data"):
        build_backbone(load_config(SMOKE), "tiny", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- hub backbones


def _hub_config(repo_id: str, revision: str = "main"):
    return load_config({"backbones": {"big": {"kind": "hub", "repo_id": repo_id, "revision": revision}}})


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_hub_missing_repo(hf_home, tmp_path):
    with pytest.raises(MissingInputError) as err:
        build_backbone(_hub_config("nobody-here/missing-model", "v1.0"), "big", None, tmp_path / "out")
    msg = str(err.value)
    assert "nobody-here/missing-model" in msg and "'v1.0'" in msg
    assert "download nobody-here/missing-model --revision v1.0" in msg and "HF_HOME" in msg
    assert not (tmp_path / "out").exists()


def test_hub_backbone_from_local_cache(hf_home, tokenizer, tmp_path):
    # A fake hub cache: models--{org}--{name}/refs/main -> commit, snapshots/{commit}/ the files.
    repo = hf_home / "hub" / "models--tarpo-test--tiny-hub"
    snapshot = repo / "snapshots" / SHA
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(**MODEL), tokenizer).eval()
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)

    for revision in ("main", SHA):
        out = tmp_path / f"out-{revision[:4]}"
        build_backbone(_hub_config("tarpo-test/tiny-hub", revision), "big", None, out)
        assert sorted(p.name for p in out.iterdir()) == [HUB_FILE]  # weights are not copied
        info = json.loads((out / HUB_FILE).read_text())
        assert info["repo_id"] == "tarpo-test/tiny-hub" and info["commit"] == SHA
        assert Path(info["snapshot_path"]) == snapshot

    loaded, tok = load_backbone(out, dtype="float32")
    assert tok.padding_side == "left"
    ids = torch.tensor([[1, 40, 50, 60, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

    with pytest.raises(MissingInputError, match="tarpo-test/tiny-hub"):
        build_backbone(_hub_config("tarpo-test/tiny-hub", "no-such-tag"), "big", None, tmp_path / "bad")
