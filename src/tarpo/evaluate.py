"""`tarpo evaluate`: k sampled completions per problem, scored by the training reward's verifiers.

One call evaluates one policy (a trained checkpoint, or the bare backbone for
`cot`) on one benchmark and writes, beside `out_json`
(`{root}/{backbone}/{method}/eval/{benchmark}.json`):

    {benchmark}.json            metrics: n_problems, k, pass@1 (mean accuracy over the k samples), pass@j
                                for j in 1, 2, 4, ... <= k (unbiased estimator) and its 95%
                                interval over problems (ci95), correct samples per problem id
                                (correct_per_problem, what the statistics across seeds and methods need),
                                lucky_share, mean generated tokens (and per problem, tokens_per_problem),
                                soft_ratio (tarpo, lepo) / mean_gate (hrpo), the seed and sampling
                                settings, the machine (platform, CPUs, torch, device, date), wall time
    {benchmark}.samples.jsonl   one row per sample: problem id, sample index, completion, extracted
                                answer, correct, chain_ok, token count, per-step soft flags (0/1), token ids

lucky_share: among the correct samples, the share whose reasoning chain is
wrong (the numbers after each '=' differ from the gold solution's steps, see
`rewards.chain_correct`): right answers reached by luck or compensating
slips. Only for benchmarks whose records carry a gold chain (the synthetic
task); elsewhere `chain_ok` is null and lucky_share is left out. ATP-Latent's
answer text has no chain (it lives in the latents): its chain is what the
frozen decoder reads from the latent pairs (`latent_steps`).
    {benchmark}.html            the first trajectories with soft steps highlighted

Sampling goes through the shared rollout engine, `evaluate.batch_size`
problems x `k` samples per batch.

Resuming. Finished problems are appended, a batch at a time (all k samples of
each of its problems in one write, flushed and fsynced), to
`{benchmark}.samples.jsonl.partial`, whose first line records what produced it
(policy files, benchmark ids, sampling settings). A rerun with the same
settings keeps the complete problems in it, drops anything torn, and samples
only the rest; with other settings it starts afresh. The JSON is written last,
atomically, and only then is the partial removed, so a finished JSON always
describes a complete samples file.

Seeding. Batches are fixed chunks of the problem list by index, and each
batch samples with its own generator seeded from (seed, benchmark, batch
index). Batched sampling couples the problems of a batch (they share the
generator's stream, the padding width and the number of decoding steps), so a
problem's samples are a function of its batch, not of the problem alone. A
batch that is only partly in the partial file (a torn write) is therefore
sampled again whole and only its missing problems are appended: the
regenerated samples equal the lost ones, and a resumed evaluation equals an
uninterrupted one exactly, whatever point it stopped at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tarpo.checkpoints import RUN_FILE
from tarpo.config import Config, ConfigError, TrainConfig, _merge, from_dict, to_dict
from tarpo.data.benchmarks import Benchmark, get_benchmark, load_benchmark
from tarpo.io import atomic_write_text, write_json, write_jsonl
from tarpo.methods import get_method
from tarpo.metrics import mean_pass_at_k
from tarpo.provenance import code_version
from tarpo.render import token_spans, trajectories_html
from tarpo.rewards import chain_correct, extract_answer
from tarpo.stats import mean_ci, pass_at_k_values

log = logging.getLogger(__name__)

PASS_AT = (1, 2, 4, 8, 16, 32)
HTML_SAMPLES = 20
SPEC_KEY = "_spec"
# Metrics logged to MLflow (besides every pass@j); the settings travel as params / in the JSON artifact.
TRACKED = ("n_problems", "mean_tokens", "mean_thinking_tokens", "soft_ratio", "mean_gate", "lucky_share",
           "active_latents", "stop_rate",
           "wall_seconds")


# ---------------------------------------------------------------- paths and settings


def output_paths(out_json: Path) -> dict[str, Path]:
    """The files an evaluation writes beside `out_json` ({benchmark}.json)."""
    out_json = Path(out_json)
    stem = out_json.name[: -len(".json")] if out_json.name.endswith(".json") else out_json.name
    samples = out_json.with_name(f"{stem}.samples.jsonl")
    return {"json": out_json, "samples": samples, "html": out_json.with_name(f"{stem}.html"),
            "partial": samples.with_name(samples.name + ".partial")}


def eval_train_config(cfg: Config, backbone: str, method: str) -> TrainConfig:
    """The train config whose mode knobs / prompt length apply: the method's, or `train` + backbone overrides for cot."""
    if backbone not in cfg.backbones:
        raise ConfigError(f"unknown backbone '{backbone}'; configured: {sorted(cfg.backbones)}")
    if method in cfg.methods or method in cfg.ablations:
        return cfg.train_config(backbone, method)
    return from_dict(TrainConfig, _merge(to_dict(cfg.train), cfg.backbones[backbone].train), f"backbones.{backbone}.train")


def batch_seed(seed: int, benchmark: str, batch_index: int) -> int:
    digest = hashlib.sha256(f"tarpo-eval:{seed}:{benchmark}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _files_fingerprint(directory: Path | None) -> str:
    """Cheap identity of a policy directory: every file's relative path, size and mtime."""
    if directory is None:
        return ""
    directory = Path(directory)
    rows = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        st = path.stat()
        rows.append(f"{path.relative_to(directory)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _spec(cfg: Config, *, backbone: str, method: str, benchmark: str, records: list[dict[str, Any]],
          max_prompt_tokens: int, backbone_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    e = cfg.evaluate
    return {
        "backbone": backbone, "method": method, "benchmark": benchmark, "seed": cfg.seed,
        "k": e.k, "temperature": e.temperature, "max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size,
        "max_prompt_tokens": max_prompt_tokens, "compile_decode": e.compile_decode,
        "problems": hashlib.sha256(json.dumps([r["id"] for r in records]).encode()).hexdigest(),
        "backbone_files": _files_fingerprint(backbone_dir), "checkpoint_files": _files_fingerprint(checkpoint),
    }


# ---------------------------------------------------------------- the partial file


def read_partial(path: Path, spec: dict[str, Any], k: int) -> dict[str, list[dict[str, Any]]]:
    """Complete problems (problem id -> its k rows) of a partial file written under `spec`.

    Unparsable lines (a torn last write) and problems with fewer than k rows are
    dropped; a file written under other settings is ignored entirely.
    """
    if not path.exists():
        return {}
    rows, header = [], None
    with open(path) as fh:
        for i, line in enumerate(fh):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if i == 0:
                header = obj.get(SPEC_KEY) if isinstance(obj, dict) else None
                continue
            if isinstance(obj, dict) and "problem_id" in obj and "sample" in obj:
                rows.append(obj)
    if header != spec:
        log.info(f"{path}: written under other settings; starting this evaluation afresh")
        return {}
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], {})[int(row["sample"])] = row
    return {pid: [got[s] for s in range(k)] for pid, got in by_problem.items() if set(got) >= set(range(k))}


def _rewrite_partial(path: Path, spec: dict[str, Any], done: dict[str, list[dict[str, Any]]]) -> None:
    """Start (or clean) the partial file: the header and the complete problems only, nothing torn."""
    lines = [json.dumps({SPEC_KEY: spec}, sort_keys=True)]
    lines += [json.dumps(row, sort_keys=True) for rows in done.values() for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------- sampling


@torch.no_grad()
def sample_batch(model: Any, tokenizer: Any, mode: Any, records: list[dict[str, Any]], *, k: int, temperature: float,
                 max_new_tokens: int, max_prompt_tokens: int, seed: int, eos_ids: list[int], marker: Any,
                 device: torch.device, method: str | None = None, parts: Any = None,
                 compiled: bool = False) -> list[list[dict[str, Any]]]:
    """k scored samples for each record (rows without problem bookkeeping), sampled as one batch.

    The `method`'s `sample_fields` hook adds or recounts fields (ATP-Latent: its latents, and with `parts`,
    its decoder, the text read from every latent pair).
    """
    from tarpo.rollout import model_parts
    from tarpo.sampling import sample_and_score

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    drawn = sample_and_score(model, tokenizer, mode, records, repeats=k, temperature=temperature,
                             max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, generator=generator,
                             compiled=compiled, eos_ids=eos_ids, marker=marker)
    rollout, n_rows = drawn.rollout, len(records) * k
    _, _, embed = model_parts(model)
    cpu = rollout.to("cpu")
    soft_all = cpu.stats.get("soft")
    out: list[list[dict[str, Any]]] = [[] for _ in records]
    for i in range(n_rows):
        valid = cpu.valid[i]
        tokens = cpu.tokens[i][valid].tolist()
        text = drawn.texts[i]
        soft = [int(x) for x in soft_all[i][valid].tolist()] if soft_all is not None else [0] * len(tokens)
        row = {
            "sample": i % k,
            "completion": text,
            "extracted": extract_answer(text),
            "correct": drawn.rewards[i] > 0,
            "n_tokens": len(tokens),
            "n_thinking": int(cpu.thinking[i].sum()),  # thinking steps are a prefix of the completion
            "soft": soft,
            "token_ids": tokens,
        }
        one = rollout.select(slice(i, i + 1))
        stats = mode.rollout_stats(embed, one.tokens, one.meta, one.thinking)
        if "mean_gate" in stats and row["n_thinking"]:
            row["mean_gate"] = float(stats["mean_gate"])
        out[i // k].append(row)
    add_fields = get_method(method).sample_fields if method is not None else None
    if add_fields is not None:
        add_fields([row for rows in out for row in rows], rollout, mode, tokenizer, parts)
    return out


# ---------------------------------------------------------------- metrics and views


def summarise(rows_by_problem: list[list[dict[str, Any]]], k: int) -> dict[str, Any]:
    """Metrics of complete per-problem sample rows (recomputable from the samples file alone)."""
    counts = [(len(rows), sum(bool(r["correct"]) for r in rows)) for rows in rows_by_problem]
    samples = [r for rows in rows_by_problem for r in rows]
    metrics: dict[str, Any] = {"n_problems": len(rows_by_problem), "k": k, "n_samples": len(samples)}
    ci95: dict[str, list[float]] = {}
    for j in PASS_AT:
        if j <= k:
            metrics[f"pass@{j}"] = mean_pass_at_k(counts, j)
            interval = mean_ci(pass_at_k_values([c for _, c in counts], k, j))
            ci95[f"pass@{j}"] = [max(0.0, interval.low), min(1.0, interval.high)]  # a t interval can pass 0 or 1
    metrics["ci95"] = ci95  # 95% t interval over this evaluation's problems (one seed)
    metrics["mean_tokens"] = sum(r["n_tokens"] for r in samples) / len(samples)
    thinking = sum(r["n_thinking"] for r in samples)
    metrics["mean_thinking_tokens"] = thinking / len(samples)
    metrics.update(lucky_metrics(rows_by_problem))
    metrics["correct_per_problem"] = {rows[0]["problem_id"]: c for rows, (_, c) in zip(rows_by_problem, counts)}
    metrics["tokens_per_problem"] = {rows[0]["problem_id"]: sum(r["n_tokens"] for r in rows) / len(rows)
                                     for rows in rows_by_problem}
    return metrics


# The variables `make run` sets to pin the CPU numerics (Makefile, NUMERICS): recorded where they are set.
PINNED_NUMERICS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where an evaluation ran, for the results page."""
    import datetime
    import platform

    try:
        cpus = len(os.sched_getaffinity(0))  # what this job may use, not the whole node
    except AttributeError:
        cpus = os.cpu_count() or 0
    return {"platform": platform.platform(), "cpus": cpus, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numerics": {k: os.environ[k] for k in PINNED_NUMERICS if k in os.environ},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def reasoning_text(row: dict[str, Any]) -> str:
    """The text whose chain a sample is judged by: its completion, after the decoder's reading of its latent
    steps where it has them (ATP-Latent, whose completion is the answer alone)."""
    steps = row.get("latent_steps")
    return " ".join([*steps, row["completion"]]) if steps is not None else row["completion"]


def lucky_metrics(rows_by_problem: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """lucky_share (correct samples with a wrong chain / correct samples), its counts, and the lucky samples
    per problem id; nothing where no sample's gold has a chain (`chain_ok` missing or null)."""
    checked = [[r for r in rows if r.get("chain_ok") is not None] for rows in rows_by_problem]
    if not any(checked):
        return {}
    lucky = {rows[0]["problem_id"]: sum(bool(r["correct"]) and not r["chain_ok"] for r in rows)
             for rows in checked if rows}
    correct = sum(bool(r["correct"]) for rows in checked for r in rows)
    out: dict[str, Any] = {"lucky_samples": sum(lucky.values()), "correct_with_chain": correct}
    if correct:
        out["lucky_share"] = sum(lucky.values()) / correct
    out["lucky_per_problem"] = lucky
    return out


def mode_metrics(method: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The method's own evaluation metrics (its `eval_metrics` hook: soft_ratio for tarpo and lepo, the mean
    gate a for hrpo, active latents and stop rate for atp_latent)."""
    hook = get_method(method).eval_metrics
    return hook(rows) if hook is not None else {}


def trajectories(tokenizer: Any, title: str, records: list[dict[str, Any]], rows: list[dict[str, Any]],
                 method: str, limit: int = HTML_SAMPLES) -> str:
    by_id = {r["id"]: r for r in records}
    items = []
    for row in rows[:limit]:
        record = by_id[row["problem_id"]]
        n = row["n_tokens"]
        thinking = [t < row["n_thinking"] for t in range(n)]
        items.append({
            "question": record["question"], "gold": record["answer"], "answer": row["extracted"],
            "correct": row["correct"],
            "soft_ratio": (sum(row["soft"]) / row["n_thinking"] if row["n_thinking"] else 0.0)
            if get_method(method).soft_positions else None,
            "spans": token_spans(tokenizer, row["token_ids"], row["soft"], thinking),
            "latent_steps": row.get("latent_steps"),
        })
    return trajectories_html(title, items)


# ---------------------------------------------------------------- tracking


def _log_to_mlflow(cfg: Config, *, backbone: str, method: str, benchmark: str, checkpoint: Path | None,
                   metrics: dict[str, Any], params: dict[str, Any], artifacts: list[Path],
                   started: float | None = None) -> str | None:
    """Log the evaluation as a run nested under the run that trained the checkpoint (its run_id.txt), or
    under `{backbone}/{method}/seed{seed}/evaluate` (cot); the parent gets eval/{benchmark}/... (tarpo.tracking)."""
    from tarpo.tracking import log_evaluation

    run_id = fingerprint = None
    if checkpoint is not None and (Path(checkpoint) / "run_id.txt").exists():
        run_id = (Path(checkpoint) / "run_id.txt").read_text().strip() or None
    if checkpoint is not None and run_id is None:  # e.g. trained while the store was down, replayed since
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fingerprint = json.loads((Path(checkpoint) / RUN_FILE).read_text()).get("fingerprint")
    scalars = {key: float(value) for key, value in metrics.items() if key in TRACKED or key.startswith("pass@")}
    for key, (low, high) in metrics.get("ci95", {}).items():
        scalars[f"{key}_ci95_low"], scalars[f"{key}_ci95_high"] = low, high
    return log_evaluation(cfg.name, backbone=backbone, method=method, seed=cfg.seed, benchmark=benchmark,
                          metrics=scalars, params=params, artifacts=artifacts, training_run_id=run_id,
                          training_fingerprint=fingerprint, started=started)


# ---------------------------------------------------------------- the job


def evaluate(
    cfg: Config,
    *,
    backbone: str,
    method: str,
    backbone_dir: Path,
    checkpoint: Path | None,
    benchmark: str,
    data_root: Path,
    out_json: Path,
) -> dict[str, Any]:
    """Evaluate one policy on one benchmark; returns the metrics written to `out_json`. `method` is a registered
    method or an ablation arm of the config (evaluated as its method's mode; its results carry its own name)."""
    from tarpo.policy import load_policy, read_policy_info
    from tarpo.sampling import engine_defaults

    started = time.perf_counter()
    e = cfg.evaluate
    if e.k < 1 or e.batch_size < 1 or e.max_new_tokens < 1:
        raise ConfigError("evaluate.k, evaluate.batch_size and evaluate.max_new_tokens must be >= 1")
    declared = get_method(cfg.method_of(method))
    if declared.trained and checkpoint is None:
        raise ConfigError(f"method '{method}' is evaluated from its checkpoint: pass --checkpoint (only untrained "
                          f"baselines such as cot run without)")
    if not declared.trained and checkpoint is not None:
        raise ConfigError(f"{method} is the bare backbone: it takes no --checkpoint")
    bench: Benchmark = get_benchmark(benchmark, cfg.datasets)
    records = load_benchmark(benchmark, data_root, cfg.benchmarks, cfg.datasets)
    if e.max_problems:
        records = records[: e.max_problems]

    tcfg = eval_train_config(cfg, backbone, method) if checkpoint is None else \
        from_dict(TrainConfig, read_policy_info(Path(checkpoint))["train"], "checkpoint")
    paths = output_paths(Path(out_json))
    spec = _spec(cfg, backbone=backbone, method=method, benchmark=benchmark, records=records,
                 max_prompt_tokens=tcfg.max_prompt_tokens, backbone_dir=Path(backbone_dir), checkpoint=checkpoint)
    done = read_partial(paths["partial"], spec, e.k)
    wanted = {r["id"] for r in records}
    done = {pid: rows for pid, rows in done.items() if pid in wanted}
    resumed = len(done)
    _rewrite_partial(paths["partial"], spec, done)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        from tarpo.backbone import set_cpu_threads

        set_cpu_threads()
    n_batches = (len(records) + e.batch_size - 1) // e.batch_size
    todo = [b for b in range(n_batches)
            if any(r["id"] not in done for r in records[b * e.batch_size:(b + 1) * e.batch_size])]
    tokenizer = None
    if todo:
        model, tokenizer, mode = load_policy(Path(backbone_dir), declared.name, tcfg, checkpoint, device)
        # e.g. ATP-Latent's decoder, which reads the latents (the backbone dir is its SFT stage's output)
        parts = declared.frozen_parts(Path(backbone_dir), device) if declared.frozen_parts else None
        eos_ids, marker, _ = engine_defaults(model, tokenizer)
        # closed however the loop ends (an error's message, printed by the CLI, starts on a line of its own)
        with tqdm(total=len(records), initial=len(done), desc=f"eval {backbone}/{method}/{benchmark}",
                  unit="problem", dynamic_ncols=True) as bar:
            for b in todo:
                chunk = records[b * e.batch_size:(b + 1) * e.batch_size]
                samples = sample_batch(model, tokenizer, mode, chunk, k=e.k, temperature=e.temperature,
                                       max_new_tokens=e.max_new_tokens, max_prompt_tokens=tcfg.max_prompt_tokens,
                                       seed=batch_seed(cfg.seed, benchmark, b), eos_ids=eos_ids, marker=marker,
                                       device=device, method=declared.name, parts=parts,
                                       compiled=e.compile_decode)
                new_rows = []
                for index, (record, rows) in enumerate(zip(chunk, samples)):
                    if record["id"] in done:  # kept from the partial file (identical: same batch, same seed)
                        continue
                    full = [{"problem_id": record["id"], "problem_index": b * e.batch_size + index,
                             "gold": str(record["answer"]), **row} for row in rows]
                    done[record["id"]] = full
                    new_rows += full
                _append(paths["partial"], new_rows)
                bar.update(len(chunk))
                correct = [r["correct"] for rows in done.values() for r in rows]
                bar.set_postfix(pass1=f"{sum(correct) / len(correct):.3f}")

    rows_by_problem = [done[r["id"]] for r in records]
    for record, problem_rows in zip(records, rows_by_problem):  # after sampling, so resumed rows get it too
        for row in problem_rows:
            row["chain_ok"] = chain_correct(reasoning_text(row), record.get("solution"))
    rows = [row for problem in rows_by_problem for row in problem]
    metrics = {
        "benchmark": benchmark, "kind": bench.kind, "distribution": bench.distribution, "ood": bench.ood,
        "backbone": backbone, "method": method, "checkpoint": str(checkpoint) if checkpoint else None,
        **({"ablation_of": declared.name} if declared.name != method else {}),
        **summarise(rows_by_problem, e.k), **mode_metrics(declared.name, rows),
        "temperature": e.temperature, "max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size,
        "seed": cfg.seed, "max_problems": e.max_problems, "compile_decode": e.compile_decode,
        "revision": (cfg.benchmarks.get(benchmark, {}).get("revision", bench.revision)
                     if not cfg.benchmarks.get(benchmark, {}).get("path") else "local file"),
        "resumed_problems": resumed, "machine": machine_info(device), "code": code_version(),
        "wall_seconds": time.perf_counter() - started,
    }
    if bench.kind == "code":  # which sandbox layers judged the programs; `weak` flags a degraded host
        from tarpo.sandbox import isolation_report

        metrics["sandbox"] = isolation_report()
        if metrics["sandbox"].get("weak"):
            log.warning(f"{benchmark}: the code sandbox ran without some of its kernel layers on this host: "
                  f"{metrics['sandbox']}")
    write_jsonl(paths["samples"], rows)
    if tokenizer is None:  # everything came from the partial file
        from transformers import AutoTokenizer

        from tarpo.backbone import backbone_path

        tokenizer = AutoTokenizer.from_pretrained(backbone_path(Path(backbone_dir)))
    atomic_write_text(paths["html"], trajectories(tokenizer, f"{backbone}/{method} on {benchmark}", records, rows,
                                                  declared.name))
    metrics["wall_seconds"] = time.perf_counter() - started
    write_json(paths["json"], metrics)
    paths["partial"].unlink(missing_ok=True)
    # tracked only once every file is written: a store problem never costs the result (tarpo.tracking)
    params = {"backbone": backbone, "method": method, "benchmark": benchmark, "evaluate": to_dict(e), "seed": cfg.seed}
    _log_to_mlflow(cfg, backbone=backbone, method=method, benchmark=benchmark, checkpoint=checkpoint,
                   metrics=metrics, params=params, artifacts=[paths["samples"], paths["html"]],
                   started=time.time() - (time.perf_counter() - started))
    log.info(f"{backbone}/{method} on {benchmark}: pass@1 {metrics['pass@1']:.4f} over {len(records)} problems "
          f"x {e.k} samples, mean tokens {metrics['mean_tokens']:.1f} -> {paths['json']}")
    return metrics
