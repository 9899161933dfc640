"""One no-decay rule for every optimiser: the warm start, ATP-Latent's SFT and RL exempt the same parameters
(biases, norm weights, embeddings; a mode's heads entirely), each checked against a list written by hand."""

from __future__ import annotations

import torch
from test_atp import atp_parts

from tarpo.optim import decay_groups

from conftest import TINY_DECAYED, TINY_NO_DECAY


class CapturingAdamW(torch.optim.AdamW):
    """AdamW that remembers the groups it was built with (the last instance)."""

    built: list[list[dict]] = []

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        CapturingAdamW.built.append(self.param_groups)


def contents(groups, named: dict[int, str]) -> dict[float, list[str]]:
    """weight decay -> the sorted names of its parameters (groups with equal decay merged)."""
    out: dict[float, list[str]] = {}
    for g in groups:
        out.setdefault(g["weight_decay"], []).extend(named[id(p)] for p in g["params"])
    return {wd: sorted(names) for wd, names in out.items()}


def test_decay_groups_by_hand(tiny_model):
    groups = decay_groups(tiny_model, 1e-3, 0.1, "backbone")
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", 1e-3, 0.1), ("backbone_no_decay", 1e-3, 0.0)]
    named = {id(p): n for n, p in tiny_model.named_parameters()}
    assert contents(groups, named) == {0.1: TINY_DECAYED, 0.0: TINY_NO_DECAY}
    assert [g["name"] for g in decay_groups(tiny_model, 1e-3, 0.1, "heads", exempt_all=True)] == ["heads_no_decay"]


def test_the_warm_start_uses_the_rule(tiny_model, tiny_tokenizer, synthetic_records, monkeypatch):
    from tarpo.backbone import warm_start
    from tarpo.config import WarmStartConfig

    CapturingAdamW.built.clear()
    monkeypatch.setattr(torch.optim, "AdamW", CapturingAdamW)
    warm_start(tiny_model, tiny_tokenizer, synthetic_records[:8], WarmStartConfig(steps=1, batch_size=2,
                                                                                    weight_decay=0.05), seed=0)
    (groups,) = CapturingAdamW.built
    named = {id(p): n for n, p in tiny_model.named_parameters()}
    assert contents(groups, named) == {0.05: TINY_DECAYED, 0.0: TINY_NO_DECAY}


def test_atp_sft_uses_the_rule(tiny_model, tiny_tokenizer, synthetic_records, monkeypatch):
    from tarpo.atp_sft import Example, train_vae

    model, decoder, tok, mode = atp_parts(tiny_tokenizer, tiny_model, max_steps=2)
    CapturingAdamW.built.clear()
    monkeypatch.setattr(torch.optim, "AdamW", CapturingAdamW)
    examples = [Example(tok, r["question"], r["solution"]) for r in synthetic_records if r["steps"] == 2][:2]
    train_vae(model, decoder, mode, examples, steps_per_stage=1, latent_steps=0, batch_size=2, learning_rate=1e-3,
              weight_decay=0.1, kl_weight=1e-3, seed=0)
    (groups,) = CapturingAdamW.built
    named = {id(p): f"backbone.{n}" for n, p in model.named_parameters()}
    named |= {id(p): f"decoder.{n}" for n, p in decoder.named_parameters()}
    named |= {id(p): f"heads.{n}" for n, p in mode.named_parameters()}
    heads = sorted(f"heads.{n}" for n, _ in mode.named_parameters())
    assert heads  # ATP-Latent has heads: every one exempt
    assert contents(groups, named) == {
        0.1: sorted([f"backbone.{n}" for n in TINY_DECAYED] + [f"decoder.{n}" for n in TINY_DECAYED]),
        0.0: sorted([f"backbone.{n}" for n in TINY_NO_DECAY] + [f"decoder.{n}" for n in TINY_NO_DECAY] + heads)}
