"""Shared fixtures: a tiny tokenizer and randomly initialised Qwen2 models small enough for 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TARPO_TRACKING", "off")  # tests that track set up their own store


@pytest.fixture(scope="session")
def synthetic_records():
    from tarpo.config import SyntheticDataConfig
    from tarpo.data.synthetic import generate_split

    return generate_split(SyntheticDataConfig(n_train=120, n_test_id=8, n_test_ood=8), "train")


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_records):
    from tarpo.backbone import build_tokenizer, tokenizer_corpus

    return build_tokenizer(tokenizer_corpus(synthetic_records), vocab_size=300)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from tarpo.backbone import build_tiny_model
    from tarpo.config import TinyModelConfig

    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                             intermediate_size=64), tiny_tokenizer)
    return model.eval()
