"""Policy backbones: build + warm-start the embedded tiny Qwen2, or resolve a hub model.

Two layouts of a backbone directory (what `tarpo backbone` writes):

- embedded: a `save_pretrained` model + tokenizer, plus `warm_start.json`
  (loss curve summary, quick pass@1 on test_id / test_ood, parameter count,
  wall time). The tokenizer is a byte-level BPE trained here on the synthetic
  corpus; the model a small `Qwen2ForCausalLM` warm-started by supervised
  training on the training solutions, so that RL starts from a policy that
  solves some problems but not all.
- hub: `hub.json` pointing at a snapshot in the local Hugging Face cache
  (weights are not copied). Nothing is downloaded when the cache already has
  the pinned revision.

`load_backbone` loads either layout for training and evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tarpo.config import BackboneConfig, Config, ConfigError, TinyModelConfig, TrainConfig, WarmStartConfig
from tarpo.data.template import build_prompt, user_message
from tarpo.io import MissingInputError, atomic_dir, env_flag, hf_home, read_jsonl, write_json
from tarpo.optim import decay_groups
from tarpo.provenance import code_version

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a turn: the eos of every completion
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# Qwen-style chat template (no default system turn).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

HUB_FILE = "hub.json"
WARM_START_FILE = "warm_start.json"
QUICK_MAX_NEW_TOKENS = 80


# ---------------------------------------------------------------- threads


def set_cpu_threads() -> int:
    """Set torch's intra-op threads: OMP_NUM_THREADS when set (the workflow passes the rule's
    `threads`), else the cores this process may run on, at most 8 (more only adds
    synchronisation overhead for models this small). Returns the number used."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    n = int(env) if env.isdigit() and int(env) > 0 else min(cores, 8)
    n = max(1, n)
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`.

    Digits are split into single tokens before byte-level pre-tokenization (as
    Qwen2 does), so numbers are always spelled digit by digit; byte-level BPE
    with no normaliser round-trips any string exactly. Special tokens:
    `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos); there is no bos.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=4096,
    )


def tokenizer_corpus(records: Sequence[dict[str, Any]]) -> list[str]:
    """The tokenizer's training text: every user turn as the template writes it, and every solution.

    Each text is one chat exchange with the special tokens left out (they are
    added tokens, never split or merged by BPE).
    """
    return [f"user\n{user_message(r['question'])}\nassistant\n{r['solution']}" for r in records]


# ---------------------------------------------------------------- model


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A freshly initialised small Qwen2 (tied embeddings) sized to the tokenizer."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- warm start


def demonstration(record: dict[str, Any]) -> str:
    """What the warm start imitates: the record's (possibly imperfect) `demonstration`, else its `solution`."""
    return record.get("demonstration", record["solution"])


def _encode_sft(tokenizer: PreTrainedTokenizerFast, records: Sequence[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """(prompt ids + solution ids + eos, prompt length) per record.

    Prompt and completion are tokenized separately, exactly as generation
    sees them (the completion starts a fresh token after the prompt).
    """
    prompts = tokenizer([build_prompt(tokenizer, r["question"]) for r in records], add_special_tokens=False)["input_ids"]
    completions = tokenizer([demonstration(r) for r in records], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + c + [eos], len(p)) for p, c in zip(prompts, completions, strict=True)]


def _collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])  # completion + eos only
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def warm_start(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    records: Sequence[dict[str, Any]],
    cfg: WarmStartConfig,
    seed: int,
    log_metric: Callable[[str, float, int], None] | None = None,
) -> dict[str, Any]:
    """Supervised training on chat prompt + solution + eos, loss on completion tokens only.

    AdamW (weight decay on matrices only), linear warmup over 5% of the steps
    then cosine decay, gradient clipping at 1.0. Batches are drawn from
    seeded epoch permutations, so the result is a function of `seed` (and the
    thread count). Returns a loss summary.
    """
    from tqdm.auto import tqdm

    set_cpu_threads()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = _encode_sft(tokenizer, records)
    if not data:
        raise ValueError("warm_start needs at least one record")
    # the one no-decay rule (biases, norms and the embeddings exempt), as in RL and ATP-Latent's SFT
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.learning_rate, cfg.weight_decay, "backbone"),
                                  lr=cfg.learning_rate, betas=(0.9, 0.95))
    from transformers import get_cosine_schedule_with_warmup  # here: it imports transformers' trainer (and peft)

    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, math.ceil(0.05 * cfg.steps)), max(1, cfg.steps))
    model.train()
    order: list[int] = []
    losses: list[float] = []
    # closed however the loop ends (an error's message, printed by the CLI, starts on a line of its own)
    with tqdm(range(cfg.steps), desc="warm start", unit="step", mininterval=2.0) as bar:
        for step in bar:
            batch_idx = []
            while len(batch_idx) < cfg.batch_size:
                if not order:
                    order = list(range(len(data)))
                    rng.shuffle(order)
                batch_idx.append(order.pop())
            batch = _collate([data[i] for i in batch_idx], tokenizer.pad_token_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            losses.append(value)
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{value:.3f}")
                if log_metric is not None:
                    log_metric("warm_start/loss", value, step)
                    log_metric("warm_start/lr", scheduler.get_last_lr()[0], step)
    model.eval()
    window = max(1, min(50, len(losses) // 10 or 1))
    return {
        "steps": cfg.steps,
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-window:]) / window if losses else None,
        "loss_min": min(losses) if losses else None,
        # mean loss over consecutive chunks of `window` steps, for a quick look at the curve
        "loss_curve": [sum(losses[i : i + window]) / len(losses[i : i + window]) for i in range(0, len(losses), window)],
        "loss_curve_every": window,
    }


# ---------------------------------------------------------------- quick check


def quick_pass_at_1(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    records: Sequence[dict[str, Any]],
    temperature: float = 0.5,
    max_new_tokens: int = QUICK_MAX_NEW_TOKENS,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Fraction of `records` solved by one explicit sample each at `temperature`.

    A sanity check of the warm start, not a reported result: the one sampling path (`sample_and_score`,
    the rollout engine and the answer checker of every reported number) on a few problems.
    """
    from tarpo.modes.base import Mode
    from tarpo.sampling import engine_defaults, sample_and_score

    if not records:
        return 0.0
    model.eval()
    mode = Mode(TrainConfig(), model.config.hidden_size)
    eos_ids, marker, pad_id = engine_defaults(model, tokenizer)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    correct = 0
    for start in range(0, len(records), batch_size):
        drawn = sample_and_score(model, tokenizer, mode, records[start:start + batch_size], repeats=1,
                                 temperature=temperature, max_new_tokens=max_new_tokens, max_prompt_tokens=10_000,
                                 generator=generator, eos_ids=eos_ids, marker=marker, pad_id=pad_id)
        correct += sum(drawn.correct)
    return correct / len(records)


# ---------------------------------------------------------------- hub


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return hf_home() / "hub"


def resolve_hub(repo_id: str, revision: str) -> Path:
    """Local snapshot directory of `repo_id`@`revision`.

    The local cache is tried first; only when it misses and HF_HUB_OFFLINE is
    not set is a download attempted. A miss raises MissingInputError saying
    how to pre-download the model.
    """
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception as local_err:  # noqa: BLE001 - any cache miss / bad layout means "not available locally"
        error: Exception = local_err
    if not env_flag("HF_HUB_OFFLINE"):
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache))
        except Exception as online_err:  # noqa: BLE001
            error = online_err
    raise MissingInputError(
        f"hub model '{repo_id}' at revision '{revision}' is not in the Hugging Face cache {cache} "
        f"and cannot be downloaded here ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
        f"On a machine with network run `hf download {repo_id} --revision {revision}` "
        f"(older clients: `huggingface-cli download {repo_id} --revision {revision}`), then copy that machine's "
        f"HF cache (~/.cache/huggingface/hub) here, or point HF_HOME / HF_HUB_CACHE at a copy of it."
    ) from error


def _snapshot_hub(bb: BackboneConfig, out_dir: Path) -> None:
    path = resolve_hub(bb.repo_id, bb.revision)
    if not (path / "config.json").exists():
        raise MissingInputError(f"snapshot {path} of '{bb.repo_id}'@'{bb.revision}' has no config.json; is it a model repo?")
    with atomic_dir(out_dir) as tmp:
        write_json(
            tmp / HUB_FILE,
            {
                "kind": "hub",
                "code": code_version(),
                "repo_id": bb.repo_id,
                "revision": bb.revision,
                "commit": path.name,  # snapshot folders are named by commit sha
                "snapshot_path": str(path),
                "dtype": bb.dtype,
            },
        )


# ---------------------------------------------------------------- build / load


def _read_split(data_dir: Path, split: str, dataset: str) -> list[dict[str, Any]]:
    path = data_dir / f"{split}.jsonl"
    if not path.exists():
        raise MissingInputError(
            f"{path} not found: prepare the dataset first with `tarpo prepare --dataset {dataset} --out {data_dir}` "
            f"(or `snakemake --cores 2 {data_dir}`)"
        )
    return read_jsonl(path)


def build_backbone(cfg: Config, name: str, data_dir: Path | None, out_dir: Path) -> None:
    """Write backbone `name` into `out_dir` (atomically): build + warm-start (embedded) or resolve (hub)."""
    if name not in cfg.backbones:
        raise ConfigError(f"unknown backbone '{name}'; configured: {sorted(cfg.backbones)}")
    bb = cfg.backbones[name]
    out_dir = Path(out_dir)
    if bb.kind == "hub":
        _snapshot_hub(bb, out_dir)
        return
    if data_dir is None:
        raise MissingInputError(
            f"embedded backbone '{name}' is warm-started on dataset '{bb.warm_start_dataset}': pass its directory with --data"
        )
    data_dir = Path(data_dir)
    train = _read_split(data_dir, "train", bb.warm_start_dataset)
    test_id = _read_split(data_dir, "test_id", bb.warm_start_dataset)
    test_ood = _read_split(data_dir, "test_ood", bb.warm_start_dataset)

    t0 = time.perf_counter()
    threads = set_cpu_threads()
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(tokenizer_corpus(train), bb.model.vocab_size)
    model = build_tiny_model(bb.model, tokenizer)
    n_params = count_parameters(model)

    from tarpo.tracking import run_name, start_run

    params = {"backbone": name, "n_params": n_params, "seed": cfg.seed, "model": vars(bb.model),
              "warm_start": vars(bb.warm_start), "train_records": len(train)}
    with start_run(cfg.name, run_name(name, "sft", "warm_start"), params=params,
                   tags={"stage": "warm_start", "backbone": name}) as tracker:
        t_train = time.perf_counter()
        losses = warm_start(model, tokenizer, train, bb.warm_start, seed=cfg.seed,
                            log_metric=lambda key, value, step: tracker.log_metrics({key: value}, step=step))
        train_s = time.perf_counter() - t_train
        n_eval = bb.warm_start.eval_problems
        t_eval = time.perf_counter()
        pass_id = quick_pass_at_1(model, tokenizer, test_id[:n_eval], seed=cfg.seed)
        pass_ood = quick_pass_at_1(model, tokenizer, test_ood[:n_eval], seed=cfg.seed)
        eval_s = time.perf_counter() - t_eval
        tracker.log_metrics({"quick_pass@1/test_id": pass_id, "quick_pass@1/test_ood": pass_ood,
                             "warm_start/seconds": train_s}, step=bb.warm_start.steps)
        summary = {
            "backbone": name,
            "code": code_version(),
            "n_params": n_params,
            "vocab_size": len(tokenizer),
            "threads": threads,
            "seed": cfg.seed,
            "train_records": len(train),
            "losses": losses,
            "quick_pass_at_1": {
                "test_id": pass_id,
                "test_ood": pass_ood,
                "n_test_id": min(n_eval, len(test_id)),
                "n_test_ood": min(n_eval, len(test_ood)),
                "temperature": 0.5,
                "note": "one sample per problem; temporary check (tarpo.backbone.quick_pass_at_1), not a reported result",
            },
            "train_seconds": round(train_s, 2),
            "eval_seconds": round(eval_s, 2),
        }
        tracker.log_text(json.dumps(summary, indent=2, sort_keys=True), WARM_START_FILE)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / WARM_START_FILE, summary)
    log.info(
        f"backbone {name}: {n_params:,} params, loss {summary['losses']['loss_first']:.3f} -> "
        f"{summary['losses']['loss_last']:.3f}, quick pass@1 test_id {summary['quick_pass_at_1']['test_id']:.2f} "
        f"test_ood {summary['quick_pass_at_1']['test_ood']:.2f}, {summary['wall_seconds']:.0f}s"
    )


def _torch_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


def backbone_path(backbone_dir: Path) -> Path:
    """The directory holding the weights: `backbone_dir` itself, or the hub snapshot its hub.json names."""
    backbone_dir = Path(backbone_dir)
    hub = backbone_dir / HUB_FILE
    if hub.exists():
        info = json.loads(hub.read_text())
        path = Path(info["snapshot_path"])
        if not (path / "config.json").exists():  # cache moved (another machine): resolve the pinned commit again
            path = resolve_hub(info["repo_id"], info.get("commit") or info["revision"])
        return path
    if not (backbone_dir / "config.json").exists():
        raise MissingInputError(
            f"{backbone_dir} is not a backbone (no config.json or {HUB_FILE}): build it with "
            f"`tarpo backbone --backbone NAME --data DATA_DIR --out {backbone_dir}`"
        )
    return backbone_dir


def load_backbone(backbone_dir: Path, dtype: str | torch.dtype = "auto") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer with left padding) from a directory `tarpo backbone` wrote."""
    path = backbone_path(backbone_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
    model.eval()
    return model, tokenizer
