"""ATP-Latent's supervised stage: a conditional VAE over CoT steps (METHODS.md, `atp_latent`, stage 1).

The policy (a copy of the backbone with `<bol>`, `<eol>`, `<lat>` added) reads
`prompt <bol>`, then writes c latents per CoT step with the latent head
(reparameterised, so gradients flow through z into later positions), then
`<eol>` and the rest of the solution as text. A decoder (a second copy of the
backbone) reads each latent pair and reconstructs its step's text. Curriculum:
stage k makes the first k steps latent (the rest stay text), k = 1 .. K, then
every step is latent. Loss = CE(text after `<eol>`) + kl_weight * KL(q || N(0, I))
+ decoder NLL (summed over a step's tokens, averaged over steps) + stop CE
(continue at group starts inside the block, stop at the slot after it).

Output (atomically), a directory the RL stage starts from; it is a backbone
directory like any other (`load_backbone` reads the policy from it):

    config.json, model.safetensors, tokenizer files   the policy, with ATP's tokens
    decoder/           save_pretrained decoder (frozen in RL: coherence reward, readable latents)
    mode.safetensors   latent head, mu / log sigma^2 heads, stop head
    sft.json           losses, and the checks after training: decoded-step exact match, stop accuracy, pass@1
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm
from transformers import DynamicCache

from tarpo.data.batching import load_train_records
from tarpo.data.template import ANSWER_MARKER, build_prompt
from tarpo.methods.atp_latent import DECODER_DIR, MODE_FILE, latent_step_texts
from tarpo.modes.atp_latent import BEGIN_LATENT, CONTINUE, END_LATENT, SPECIAL_TOKENS, STOP, AtpLatentMode
from tarpo.optim import decay_groups
from tarpo.rollout import model_parts

log = logging.getLogger(__name__)

SUMMARY_FILE = "sft.json"

_STEP_SPLIT = re.compile(r"(?<=\.)\s+|\n+")


def cot_steps(solution: str) -> tuple[list[str], str]:
    """('4 * 2 = 8.', '8 - 5 = 3.', ...), '#### 3' from a `steps #### answer` solution; steps are lines or sentences."""
    reasoning, _, answer = solution.partition(ANSWER_MARKER)
    steps = [s.strip() for s in _STEP_SPLIT.split(reasoning.strip()) if s.strip()]
    return steps, f"{ANSWER_MARKER} {answer.strip()}"


def add_latent_tokens(model: nn.Module, tokenizer: Any) -> None:
    """Add `<bol>`, `<eol>`, `<lat>` to the tokenizer and grow the model's embeddings to match."""
    new = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(list(new), special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)


class Example:
    """One problem tokenised for the VAE: prompt (ending with `<bol>`), step texts, the answer text."""

    def __init__(self, tokenizer: Any, question: str, solution: str) -> None:
        steps, answer = cot_steps(solution)
        self.prompt = tokenizer(build_prompt(tokenizer, question) + BEGIN_LATENT, add_special_tokens=False)["input_ids"]
        self.steps = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in steps]
        self.step_texts = steps
        self.answer_text = answer
        self.tokenizer = tokenizer

    def text_after(self, k: int) -> list[int]:
        """Token ids written after `<eol>` when the first k steps are latent: remaining steps, answer, eos."""
        text = " ".join(self.step_texts[k:] + [self.answer_text])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


def vae_loss(model: nn.Module, decoder: nn.Module, mode: AtpLatentMode, batch: Sequence[Example],
             latent_steps: Sequence[int], kl_weight: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The four loss terms on a batch where example i has its first latent_steps[i] steps latent."""
    tok = batch[0].tokenizer
    dev = next(model.parameters()).device
    dec, head, embed = model_parts(model)
    c, K = mode.per_step, mode.max_latents // mode.per_step
    ids = mode.special_ids
    B = len(batch)
    P = max(len(e.prompt) for e in batch)
    n_lat = [c * k for k in latent_steps]
    tails = [[ids[END_LATENT]] + e.text_after(k) for e, k in zip(batch, latent_steps)]
    T = P + max(n + len(t) for n, t in zip(n_lat, tails))
    grid = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, (e, n, tail) in enumerate(zip(batch, n_lat, tails)):
        grid[i, P - len(e.prompt):P] = torch.tensor(e.prompt)
        grid[i, P:P + n] = ids["<lat>"]
        grid[i, P + n:P + n + len(tail)] = torch.tensor(tail)
        mask[i, P - len(e.prompt):P + n + len(tail)] = 1
        labels[i, P + n:P + n + len(tail) - 1] = torch.tensor(tail[1:])  # position p predicts p + 1; not `<eol>`
    grid, mask, labels = grid.to(dev), mask.to(dev), labels.to(dev)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    is_latent = torch.tensor([[j < n for j in range(T - P)] for n in n_lat], device=dev)
    token_embeds = embed(grid)

    # Latents are sequential: z_j comes from the hidden state at position P + j - 1. The KV cache keeps the
    # graph, so each latent costs one position's forward instead of the whole prefix again.
    cache = DynamicCache()

    def forward(start: int, inputs: Tensor) -> Tensor:
        end = start + inputs.shape[1]
        return dec(inputs_embeds=inputs, attention_mask=mask[:, :end], position_ids=positions[:, start:end],
                   past_key_values=cache, use_cache=True).last_hidden_state

    hiddens = [forward(0, token_embeds[:, :P])]
    zs, kls, stop_logps, stop_targets = [], [], [], []
    last_latent = max(n_lat)
    for j in range(last_latent + 1):
        mu, logvar = mode.gaussian(hiddens[-1][:, -1])
        eps = torch.randn(mu.shape, generator=generator, device=dev)
        z = mu + torch.exp(0.5 * logvar) * eps
        here = torch.tensor([j < n for n in n_lat], device=dev)
        if bool(here.any()):
            kls.append((0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).mean(-1)[here])
        if j % c == 0:  # a group start: continue inside the block, stop at the slot right after it
            slot = torch.tensor([j < n or (j == n and n < c * K) for n in n_lat], device=dev)
            if bool(slot.any()):
                stop_logps.append(torch.log_softmax(mode.stop_logits(z[slot]), -1))
                stop_targets.append(torch.tensor([CONTINUE if j < n_lat[i] else STOP for i in range(B) if slot[i]],
                                                 device=dev))
        zs.append(z)
        if j < last_latent:  # column j: z_j inside a row's block, its text token after it
            column = torch.where(is_latent[:, j:j + 1, None], z[:, None].to(token_embeds.dtype),
                                 token_embeds[:, P + j:P + j + 1])
            hiddens.append(forward(P + j, column))
    hiddens.append(forward(P + last_latent, token_embeds[:, P + last_latent:]))  # text only from here on
    hidden = torch.cat(hiddens, 1)
    logits = head(hidden).float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, :-1].reshape(-1), ignore_index=-100)
    stop = torch.cat(stop_logps)
    stop_ce = F.nll_loss(stop, torch.cat(stop_targets))
    kl = torch.cat(kls).mean() if kls else torch.zeros((), device=dev)
    nll = decoder_nll(decoder, [(zs[c * s:c * s + c], i, batch[i].steps[s] + [tok.eos_token_id])
                                for i, k in enumerate(latent_steps) for s in range(k)], tok.pad_token_id)
    total = ce + kl_weight * kl + nll + stop_ce
    return {"loss": total, "ce": ce.detach(), "kl": kl.detach(), "decoder_nll": nll.detach(), "stop_ce": stop_ce.detach()}


def decoder_nll(decoder: nn.Module, items: list[tuple[list[Tensor], int, list[int]]], pad_id: int) -> Tensor:
    """Mean over steps of the summed NLL of a step's tokens given its latents; items = (z list, row, target ids)."""
    if not items:
        return torch.zeros((), device=next(decoder.parameters()).device)
    dec, head, embed = model_parts(decoder)
    dev = embed.weight.device
    c = len(items[0][0])
    width = max(len(t) for _, _, t in items)
    targets = torch.full((len(items), width), -100, dtype=torch.long, device=dev)
    inputs_ids = torch.full((len(items), width), pad_id, dtype=torch.long, device=dev)
    for n, (_, _, t) in enumerate(items):
        targets[n, :len(t)] = torch.tensor(t, device=dev)
        inputs_ids[n, :len(t) - 1] = torch.tensor(t[:-1], device=dev)  # teacher forcing: the tokens before the last
    latents = torch.stack([torch.stack([z[row] for z in zs]) for zs, row, _ in items]).to(embed.weight.dtype)
    inputs = torch.cat([latents, embed(inputs_ids)], 1)  # (N, c + width, d)
    mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=dev)
    logits = head(dec(inputs_embeds=inputs, attention_mask=mask).last_hidden_state).float()
    # position c - 1 (the last latent) predicts target 0, ..., position c + w - 2 predicts target w - 1
    pred = logits[:, c - 1:c - 1 + width]
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none")
    return nll.view(len(items), width).sum(-1).mean()


def curriculum(step: int, steps_per_stage: int, max_steps: int) -> int | None:
    """Latent steps at optimiser step `step`: 1 .. K for steps_per_stage steps each, then None (all latent)."""
    stage = step // max(steps_per_stage, 1) + 1
    return stage if stage <= max_steps else None


def train_vae(model: nn.Module, decoder: nn.Module, mode: AtpLatentMode, examples: Sequence[Example], *,
              steps_per_stage: int, latent_steps: int, batch_size: int, learning_rate: float, weight_decay: float,
              kl_weight: float, seed: int, log_metric: Callable[[str, float, int], None] | None = None,
              desc: str = "atp sft") -> list[dict[str, float]]:
    """The curriculum: AdamW, cosine decay with 5% warmup, clip 1.0. Returns the per-step losses."""
    K = mode.max_latents // mode.per_step
    total = K * steps_per_stage + latent_steps
    # the one no-decay rule of every optimiser here (`optim.decay_groups`): biases, norms, embeddings and the
    # mode's heads exempt
    groups = (decay_groups(model, learning_rate, weight_decay, "backbone")
              + decay_groups(decoder, learning_rate, weight_decay, "decoder")
              + decay_groups(mode, learning_rate, weight_decay, "heads", exempt_all=True))
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
    params = [p for m in (model, decoder, mode) for p in m.parameters() if p.requires_grad]
    warmup = max(1, int(0.05 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    sample_gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 1)
    model.train(), decoder.train(), mode.train()
    history = []
    # closed however the loop ends (an error's message, printed by the CLI, starts on a line of its own)
    with tqdm(range(total), desc=desc, unit="step", dynamic_ncols=True) as bar:
        for step in bar:
            stage = curriculum(step, steps_per_stage, K)
            rows = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
            batch = [examples[r] for r in rows]
            k = [min(len(e.steps), K) if stage is None else min(stage, len(e.steps), K) for e in batch]
            losses = vae_loss(model, decoder, mode, batch, k, kl_weight, sample_gen)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            row = {name: float(v.detach()) for name, v in losses.items()} | {"stage": float(stage or K + 1)}
            history.append(row)
            if log_metric:
                for name, value in row.items():
                    log_metric(f"sft_{name}", value, step)
    model.eval(), decoder.eval(), mode.eval()
    return history


def build_sft_parts(backbone_dir: Path, tcfg: Any) -> tuple[nn.Module, nn.Module, Any, AtpLatentMode]:
    """(policy, decoder, tokenizer, mode) before SFT: the backbone with ATP's tokens, its copy, fresh heads."""
    from tarpo.backbone import load_backbone

    model, tokenizer = load_backbone(Path(backbone_dir), dtype=torch.float32)
    add_latent_tokens(model, tokenizer)
    decoder = copy.deepcopy(model)
    mode = AtpLatentMode(tcfg, model.config.hidden_size)
    mode.bind(tokenizer)
    return model, decoder, tokenizer, mode


# ---------------------------------------------------------------- checks after SFT


@torch.no_grad()
def latent_rollouts(model: nn.Module, tokenizer: Any, mode: AtpLatentMode, decoder: nn.Module,
                    records: Sequence[dict[str, Any]], *, temperature: float, max_new_tokens: int, seed: int,
                    batch_size: int = 64, greedy: bool = False) -> list[dict[str, Any]]:
    """Sample each record once, fully latent: the text, the decoded latent steps, the answer, correctness."""
    from tarpo.rewards import extract_answer
    from tarpo.sampling import engine_defaults, sample_and_score

    dev = next(model.parameters()).device
    eos_ids, marker, pad_id = engine_defaults(model, tokenizer)
    out = []
    gen = torch.Generator(device=dev).manual_seed(seed)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        drawn = sample_and_score(model, tokenizer, mode, chunk, repeats=1, temperature=temperature,
                                 max_new_tokens=max_new_tokens, max_prompt_tokens=10_000, generator=gen,
                                 greedy=greedy, eos_ids=eos_ids, marker=marker, pad_id=pad_id)
        rollout = drawn.rollout
        all_steps = latent_step_texts(decoder, tokenizer, mode, rollout.meta["z"], rollout.meta["latent"])
        for b, (text, score, steps) in enumerate(zip(drawn.texts, drawn.rewards, all_steps)):
            valid = rollout.valid[b]
            out.append({"text": text, "steps": steps, "answer": extract_answer(text), "correct": score > 0,
                        "tokens": int(valid.sum()) - int(rollout.meta["stop"][b].any() or rollout.meta["forced"][b].any()),
                        "latents": int(rollout.meta["latent"][b].sum())})
    return out


def sft_checks(samples: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Decoded-step exact match against the gold chain, stop accuracy (as many steps as the gold), pass@1,
    coherence, mean active latents and tokens."""
    from tarpo.modes.atp_latent import coherence, step_result
    from tarpo.rewards import gold_chain

    matched = total = stops = stop_total = 0
    for sample, record in zip(samples, records):
        gold = gold_chain(record.get("solution"))
        if gold is None:
            continue
        results = [step_result(t) for t in sample["steps"]]
        matched += sum(r == g for r, g in zip(results, gold))
        total += len(gold)
        stops += len(sample["steps"]) == len(gold)
        stop_total += 1
    n = max(len(samples), 1)
    return {"decoded_step_exact_match": matched / max(total, 1), "stop_accuracy": stops / max(stop_total, 1),
            "pass_at_1": sum(s["correct"] for s in samples) / n,
            "coherence": sum(coherence(s["steps"], s["answer"]) for s in samples) / n,
            "active_latents": sum(s["latents"] for s in samples) / n,
            "tokens": sum(s["tokens"] for s in samples) / n, "problems": float(len(samples))}


# ---------------------------------------------------------------- the stage


def run_sft(cfg: Any, backbone: str, backbone_dir: Path, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Build, train and check the VAE for `backbone`; write the stage's directory atomically."""
    from safetensors.torch import save_file

    from tarpo.backbone import demonstration, set_cpu_threads
    from tarpo.io import atomic_dir, read_jsonl, write_json
    from tarpo.provenance import code_version
    from tarpo.tracking import run_name, start_run

    if not torch.cuda.is_available():
        set_cpu_threads()
    started = time.perf_counter()
    sft = cfg.atp_sft
    tcfg = cfg.train_config(backbone, "atp_latent")
    torch.manual_seed(cfg.seed)
    model, decoder, tokenizer, mode = build_sft_parts(backbone_dir, tcfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, decoder, mode = model.to(device), decoder.to(device), mode.to(device)
    records = load_train_records(data_dir)
    examples = [Example(tokenizer, r["question"], demonstration(r)) for r in records]
    test_path = Path(data_dir) / "test_id.jsonl"
    test = read_jsonl(test_path)[: sft.eval_problems] if test_path.exists() else []
    with start_run(cfg.name, run_name(backbone, "atp_latent", "sft"), params={"atp_sft": vars(sft)},
                   tags={"backbone": backbone, "method": "atp_latent", "stage": "sft"}) as tracker:
        history = train_vae(model, decoder, mode, examples, steps_per_stage=sft.steps_per_stage,
                            latent_steps=sft.latent_steps, batch_size=sft.batch_size,
                            learning_rate=sft.learning_rate, weight_decay=sft.weight_decay,
                            kl_weight=sft.kl_weight, seed=cfg.seed,
                            log_metric=lambda k, v, s: tracker.log_metrics({k: v}, step=s),
                            desc=f"atp sft {backbone}")
        samples = latent_rollouts(model, tokenizer, mode, decoder, test, temperature=tcfg.temperature,
                                  max_new_tokens=tcfg.max_new_tokens, seed=cfg.seed)
        checks = sft_checks(samples, test)
        tracker.log_metrics(checks, step=len(history))
        summary = {"checks": checks, "first": history[0], "last": history[-1], "steps": len(history),
                   "seconds": time.perf_counter() - started, "examples": samples[:8], "code": code_version()}
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            decoder.save_pretrained(tmp / DECODER_DIR)
            save_file({k: v.detach().cpu().contiguous() for k, v in mode.state_dict().items()}, tmp / MODE_FILE)
            write_json(tmp / SUMMARY_FILE, summary)
    log.info(f"atp sft {backbone}: decoded-step exact match {checks['decoded_step_exact_match']:.2f}, "
          f"stop accuracy {checks['stop_accuracy']:.2f}, pass@1 {checks['pass_at_1']:.2f}, "
          f"{checks['active_latents']:.1f} latents, {summary['seconds']:.0f}s")
    return summary
