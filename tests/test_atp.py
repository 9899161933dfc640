"""ATP-Latent's pieces outside the rollout engine: step splitting, the curriculum, the coherence reward,
the VAE's losses on a tiny backbone."""

from __future__ import annotations

import pytest
import torch

from tarpo.atp_sft import cot_steps, curriculum
from tarpo.modes.atp_latent import coherence, step_result


def test_cot_steps_split_sentences_and_lines():
    assert cot_steps("4 * 2 = 8. 8 - 5 = 3. #### 3") == (["4 * 2 = 8.", "8 - 5 = 3."], "#### 3")
    assert cot_steps("a = 1\nb = 2\n#### 2") == (["a = 1", "b = 2"], "#### 2")
    assert cot_steps("#### 7") == ([], "#### 7")


@pytest.mark.parametrize("text,result", [("8 - 5 = 3.", "3"), ("1,200 + 5 = 1,205", "1205"), ("no equals 5", ""),
                                         ("3 = ", ""), ("a = 2 = 4.", "4")])
def test_step_result(text, result):
    assert step_result(text) == result


def test_coherence_by_hand():
    steps = ["4 * 2 = 8.", "8 - 5 = 3.", "3 - 1 = 2."]
    assert coherence(steps, "2") == 1.0
    assert coherence(steps, "7") == pytest.approx(2 / 3)  # the last step's result is not the answer
    assert coherence(["4 * 2 = 8.", "18 - 5 = 13."], "13") == pytest.approx(1 / 2)  # '8' is not inside '18'
    assert coherence(["4 * 2 = .", "8 - 5 = 3."], "3") == pytest.approx(1 / 2)  # an empty result matches nothing
    assert coherence([], "5") == 1.0  # no active step


def test_curriculum_makes_steps_latent_one_stage_at_a_time():
    assert [curriculum(s, 2, 3) for s in range(8)] == [1, 1, 2, 2, 3, 3, None, None]


def atp_parts(tiny_tokenizer, tiny_model, max_steps: int = 4):
    import copy

    from tarpo.atp_sft import add_latent_tokens
    from tarpo.config import TrainConfig
    from tarpo.modes.atp_latent import AtpLatentMode

    tok = copy.deepcopy(tiny_tokenizer)
    model = copy.deepcopy(tiny_model)
    add_latent_tokens(model, tok)
    cfg = TrainConfig()
    cfg.atp_latents_per_step, cfg.atp_max_steps = 2, max_steps
    mode = AtpLatentMode(cfg, model.config.hidden_size)
    mode.bind(tok)
    return model, copy.deepcopy(model), tok, mode


def test_latent_tokens_are_added_once(tiny_tokenizer, tiny_model):
    model, _, tok, mode = atp_parts(tiny_tokenizer, tiny_model)
    n = len(tok)
    assert n == len(tiny_tokenizer) + 3 and model.get_input_embeddings().weight.shape[0] == n
    from tarpo.atp_sft import add_latent_tokens

    add_latent_tokens(model, tok)
    assert len(tok) == n
    assert tok.decode([mode.special_ids["<lat>"], mode.special_ids["<eol>"]], skip_special_tokens=True) == ""


def _read_without_cache(decoder, tokenizer, pairs, max_tokens):
    """The reading by definition: greedy, the whole prefix run again at every step, EOS after a row's end."""
    from tarpo.rollout import model_parts

    dec, head, embed = model_parts(decoder)
    inputs, eos = pairs.clone(), tokenizer.eos_token_id
    out = torch.empty((pairs.shape[0], 0), dtype=torch.long)
    done = torch.zeros(pairs.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_tokens):
            nxt = head(dec(inputs_embeds=inputs).last_hidden_state[:, -1]).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out, done = torch.cat([out, nxt[:, None]], 1), done | (nxt == eos)
            if bool(done.all()):
                break
            inputs = torch.cat([inputs, embed(nxt)[:, None]], 1)
    return [tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True).strip() for row in out.tolist()]


def test_cached_latent_reading_equals_rerunning_the_prefix(tiny_tokenizer, tiny_model):
    """decode_latents (HF generate on the latents, with its KV cache) reads the same text as re-running the
    whole prefix at every step; one reading ends at once, the others run on."""
    from tarpo.methods.atp_latent import decode_latents
    from tarpo.rollout import model_parts

    _, decoder, tok, _ = atp_parts(tiny_tokenizer, tiny_model)
    _, head, embed = model_parts(decoder)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tiny_tokenizer), (12, 2), generator=generator)
    with torch.no_grad():
        pairs = embed(ids) + 0.1 * torch.randn(12, 2, embed.weight.shape[1], generator=generator)
        # a random model never says EOS: make EOS win wherever the first row's first token would, so that
        # the first reading ends at once (and is padded) while others run to max_tokens
        first = int(head(decoder.model(inputs_embeds=pairs[:1]).last_hidden_state[:, -1]).argmax())
        head.weight[tok.eos_token_id] = 1.01 * head.weight[first]
    read = decode_latents(decoder, tok, pairs, max_tokens=10)
    assert read == _read_without_cache(decoder, tok, pairs, 10)
    assert read[0] == "" and sum(map(bool, read)) >= 6, read  # ended at once (then padded) / read on
    assert decode_latents(decoder, tok, pairs[:0]) == []


@pytest.mark.slow
def test_vae_overfits_four_problems_until_the_decoder_reads_each_step(tiny_tokenizer, tiny_model, synthetic_records):
    """On 4 problems, SFT through the curriculum makes the latents readable: the decoder's greedy reading of
    each latent pair (z = mu) gives that step's result, and every loss term falls."""
    from tarpo.atp_sft import Example, train_vae, vae_loss
    from tarpo.methods.atp_latent import decode_latents

    torch.manual_seed(0)
    model, decoder, tok, mode = atp_parts(tiny_tokenizer, tiny_model, max_steps=4)
    records = [r for r in synthetic_records if r["steps"] == 2][:4]
    examples = [Example(tok, r["question"], r["solution"]) for r in records]
    with torch.no_grad():
        before = vae_loss(model, decoder, mode, examples, [2] * 4, 1e-3, torch.Generator().manual_seed(0))
    history = train_vae(model, decoder, mode, examples, steps_per_stage=20, latent_steps=300, batch_size=4,
                        learning_rate=3e-3, weight_decay=0.0, kl_weight=1e-3, seed=0)
    assert len(history) == 4 * 20 + 300 and history[0]["stage"] == 1 and history[-1]["stage"] == 5
    with torch.no_grad():
        after = vae_loss(model, decoder, mode, examples, [2] * 4, 1e-3, torch.Generator().manual_seed(0))
    for key in ("ce", "decoder_nll", "stop_ce"):
        assert after[key] < 0.5 * before[key], (key, float(before[key]), float(after[key]))
    # read the latents back: teacher-forced block with z = mu (the latent head's mean)
    from tarpo.modes.atp_latent import step_result
    from tarpo.rewards import gold_chain

    read, stops = [], []
    for example, record in zip(examples, records):
        zs = _mean_latents(model, mode, example, 5)  # 2 steps x 2 latents, then the slot where it should stop
        texts = decode_latents(decoder, tok, zs[:4].view(2, 2, -1))
        read.append([step_result(t) for t in texts] == gold_chain(record["solution"]))
        # the stop head reads "continue" at the group starts inside the block and "stop" right after it
        stop_p = torch.softmax(mode.stop_logits(zs[[0, 2, 4]]), -1)[:, 1]
        stops.append(bool((stop_p[:2] < 0.5).all() and stop_p[2] > 0.5))
    assert all(read), read
    assert all(stops), stops


def test_cached_vae_loss_equals_recomputing_every_prefix(tiny_tokenizer, tiny_model, synthetic_records, monkeypatch):
    """The VAE loss feeds latents one position at a time through a KV cache; recomputing the whole prefix at
    each latent (no cache) must give the same losses and gradients, with rows of different latent lengths."""
    from types import SimpleNamespace

    import tarpo.atp_sft as atp_sft
    from tarpo.atp_sft import Example, vae_loss

    torch.manual_seed(0)
    model, decoder, tok, mode = atp_parts(tiny_tokenizer, tiny_model, max_steps=4)
    records = [r for r in synthetic_records if r["steps"] >= 2][:4]
    examples = [Example(tok, r["question"], r["solution"]) for r in records]
    latent_steps = [1, 2, 2, 0]  # rows leave the block at different positions; the last has none

    def losses_and_grads():
        model.zero_grad(), mode.zero_grad()
        out = vae_loss(model, decoder, mode, examples, latent_steps, 1e-3, torch.Generator().manual_seed(3))
        out["loss"].backward()
        grads = [p.grad.clone() for p in (*model.parameters(), *mode.parameters()) if p.grad is not None]
        return {k: float(v) for k, v in out.items()}, grads

    cached, cached_grads = losses_and_grads()
    real_parts = atp_sft.model_parts

    def no_cache_parts(m):
        dec, head, embed = real_parts(m)

        def recompute(*, inputs_embeds, attention_mask, past_key_values=None, **kwargs):
            if past_key_values is None:  # the decoder's own forward
                return dec(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
            seen = past_key_values.inputs = torch.cat([getattr(past_key_values, "inputs", inputs_embeds[:, :0]),
                                                       inputs_embeds], 1)
            end = seen.shape[1]
            full = dec(inputs_embeds=seen, attention_mask=attention_mask,
                       position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0)[:, :end]).last_hidden_state
            return SimpleNamespace(last_hidden_state=full[:, end - inputs_embeds.shape[1]:])

        return recompute, head, embed

    monkeypatch.setattr(atp_sft, "model_parts", no_cache_parts)
    monkeypatch.setattr(atp_sft, "DynamicCache", SimpleNamespace)
    recomputed, recomputed_grads = losses_and_grads()
    assert cached.keys() == recomputed.keys()
    for key in cached:
        assert cached[key] == pytest.approx(recomputed[key], rel=1e-5, abs=1e-6), key
    assert len(cached_grads) == len(recomputed_grads) > 0
    for a, b in zip(cached_grads, recomputed_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _mean_latents(model, mode, example, n):
    from tarpo.rollout import model_parts

    dec, _, embed = model_parts(model)
    inputs = embed(torch.tensor([example.prompt]))
    zs = []
    with torch.no_grad():
        for _ in range(n):
            hidden = dec(inputs_embeds=inputs).last_hidden_state[:, -1]
            mu, _ = mode.gaussian(hidden)
            zs.append(mu[0])
            inputs = torch.cat([inputs, mu[:, None]], 1)
    return torch.stack(zs)
