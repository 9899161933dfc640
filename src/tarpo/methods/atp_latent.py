"""ATP-Latent: Gaussian latent steps read back by a frozen decoder, then an explicit answer (METHODS.md, `atp_latent`).

Its declaration and what it adds to the shared RL loop and evaluation: it starts from its supervised stage
(`tarpo.atp_sft`, whose output directory holds the heads and the decoder), its reward mixes accuracy, format
and coherence, and its samples carry the decoder's reading of every latent pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from tarpo.io import MissingInputError
from tarpo.methods import Method, RewardInputs, register
from tarpo.modes.atp_latent import AtpLatentMode, coherence
from tarpo.rewards import extract_answer
from tarpo.rollout import Rollout, model_parts

# the SFT stage's output directory: the policy as a backbone, plus these
DECODER_DIR, MODE_FILE = "decoder", "mode.safetensors"


@torch.no_grad()
def decode_latents(decoder: nn.Module, tokenizer: Any, pairs: Tensor, max_tokens: int = 24) -> list[str]:
    """Greedy text the decoder reads from each latent group; pairs (N, c, d).

    HF `generate` on the latents as input embeddings: its KV cache makes a step cost one position, where
    re-running the whole prefix every step made the reading 80% of an ATP-Latent evaluation (6x slower on
    the default run's latents, the same texts)."""
    if pairs.shape[0] == 0:
        return []
    _, _, embed = model_parts(decoder)
    eos = tokenizer.eos_token_id
    out = decoder.generate(inputs_embeds=pairs.to(embed.weight.dtype),
                           attention_mask=torch.ones(pairs.shape[:2], dtype=torch.long, device=pairs.device),
                           do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=eos)
    return [tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True).strip() for row in out.tolist()]


def latent_step_texts(decoder: nn.Module, tokenizer: Any, mode: AtpLatentMode, z: Tensor, latent: Tensor) -> list[list[str]]:
    """Per sequence, the decoder's reading of each complete group of its latents; z (B, L, d), latent (B, L).
    All groups of the batch are decoded together."""
    groups, counts = [], []
    for row_z, row_latent in zip(z, latent):
        active = row_z[row_latent]
        n = active.shape[0] // mode.per_step
        groups.append(active[:n * mode.per_step].reshape(n, mode.per_step, active.shape[-1]))
        counts.append(n)
    texts = decode_latents(decoder, tokenizer, torch.cat(groups)) if sum(counts) else []
    out, start = [], 0
    for n in counts:
        out.append(texts[start:start + n])
        start += n
    return out


def load_decoder(sft_dir: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The SFT stage's decoder, frozen (eval, no grad): it reads latents back as text."""
    sft_dir = Path(sft_dir)
    if not (sft_dir / MODE_FILE).exists() or not (sft_dir / DECODER_DIR).is_dir():
        raise MissingInputError(f"{sft_dir} is not an ATP-Latent SFT checkpoint ({MODE_FILE} or {DECODER_DIR}/ "
                                f"missing): run the atp_sft stage first (`tarpo atp-sft` or `snakemake ... atp_sft`)")
    decoder = AutoModelForCausalLM.from_pretrained(sft_dir / DECODER_DIR, dtype=torch.float32)
    return decoder.to(device).eval().requires_grad_(False)


def load_heads(sft_dir: Path, mode: AtpLatentMode) -> None:
    """RL starts from the SFT stage's heads (latent, mu / log sigma^2, stop)."""
    mode.load_state_dict(load_file(Path(sft_dir) / MODE_FILE))


def reward(inputs: RewardInputs) -> tuple[Tensor, dict[str, float]]:
    """acc_w * acc + fmt_w * fmt + coh_w * coh * acc (METHODS.md), with fmt = 1 when the latent block ended
    and a non-empty answer follows, and coh the coherence of the steps the frozen decoder reads from the
    latent pairs. With acc_w = 0 (the coherence-only ablation) the coherence term is not gated by accuracy."""
    acc, t, meta = inputs.accuracy, inputs.train, inputs.rollout.meta
    steps = latent_step_texts(inputs.parts, inputs.tokenizer, inputs.mode, meta["z"], meta["latent"])
    answers = [extract_answer(text) for text in inputs.texts]
    ended = (meta["stop"] | meta["forced"]).any(-1).tolist()
    fmt = torch.tensor([float(e and bool(a)) for e, a in zip(ended, answers)], device=acc.device)
    coh = torch.tensor([coherence(s, a) for s, a in zip(steps, answers)], device=acc.device)
    gate = acc if t.accuracy_weight > 0 else torch.ones_like(acc)
    total = t.accuracy_weight * acc + t.format_weight * fmt + t.coherence_weight * coh * gate
    return total, {"accuracy": float(acc.mean()), "format": float(fmt.mean()), "coherence": float(coh.mean())}


def sample_fields(rows: list[dict[str, Any]], rollout: Rollout, mode: AtpLatentMode, tokenizer: Any,
                  decoder: nn.Module | None) -> None:
    """Count tokens its way (active latents + answer tokens, not the forced `<eol>`); thinking steps are its
    latents; with the decoder, each row gets the text read from every latent pair."""
    texts = (latent_step_texts(decoder, tokenizer, mode, rollout.meta["z"], rollout.meta["latent"])
             if decoder is not None else None)
    meta = {key: rollout.meta[key].cpu() for key in ("latent", "stop", "forced")}
    for i, row in enumerate(rows):
        latents = int(meta["latent"][i].sum())
        ended = bool((meta["stop"][i] | meta["forced"][i]).any())
        row.update(n_tokens=row["n_tokens"] - ended, n_thinking=latents, n_latents=latents,
                   stopped=bool(meta["stop"][i].any()))
        if texts is not None:
            row["latent_steps"] = texts[i]


def latent_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean active latents per sample and the share of blocks ended by the stop head."""
    if not rows:
        return {}
    return {"active_latents": sum(r.get("n_latents", 0) for r in rows) / len(rows),
            "stop_rate": sum(bool(r.get("stopped")) for r in rows) / len(rows)}


ATP_LATENT = register(Method(
    name="atp_latent", label="ATP-Latent", colour="#de8f05", marker="X", mode=AtpLatentMode, rank=50,
    # the RL stage has no reference model and no KL, std + 1e-8 in the advantage, log-ratios clamped to +-3
    train_defaults={"beta": 0.0, "advantage_eps": 1e-8, "log_ratio_clamp": 3.0},
    sft_stage=True, reward=reward, frozen_parts=load_decoder, init_mode=load_heads,
    sample_fields=sample_fields, eval_metrics=latent_metrics,
))
