"""The RL loop every method shares: sample groups, score, GRPO loss, update.

Runs as one process or under `accelerate launch` with one process per GPU
(gradients are averaged across processes by hand, which keeps the rollout
and the training forward on the plain, unwrapped modules).

Outputs of `train(..., out_dir)`:

    out_dir/                  the finished policy (see tarpo.policy) + metrics.jsonl, samples.html
    out_dir/../train_state/{out_dir's name}/{fingerprint}/
                              periodic checkpoints step-NNNNNN/ (trainable weights, optimiser,
                              scheduler, RNG states, step, with its SHA256SUMS) and run.json,
                              what the fingerprint was computed from

`out_dir` appears (atomically) only when training has finished, so a killed
run is never mistaken for a finished one. SIGTERM (SLURM preemption) saves a
checkpoint at the end of the current step and exits with status 143.

A rerun resumes only from a checkpoint of the same run: the fingerprint hashes
everything that determines the weights (the resolved train config, method,
backbone weights, training data, seed, steps, world size), so after a config
change the job starts over and says which keys differ. A checkpoint that fails
verification (checksum, loadable, expected tensors) is set aside as
`corrupt-step-NNNNNN/` and the next older one is tried. Once the final policy
is saved, the run's `train_state/{name}/` is deleted: out_dir holds the weights, optimiser and
scheduler state, and the periodic checkpoints only served a killed run. The state is keyed by
out_dir's name, so two runs whose out_dirs share a parent never resume or delete each other's.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from tarpo.checkpoints import (
    RUN_FILE,
    STATE_FILE,
    CorruptCheckpointError,
    Preemption,
    checkpoints,
    fingerprint,
    identity_diff,
    latest_checkpoint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
    trainable_parameters,
)
from tarpo.config import Config, TrainConfig
from tarpo.data.batching import batch_indices, load_train_records
from tarpo.errors import NonFiniteLossError
from tarpo.io import (
    atomic_dir,
    disk_full_as_error,
    file_digest,
    tree_digest,
    write_json,
    write_jsonl,
    write_manifest,
)
from tarpo.loss import group_advantages, grpo_loss, loss_tokens, uniform_groups
from tarpo.methods import RewardInputs, get_method
from tarpo.optim import optimizer_groups
from tarpo.policy import add_lora, save_policy
from tarpo.provenance import code_version
from tarpo.render import token_spans, trajectories_html
from tarpo.rewards import extract_answer
from tarpo.rollout import (
    Rollout,
    completion_inputs,
    model_parts,
    score,
    truncated,
)
from tarpo.sampling import engine_defaults, sample_and_score

log = logging.getLogger(__name__)

# Train settings that change how a run is logged or checkpointed, not its weights: a change resumes.
NOT_FINGERPRINTED = ("checkpoint_every", "log_samples")
EXIT_PREEMPTED = 143



# ---------------------------------------------------------------- data


def forward_pieces(n: int, forward_batch: int) -> list[slice]:
    """Slices of n completions scored in one forward/backward each: all at once when forward_batch is 0."""
    size = forward_batch or n
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]





def total_steps(cfg: TrainConfig, n_records: int, world: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, n_records // (cfg.prompts_per_step * cfg.grad_accum * world))


# ---------------------------------------------------------------- the loop


@dataclasses.dataclass
class StepResult:
    metrics: dict[str, float]
    rollout: Rollout
    texts: list[str]
    records: list[dict[str, Any]]
    rewards: Tensor


class GrpoTrainer:
    """One method on one backbone. Build it, then `run()`."""

    def __init__(self, cfg: Config, backbone: str, method: str, backbone_dir: Path, data_dir: Path,
                 out_dir: Path, accelerator: Any = None) -> None:
        from accelerate import Accelerator

        from tarpo.backbone import load_backbone

        self.cfg = cfg
        self.tcfg = cfg.train_config(backbone, method)
        self.backbone, self.method = backbone, method
        self.out_dir = Path(out_dir)
        # keyed by the output's name: hand-run trainings whose --out share a parent keep apart
        self.state_root = self.out_dir.parent / "train_state" / self.out_dir.name
        self.records = load_train_records(data_dir)
        self.data_digest = file_digest(Path(data_dir) / "train.jsonl")
        self.backbone_digest = tree_digest(backbone_dir)
        mp = "bf16" if self.tcfg.mixed_precision in ("auto", "bf16") and torch.cuda.is_available() else "no"
        self.accelerator = accelerator or Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.device = acc.device
        torch.manual_seed(cfg.seed)

        # Weights stay fp32 for training (autocast gives bf16 compute on GPU).
        model, self.tokenizer = load_backbone(Path(backbone_dir), dtype=torch.float32)
        self.tokenizer.padding_side = "left"
        if self.tcfg.adapter == "lora":
            model = add_lora(model, self.tcfg)
            self.ref_model = None  # reference = the same model with adapters disabled
        elif self.tcfg.beta > 0:
            self.ref_model = copy.deepcopy(model).requires_grad_(False).to(self.device).eval()
        else:
            self.ref_model = None  # no KL term: no reference forward either
        self.model = model.to(self.device).eval()  # eval: no dropout, rollout and scoring see one function
        self.spec = get_method(cfg.method_of(method))  # an ablation arm trains as its method, with its settings
        self.mode = self.spec.build_mode(self.tcfg, model.config.hidden_size).to(self.device)
        self.mode.bind(self.tokenizer)
        # A method may start its mode from the backbone dir (ATP-Latent: its SFT stage's heads) and use frozen
        # parts loaded with it (ATP-Latent: the decoder that reads latents back for the coherence reward).
        if self.spec.init_mode is not None:
            self.spec.init_mode(Path(backbone_dir), self.mode)
        self.parts = self.spec.frozen_parts(Path(backbone_dir), self.device) if self.spec.frozen_parts else None
        self.ref_mode = copy.deepcopy(self.mode).requires_grad_(False).eval()  # the initial router

        self.eos_ids, self.marker, self.pad_id = engine_defaults(self.model, self.tokenizer)
        self.steps = total_steps(self.tcfg, len(self.records), acc.num_processes)

        t = self.tcfg
        self.optimizer = torch.optim.AdamW(optimizer_groups(self.model, self.mode, t), betas=(t.adam_beta1, t.adam_beta2))
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(t.warmup_ratio * self.steps), self.steps
        )
        self.params = trainable_parameters(self.model, self.mode)
        self.step = 0
        # Prompt batches drawn so far (per process): the position in the seeded prompt stream. Without dynamic
        # sampling it is step x grad_accum; with it, a step draws as many as it needs, so it is checkpointed.
        self.draws = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.run_id: str | None = None
        self.history: list[dict[str, float]] = []
        self.identity = self.run_identity()
        self.state_dir = self.state_root / fingerprint(self.identity)

    def run_identity(self) -> dict[str, Any]:
        """Everything that determines the trained weights; its hash names the checkpoint directory."""
        train = {k: v for k, v in dataclasses.asdict(self.tcfg).items() if k not in NOT_FINGERPRINTED}
        return {"backbone": self.backbone, "method": self.method, "seed": self.cfg.seed, "steps": self.steps,
                "world_size": self.accelerator.num_processes, "train": train,
                "train_data_sha256": self.data_digest, "backbone_sha256": self.backbone_digest}

    def group_lr(self, prefix: str) -> float | None:
        """Current learning rate of the optimiser groups named `prefix` ('policy' or 'head'), None if absent."""
        return next((g["lr"] for g in self.optimizer.param_groups if g["name"].startswith(prefix)), None)

    # -------------------------------------------------------- resume

    def resume(self) -> bool:
        """Load the newest verified checkpoint of this very run; False (start over) if there is none."""
        say = log.info if self.accelerator.is_main_process else (lambda *a, **k: None)
        name = f"{self.backbone}/{self.method}"
        if self.accelerator.is_main_process:
            self._adopt_shared_state(say, name)
        self.accelerator.wait_for_everyone()
        self._report_other_runs(say, name)
        for ckpt in reversed(checkpoints(self.state_dir)):
            try:
                state = load_checkpoint(ckpt, self.params)
            except CorruptCheckpointError as err:
                aside = ckpt.with_name(f"corrupt-{ckpt.name}")
                log.warning(f"{name}: checkpoint {ckpt} is unusable ({err}); set aside as {aside.name}, "
                    f"trying the next older one")
                if self.accelerator.is_main_process:
                    with contextlib.suppress(OSError):
                        shutil.rmtree(aside, ignore_errors=True)
                        ckpt.rename(aside)
                continue
            with torch.no_grad():
                for key, p in self.params.items():
                    p.copy_(state["params"][key].to(p.device))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_states(state["rng"])
            self.step = state["step"]
            self.draws = state.get("draws", self.step * self.tcfg.grad_accum)  # older checkpoints: the fixed stream
            self.nonfinite_total = state["nonfinite_total"]
            self.run_id = state.get("run_id")
            self.history = state["history"]
            say(f"resuming {name} from {ckpt} (step {self.step}/{self.steps})")
            return True
        return False

    def _adopt_shared_state(self, say: Any, name: str) -> None:
        """Move this run's checkpoints from where older versions kept them, the shared train_state/{fingerprint}
        beside the output (before states were keyed by the output's name), so a run killed under them resumes."""
        shared = self.out_dir.parent / "train_state" / self.state_dir.name
        if shared == self.state_dir or self.state_dir.exists() or not checkpoints(shared):
            return
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        shared.rename(self.state_dir)
        say(f"{name}: moved the checkpoints of this run from {shared} (an older version's place) to {self.state_dir}")

    def _report_other_runs(self, say: Any, name: str) -> None:
        """Say so when train_state/ holds checkpoints of another configuration: they are not resumed."""
        if not self.state_root.is_dir():
            return
        for other in sorted(self.state_root.iterdir()):
            if other == self.state_dir or not other.is_dir() or other.name.startswith("."):
                continue
            if other.name.startswith("step-"):  # written before checkpoints carried a fingerprint
                say(f"{name}: ignoring {other}: an unfingerprinted checkpoint of an older version; starting over")
                continue
            try:
                old = json.loads((other / RUN_FILE).read_text())
                old.pop("fingerprint", None)
                differs = "; ".join(identity_diff(old, self.identity)[:8]) or "unknown"
            except (OSError, ValueError):
                differs = f"its {RUN_FILE} is unreadable"
            say(f"{name}: {other} holds checkpoints of a different run configuration ({differs}); "
                f"they are not used, this run starts over")

    def checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            if not (self.state_dir / RUN_FILE).exists():
                self.state_dir.mkdir(parents=True, exist_ok=True)
                write_json(self.state_dir / RUN_FILE, {"fingerprint": self.state_dir.name, **self.identity})
            save_checkpoint(self.state_dir, self.step, self.params, {
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_states(), "step": self.step, "draws": self.draws, "nonfinite_total": self.nonfinite_total,
                "run_id": self.run_id, "history": self.history,
            })
        self.accelerator.wait_for_everyone()

    # -------------------------------------------------------- one step

    def _generator(self, micro: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        acc = self.accelerator
        gen.manual_seed(((self.cfg.seed * 100_003 + self.step) * 1009 + micro) * 131 + acc.process_index)
        return gen

    def sample(self, micro: int) -> tuple[Rollout, list[dict[str, Any]], list[str], Tensor, dict[str, float]]:
        """The step's draw number `micro`: prompts_per_step prompts from the stream's next position, G
        completions each, and their rewards."""
        t, acc = self.tcfg, self.accelerator
        # draw d of the stream starts at prompt (d x world + rank) x prompts_per_step: without dynamic sampling
        # d = step x grad_accum + micro, the order batch_indices has always given.
        idx = batch_indices(len(self.records), self.cfg.seed, self.draws + micro, 0, 1,
                            acc.num_processes, acc.process_index, t.prompts_per_step)
        prompts = [self.records[i] for i in idx]
        records = [r for r in prompts for _ in range(t.group_size)]  # groups are contiguous
        with acc.autocast():
            drawn = sample_and_score(self.model, self.tokenizer, self.mode, prompts, repeats=t.group_size,
                                     temperature=t.temperature, max_new_tokens=t.max_new_tokens,
                                     max_prompt_tokens=t.max_prompt_tokens, generator=self._generator(micro),
                                     compiled=t.compile_decode, eos_ids=self.eos_ids, marker=self.marker,
                                     pad_id=self.pad_id)
        rollout, texts = drawn.rollout, drawn.texts
        rewards, parts = self.rewards(rollout, texts, records, drawn.rewards)
        return rollout, records, texts, rewards, parts

    def rewards(self, rollout: Rollout, texts: list[str], records: list[dict[str, Any]],
                checked: list[float]) -> tuple[Tensor, dict[str, float]]:
        """Per-completion rewards, and their parts' means for logging.

        Every method: the answer checker's score (`checked`, 1 for a verified answer); a method's `reward`
        hook may mix in more (ATP-Latent).
        """
        acc = torch.tensor(checked, device=self.device)
        if self.spec.reward is None:
            return acc, {}
        return self.spec.reward(RewardInputs(acc, rollout, texts, self.tcfg, self.mode, self.tokenizer, self.parts))

    def _scores(self, rollout: Rollout) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(policy log-probs, reference log-probs) of a rollout.

        The reference scores the policy's own input embeddings: those the
        current policy builds from the rollout's stored metadata (its embedding
        table, its HRPO gate, the stored top-K weights / relaxed samples /
        latents), detached. It does not rebuild the inputs with its own
        weights. So both KL terms (token and TARPO action) compare the two
        models' next-step distributions given the very same inputs; METHODS.md
        leaves this open.
        """
        t = self.tcfg
        with self.accelerator.autocast():
            inputs = completion_inputs(self.model, self.mode, rollout)
            logps = score(self.model, self.mode, rollout, t.temperature, inputs=inputs)
            if t.beta == 0:
                return logps, {}
            detached = tuple(x.detach() for x in inputs)
            with torch.no_grad():
                if self.ref_model is not None:
                    ref = score(self.ref_model, self.ref_mode, rollout, t.temperature, inputs=detached)
                else:
                    with self.model.disable_adapter():
                        ref = score(self.model, self.ref_mode, rollout, t.temperature, inputs=detached)
        return logps, ref

    def _loss_positions(self, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor] | None]:
        """(valid positions the loss sees, the mode's streams over them): with mask_truncated_completions a
        completion cut by the length limit has none (DAPO's overlong filtering)."""
        valid = rollout.valid
        if self.tcfg.mask_truncated_completions:
            valid = valid & ~truncated(rollout, self.eos_ids).unsqueeze(1)
        return valid, self.mode.loss_masks(rollout.meta, valid)

    def _loss(self, rollout: Rollout, advantages: Tensor, old: dict[str, Tensor] | None,
              normalizer: float | Tensor | None = None):
        t = self.tcfg
        logps, ref = self._scores(rollout)
        valid, streams = self._loss_positions(rollout)
        action_mask = None
        if "action" in logps:
            action_mask = rollout.thinking if t.action_loss_positions == "thinking" else rollout.valid
        out = grpo_loss(logps, ref, old, advantages, valid, t.beta, action_mask=action_mask,
                        action_weight=t.action_loss_weight,
                        clip_eps=t.clip_eps if t.updates_per_batch > 1 else None,
                        stream_masks=streams, log_ratio_clamp=t.log_ratio_clamp or None,
                        loss_type=t.loss_type, clip_eps_high=t.epsilon_high,
                        importance_sampling_level=t.importance_sampling_level, normalizer=normalizer,
                        max_length=t.max_new_tokens)
        return out, logps

    def _sync_gradients(self) -> Tensor:
        """Average gradients over processes; returns whether all are finite (on every process alike)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        if self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p, g in zip(self.params.values(), grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        return torch.isfinite(flat).all()

    def _collect(self) -> tuple[list[tuple], dict[str, float]]:
        """The step's micro-batches (rollout, records, texts, rewards, reward parts) and, with dynamic sampling,
        its log (groups drawn and kept, rollouts spent, draws, the rewards of everything drawn).

        Dynamic sampling (DAPO): a group whose rewards all agree has zero advantage, so it is dropped and the
        next prompts of the same seeded stream are drawn, until the step holds prompts_per_step x grad_accum
        informative groups or dynamic_sampling_max_draws extra draws were made. Processes draw in lockstep (the
        stream position is shared), a process that is full just skips its draw.
        """
        t, acc = self.tcfg, self.accelerator
        if not t.dynamic_sampling:
            batches = [self.sample(micro) for micro in range(t.grad_accum)]
            self.draws += t.grad_accum
            return batches, {}
        want, G = t.prompts_per_step * t.grad_accum, t.group_size
        kept: list[tuple] = []
        drawn_rewards: list[Tensor] = []
        have, draw, last = 0, 0, None
        while draw < t.grad_accum + t.dynamic_sampling_max_draws and not self._all(have >= want):
            if have < want:
                rollout, records, texts, rewards, parts = last = self.sample(draw)
                drawn_rewards.append(rewards)
                informative = (~uniform_groups(rewards, G)).nonzero().squeeze(1)[: want - have]
                if len(informative):
                    rows = (informative.unsqueeze(1) * G + torch.arange(G, device=informative.device)).view(-1)
                    listed = rows.tolist()
                    kept.append((rollout.select(rows), [records[i] for i in listed], [texts[i] for i in listed],
                                 rewards[rows], parts))
                    have += len(informative)
            draw += 1
        self.draws += draw
        if not kept:  # every group drawn agreed: train on the last draw (zero advantages: only the KL acts)
            kept = [last]
        counts = torch.tensor([len(torch.cat(drawn_rewards)) // G, have, len(torch.cat(drawn_rewards))],
                              dtype=torch.float64, device=self.device)
        if acc.num_processes > 1:
            counts = acc.reduce(counts, reduction="sum")
        record = {"groups_drawn": float(counts[0]), "groups_kept": float(counts[1]), "rollouts": float(counts[2]),
                "draws": float(draw), "reward_mean_drawn": float(acc.gather(torch.cat(drawn_rewards)).mean())}
        if counts[1] < want * acc.num_processes and acc.is_main_process:
            log.warning(f"{self.backbone}/{self.method} step {self.step + 1}: dynamic sampling kept "
                        f"{int(counts[1])}/{want * acc.num_processes} informative groups after {draw} draws "
                        f"(cap dynamic_sampling_max_draws = {t.dynamic_sampling_max_draws}); training on what was kept")
        return kept, record

    def _all(self, flag: bool) -> bool:
        """True when `flag` holds on every process."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([0.0 if flag else 1.0], device=self.device)
        return bool(self.accelerator.reduce(value, reduction="sum") == 0)

    def _advantages(self, batches: list[tuple]) -> list[Tensor]:
        """Each micro-batch's advantages; 'batch' scaling shares one std over the step's rewards (this process)."""
        t = self.tcfg
        scale = "none" if t.loss_type == "dr_grpo" else t.scale_rewards  # Dr. GRPO: no std
        batch_std = None
        if scale == "batch":
            every = torch.cat([b[3] for b in batches]).float()
            batch_std = every.std() if every.numel() > 1 else torch.zeros((), device=every.device)
        return [group_advantages(b[3], t.group_size, t.advantage_eps, scale, batch_std) for b in batches]

    def _normalizer(self, batches: list[tuple], local: bool = False) -> float | None:
        """The denominator of the loss types that sum over the whole step (None: grpo and bnpo, whose counts
        are per completion / per micro-batch; `local`: the loss positions of `batches`, bnpo's).

        dapo: the loss positions of the whole step, over every process / the number of processes (gradients
        are averaged over processes), as TRL's num_items_in_batch; dr_grpo: the step's completions x
        max_new_tokens. So pieces and micro-batches add up to the loss of one big batch."""
        t, acc = self.tcfg, self.accelerator
        if local:
            return max(float(sum(loss_tokens(*self._loss_positions(b[0])) for b in batches)), 1.0)
        if t.loss_type == "dr_grpo":
            return float(sum(len(b[3]) for b in batches) * t.max_new_tokens)
        if t.loss_type != "dapo":
            return None
        tokens = sum(loss_tokens(*self._loss_positions(b[0])) for b in batches)
        if acc.num_processes > 1:
            tokens = acc.reduce(tokens.to(self.device), reduction="sum")
        return max(float(tokens) / acc.num_processes, 1.0 / acc.num_processes)

    def train_step(self) -> StepResult:
        t, acc = self.tcfg, self.accelerator
        started = time.perf_counter()
        collected, sampling = self._collect()
        reward_parts = [b[4] for b in collected]
        batches = [(*b[:4], adv) for b, adv in zip(collected, self._advantages(collected))]
        rollout_seconds = time.perf_counter() - started
        normalizer = self._normalizer(batches)
        n_total = sum(len(b[3]) for b in batches)

        def scaled(loss: Tensor, i: int, share: float) -> Tensor:
            """A piece's part of the step's loss. grpo / bnpo average over micro-batches (equal ones; with
            dynamic sampling weighted by completions); grpo's mean over completions also weights each piece
            by its share; dapo / dr_grpo already divide by the whole step's count."""
            if t.loss_type in ("dapo", "dr_grpo"):
                return loss
            piece = share if t.loss_type == "grpo" else 1.0  # bnpo divides by the micro-batch's tokens
            if t.dynamic_sampling:
                return loss * (piece * len(batches[i][3]) / n_total)
            return loss * piece / len(batches)

        self.optimizer.zero_grad(set_to_none=True)
        # The loss is a mean over completions (grpo) or a sum over a count fixed for the micro-batch or step
        # (the other loss types), so scoring a micro-batch in pieces of forward_batch completions gives the same
        # loss and gradient with a fraction of the activation memory. Logged means are weighted by share.
        pieces = [(i, part) for i, b in enumerate(batches) for part in forward_pieces(len(b[3]), t.forward_batch)]
        old_logps: dict[int, dict[str, Tensor]] = {}
        finite = True
        weighted: dict[str, float] = collections.defaultdict(float)
        weights: dict[str, float] = collections.defaultdict(float)
        step_loss = 0.0  # the step's loss, summed over pieces (every loss type but plain grpo logs this)

        def log_mean(name: str, value: float, weight: float) -> None:
            weighted[name] += value * weight
            weights[name] += weight

        for update in range(t.updates_per_batch):
            if update > 0:
                self.optimizer.zero_grad(set_to_none=True)
            for j, (i, part) in enumerate(pieces):
                rollout, adv = batches[i][0], batches[i][4]
                share = (part.stop - part.start) / len(adv)
                if share < 1:
                    rollout, adv = rollout.select(part), adv[part]
                bnpo = normalizer is None and t.loss_type == "bnpo"
                out, logps = self._loss(rollout, adv, old_logps.get(j),
                                        self._normalizer([batches[i]], local=True) if bnpo else normalizer)
                if t.dynamic_sampling:
                    share = share * len(batches[i][3]) / n_total * len(batches)  # logged means: by completions
                if update == 0:
                    old_logps[j] = {k: v.detach() for k, v in logps.items()}
                    log_mean("token_entropy", float(logps["token_entropy"][rollout.valid].mean()), share)
                    if "action_entropy" in logps and bool(rollout.thinking.any()):
                        log_mean("action_entropy", float(logps["action_entropy"][rollout.thinking].mean()), share)
                finite = finite and bool(torch.isfinite(out.loss.detach()))
                piece_loss = scaled(out.loss, i, (part.stop - part.start) / len(batches[i][4]))
                piece_loss.backward()
                log_mean("loss", float(out.loss.detach()), share)
                step_loss += float(piece_loss.detach())
                log_mean("kl", out.kl, share)
                log_mean("action_kl", out.action_kl, share)
            finite = bool(self._sync_gradients()) and finite
            # Every process reaches the same verdict (gradients were averaged), so all skip together.
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                break
            grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), t.max_grad_norm)
            self.optimizer.step()
        if finite:
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            if self.nonfinite_in_row >= t.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step}: aborting "
                    f"(last complete checkpoint in {self.state_dir}); lower the learning rate or check the data"
                )
        self.scheduler.step()
        self.step += 1

        rollout, records, texts, rewards, _ = batches[-1]
        all_rewards = acc.gather(torch.cat([b[3] for b in batches]))
        lengths = acc.gather(torch.cat([b[0].lengths.float() for b in batches]))
        n_tokens = float(lengths.sum())
        _, _, embed = model_parts(self.model)
        metrics = {
            "reward_mean": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()) if all_rewards.numel() > 1 else 0.0,
            # plain grpo: the share-weighted mean (as ever); otherwise the step's loss, mean over its updates
            "loss": (weighted["loss"] / weights["loss"] if t.loss_type == "grpo" and not t.dynamic_sampling
                     else step_loss / (update + 1)),
            "kl": weighted["kl"] / weights["kl"],
            "token_entropy": weighted["token_entropy"] / max(weights["token_entropy"], 1e-12),
            "completion_length": float(lengths.mean()),
            "lr": self.group_lr("policy"),
            "tokens_per_s": n_tokens / max(rollout_seconds, 1e-9),
            "step_seconds": time.perf_counter() - started,
            "nonfinite_skipped": float(self.nonfinite_total),
            "world_size": float(acc.num_processes),
            "completions": float(all_rewards.numel()),
        }
        if sampling:  # dynamic sampling: the reward of everything drawn (the kept groups' is biased to 0 < r < 1)
            metrics["reward_mean_kept"] = metrics["reward_mean"]
            metrics["reward_mean"] = sampling.pop("reward_mean_drawn")
            metrics.update(sampling)
        if finite:
            metrics["grad_norm"] = float(grad_norm)
        if self.group_lr("head") is not None:
            metrics["head_lr"] = self.group_lr("head")
        if weights["action_entropy"]:
            metrics["action_entropy"] = weighted["action_entropy"] / weights["action_entropy"]
            metrics["action_kl"] = weighted["action_kl"] / weights["action_kl"]
        stats = [self.mode.rollout_stats(embed, b[0].tokens, b[0].meta, b[0].thinking) for b in batches] + reward_parts
        for key in sorted({k for s in stats for k in s}):
            values = [s[key] for s in stats if key in s]
            metrics[key] = sum(values) / len(values)
        return StepResult(metrics, rollout, texts, records, rewards)

    # -------------------------------------------------------- the run

    def samples_html(self, result: StepResult) -> str:
        rollout, items = result.rollout, []
        for i in range(min(self.tcfg.log_samples, len(result.texts))):
            valid = rollout.valid[i].cpu()
            tokens = rollout.tokens[i].cpu()[valid].tolist()
            soft = rollout.stats.get("soft", torch.zeros_like(rollout.tokens, dtype=torch.float))[i].cpu()[valid]
            thinking = rollout.thinking[i].cpu()[valid].tolist()
            items.append({
                "question": result.records[i]["question"], "gold": result.records[i]["answer"],
                "answer": extract_answer(result.texts[i]), "correct": bool(result.rewards[i] > 0),
                "soft_ratio": float(soft.sum() / max(sum(thinking), 1)) if "soft" in rollout.stats else None,
                "spans": token_spans(self.tokenizer, tokens, soft.tolist(), thinking),
            })
        return trajectories_html(f"{self.backbone}/{self.method}: step {self.step} samples", items)

    def run(self) -> dict[str, float]:
        from tarpo.tracking import NullTracker, run_name, start_run

        acc = self.accelerator
        self.resume()
        if acc.is_main_process:
            tracking = start_run(self.cfg.name, run_name(self.backbone, self.method, "train", seed=self.cfg.seed),
                                 params=None if self.run_id else {"method": self.method, "backbone": self.backbone,
                                                                   "train": dataclasses.asdict(self.tcfg),
                                                                   "seed": self.cfg.seed, "steps": self.steps},
                                 tags={"backbone": self.backbone, "method": self.method, "stage": "train",
                                       # how an evaluation finds this run when run_id.txt cannot name it (a
                                       # run created later by `tarpo track --replay`)
                                       "fingerprint": self.state_dir.name,
                                       **({"ablation_of": self.spec.name} if self.spec.name != self.method else {})},
                                 run_id=self.run_id)
        else:
            tracking = contextlib.nullcontext(NullTracker())
        last: StepResult | None = None
        with tracking as tracker, Preemption() as preemption:
            self.run_id = tracker.run_id
            # closed however the loop ends (an error's message, printed by the CLI, starts on a line of its own)
            with tqdm(total=self.steps, initial=self.step, desc=f"train {self.backbone}/{self.method}", unit="step",
                      disable=not acc.is_main_process, dynamic_ncols=True) as bar:
                while self.step < self.steps:
                    last = self.train_step()
                    self.history.append({"step": self.step, **last.metrics})
                    tracker.log_metrics(last.metrics, step=self.step)
                    bar.update(1)
                    soft = {"soft": f"{last.metrics['soft_ratio']:.2f}"} if "soft_ratio" in last.metrics else {}
                    bar.set_postfix(reward=f"{last.metrics['reward_mean']:.2f}", **soft)
                    stop = self._agree(preemption.requested)
                    every = self.tcfg.checkpoint_every
                    if stop or (every and self.step % every == 0 and self.step < self.steps):
                        self.checkpoint()
                    if stop:
                        bar.close()  # before the message: no half-drawn bar line after it
                        log.warning(f"SIGTERM: checkpointed {self.backbone}/{self.method} at step {self.step}; "
                                    "rerun to resume")
                        raise SystemExit(EXIT_PREEMPTED)
            if acc.is_main_process:
                self.save_final(last, tracker)
            acc.wait_for_everyone()
        return self.history[-1] if self.history else {}

    def _agree(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(value, reduction="sum") > 0)

    def save_final(self, last: StepResult | None, tracker: Any) -> None:
        for name, p in self.params.items():
            if not torch.isfinite(p).all():
                raise NonFiniteLossError(f"final weights hold non-finite values ({name}); nothing saved")
        previous = latest_checkpoint(self.state_dir)
        kept = f"training resumes from {previous}" if previous else "no periodic checkpoint was kept"
        with disk_full_as_error(self.out_dir, "the final policy", kept), atomic_dir(self.out_dir) as tmp:
            save_policy(self.model, self.mode, self.tcfg, self.spec.name, tmp)  # the mode it loads as
            write_json(tmp / RUN_FILE, {"fingerprint": self.state_dir.name, **self.identity, "code": code_version()})
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "step": self.step, "draws": self.draws, "run_id": self.run_id}, tmp / STATE_FILE)
            write_jsonl(tmp / "metrics.jsonl", self.history)
            if last is not None:
                (tmp / "samples.html").write_text(self.samples_html(last))
            (tmp / "run_id.txt").write_text(f"{self.run_id or ''}\n")
            write_manifest(tmp)  # evaluation checks it: a damaged copy (e.g. a partial sync) is named, not loaded
        if last is not None:  # tracked once the policy is in place
            tracker.log_artifact(self.out_dir / "samples.html")
        tracker.log_metrics({"nonfinite_skipped": float(self.nonfinite_total)}, step=self.step)
        log.info(f"saved {self.backbone}/{self.method} policy to {self.out_dir}")
        # The final policy holds everything a resume would need; periodic checkpoints (of this and of
        # superseded configurations) only served killed runs, and cost most of the results' size.
        if self.state_root.exists():
            shutil.rmtree(self.state_root, ignore_errors=True)
            with contextlib.suppress(OSError):  # train_state/ itself, once no other run keeps state there
                self.state_root.parent.rmdir()
            log.info(f"removed {self.state_root} (periodic checkpoints of a finished run)")


def train(cfg: Config, backbone: str, method: str, backbone_dir: Path, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """Train `method` on `backbone`; resumes from the newest checkpoint under out_dir/../train_state/{name}."""
    from tarpo.backbone import set_cpu_threads

    if not torch.cuda.is_available():
        set_cpu_threads()
    trainer = GrpoTrainer(cfg, backbone, method, backbone_dir, data_dir, out_dir)
    return trainer.run()
