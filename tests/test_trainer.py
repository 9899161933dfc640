"""The GRPO trainer on a tiny backbone: updates, checkpoints, resume after SIGTERM, non-finite losses, 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from tarpo.checkpoints import latest_checkpoint
from tarpo.config import TrainConfig, load_config
from tarpo.errors import NonFiniteLossError
from tarpo.methods import build_mode
from tarpo.optim import optimizer_groups
from tarpo.trainer import EXIT_PREEMPTED, GrpoTrainer

from conftest import TINY_DECAYED, TINY_NO_DECAY

SMOKE = {
    "name": "test",
    "datasets": {"synthetic": {"n_train": 60, "n_test_id": 8, "n_test_ood": 8}},
    "backbones": {"tiny": {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                                     "intermediate_size": 64, "vocab_size": 300},
                           "warm_start": {"steps": 4, "batch_size": 8, "eval_problems": 2}}},
    "train": {"adapter": "full", "steps": 4, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12,
              "learning_rate": 1e-3, "head_learning_rate": 1e-2, "checkpoint_every": 1, "beta": 0.01,
              "action_bias_hard": 0.0, "soft_top_k": 4, "lepo_top_k": 4, "log_samples": 2},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tarpo.backbone import build_backbone
    from tarpo.data.synthetic import prepare_dataset

    root = tmp_path_factory.mktemp("trainer")
    cfg = load_config(SMOKE)
    prepare_dataset(cfg.datasets["synthetic"], root / "data")
    build_backbone(cfg, "tiny", root / "data", root / "backbone")
    return root


def make(prepared, tmp_path, method="tarpo", **train):
    raw = json.loads(json.dumps(SMOKE))
    raw["train"].update(train)
    cfg = load_config(raw)
    return GrpoTrainer(cfg, "tiny", method, prepared / "backbone", prepared / "data", tmp_path / method / "checkpoint")


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.params.items()}


def group_contents(groups, model, mode):
    """{group name: (sorted parameter names, lr, weight decay)}, parameters named model.* / mode.*."""
    names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
    names.update({id(p): f"mode.{n}" for n, p in mode.named_parameters()})
    return {g["name"]: (sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in groups}


# `tiny_model`'s parameters by hand (conftest), named model.* as `group_contents` names them.
EXEMPT = [f"model.{n}" for n in TINY_NO_DECAY]
DECAYED = [f"model.{n}" for n in TINY_DECAYED]
# Every parameter of a mode, by hand: none is weight-decayed (at the scaled head lr the decay alone moved them).
HEADS = {
    "grpo": [],
    "lepo": [],
    "tarpo": ["mode.action_head.bias", "mode.action_head.weight"],
    "hrpo": ["mode.gate_i.bias", "mode.gate_i.weight", "mode.gate_r.bias", "mode.gate_r.weight", "mode.log_lambda"],
    "atp_latent": sorted(f"mode.{layer}.{kind}" for kind in ("weight", "bias") for layer in (
        "latent_head.0", "latent_head.2", "latent_head.3", "mu", "logvar", "stop_head.0", "stop_head.2")),
}


@pytest.mark.parametrize("method", ["grpo", "lepo", "tarpo", "hrpo", "atp_latent"])
def test_weight_decay_spares_biases_norms_embeddings_and_the_mode(tiny_model, method):
    cfg = TrainConfig(weight_decay=0.1, learning_rate=1e-3, head_learning_rate=1e-2)
    mode = build_mode(method, cfg, tiny_model.config.hidden_size)
    got = group_contents(optimizer_groups(tiny_model, mode, cfg), tiny_model, mode)
    expected = {"policy": (DECAYED, 1e-3, 0.1), "policy_no_decay": (EXEMPT, 1e-3, 0.0)}
    if HEADS[method]:
        expected["head_no_decay"] = (HEADS[method], 1e-2, 0.0)
    assert got == expected
    n_trainable = sum(1 for _ in tiny_model.parameters()) + sum(1 for _ in mode.parameters())
    assert sum(len(params) for params, _, _ in got.values()) == n_trainable  # each parameter exactly once


def test_weight_decay_groups_with_lora(tiny_model):
    from tarpo.policy import add_lora

    cfg = TrainConfig(weight_decay=0.1, learning_rate=1e-3, head_learning_rate=1e-2)
    model = add_lora(tiny_model, cfg)
    mode = build_mode("tarpo", cfg, tiny_model.config.hidden_size)
    got = group_contents(optimizer_groups(model, mode, cfg), model, mode)
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all(".lora_A." in n or ".lora_B." in n for n in lora)
    # adapters are matrices without biases: all decayed, frozen base weights in no group
    assert got["policy"] == (sorted(f"model.{n}" for n in lora), 1e-3, 0.1)
    assert set(got) == {"policy", "head_no_decay"} and got["head_no_decay"][2] == 0.0


def test_trainer_optimiser_uses_the_decay_groups(prepared, tmp_path):
    trainer = make(prepared, tmp_path, "hrpo", weight_decay=0.05)
    groups = [{**g, "lr": g["initial_lr"]} for g in trainer.optimizer.param_groups]  # lr itself is 0 in warmup
    assert group_contents(groups, trainer.model, trainer.mode) == {
        "policy": (DECAYED, 1e-3, 0.05), "policy_no_decay": (EXEMPT, 1e-3, 0.0),
        "head_no_decay": (HEADS["hrpo"], 1e-2, 0.0),
    }


def unequal_rewards(trainer):
    """Fixed, unequal rewards (0, 1, 2, 0, ...): non-zero advantages whatever the tiny model answers."""
    trainer.rewards = lambda rollout, texts, records, checked: (torch.arange(len(texts), dtype=torch.float32) % 3, {})


def equal_rewards(trainer):
    """Every completion rewarded alike: every advantage is exactly 0."""
    trainer.rewards = lambda rollout, texts, records, checked: (torch.ones(len(texts)), {})


def assert_reference_is_the_initial_policy(trainer, before):
    """The frozen reference model (if any) and reference router are bit-identical to the policy before training."""
    frozen = [("mode", trainer.ref_mode)] + ([("model", trainer.ref_model)] if trainer.ref_model is not None else [])
    for prefix, module in frozen:
        named = dict(module.named_parameters())
        assert {f"{prefix}.{n}" for n in named} == {k for k in before if k.startswith(prefix + ".")}
        for name, p in named.items():
            assert torch.equal(p, before[f"{prefix}.{name}"]), f"reference {prefix}.{name} moved"


@pytest.mark.parametrize("method", ["grpo", "hrpo", "lepo", "tarpo"])
def test_training_runs_and_writes_a_loadable_policy(prepared, tmp_path, method):
    from tarpo.policy import load_policy

    trainer = make(prepared, tmp_path, method, steps=2, checkpoint_every=0)  # beta 0.01: a reference model
    unequal_rewards(trainer)
    results, train_step = [], trainer.train_step
    trainer.train_step = lambda: results.append(train_step()) or results[-1]  # run() keeps the last rollout
    before = weights(trainer)
    last = trainer.run()
    out = tmp_path / method / "checkpoint"
    assert (out / "policy.json").exists() and (out / "samples.html").exists()
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    for key in ("reward_mean", "loss", "kl", "token_entropy", "completion_length", "lr", "tokens_per_s"):
        assert key in last and last[key] == last[key]  # present and not NaN
    assert last["grad_norm"] > 0
    if method == "tarpo":
        assert {"soft_ratio", "action_entropy", "head_lr"} <= set(last)
        assert 0.0 <= last["soft_ratio"] <= 1.0
    # every trainable tensor moved: the policy's and the mode's (TARPO's action head, HRPO's gate and Lambda)
    assert sorted(k for k in before if k.startswith("mode.")) == HEADS[method]
    unchanged = [k for k, v in weights(trainer).items() if torch.equal(v, before[k])]
    assert unchanged == []
    assert trainer.ref_model is not None
    assert_reference_is_the_initial_policy(trainer, before)
    if method == "hrpo":  # the logged gate is a = exp(-c softplus(-Lambda) r), by hand on the last rollout
        rollout, mode, c = results[-1].rollout, trainer.mode, trainer.tcfg.hrpo_c
        assert bool(rollout.thinking.any())
        with torch.no_grad():
            e = trainer.model.get_input_embeddings().weight[rollout.tokens[rollout.thinking]]
            r = torch.sigmoid(e @ mode.gate_r.weight.T + mode.gate_r.bias)
            floor = torch.exp(-c * torch.log1p(torch.exp(-mode.log_lambda)))  # a at r = 1
            initial = torch.exp(-c * torch.log1p(torch.exp(-trainer.ref_mode.log_lambda)))
        a = floor ** r
        assert last["mean_gate"] == pytest.approx(float(a.mean()), rel=1e-5)
        assert bool((a > floor).all() and (a < 1).all())  # 0 < r < 1 bounds a between a(r = 1) and 1
        assert bool((initial >= 0.98).all() and (initial <= 0.999).all())  # init: a(r = 1) in [r_min, r_max]
        assert not torch.equal(floor, initial)
    model, _, mode = load_policy(prepared / "backbone", method, trainer.tcfg, out)
    for name, p in mode.named_parameters():
        assert torch.equal(p, trainer.params[f"mode.{name}"].detach())
    for name, p in model.named_parameters():
        assert torch.equal(p, trainer.params[f"model.{name}"].detach())


@pytest.mark.parametrize("head_decay", [None, 0.1], ids=["as_built", "head_decay_forced"])
@pytest.mark.parametrize("method", ["tarpo", "hrpo"])
def test_zero_advantage_moves_only_what_weight_decay_moves(prepared, tmp_path, method, head_decay):
    """Control: every completion rewarded alike (all advantages 0) and beta = 0 give zero gradients, so Adam's
    step is 0 and a parameter moves only by its group's decay, w <- w (1 - lr_t wd) each step. As built, no
    mode parameter (TARPO's action head, HRPO's gate and Lambda) moves, nor the frozen reference router; with
    decay forced on the mode's group (as Lambda and the heads' weights were before) they shrink by exactly that
    factor, Lambda by ~0.05: the control sees decay."""
    trainer = make(prepared, tmp_path, method, steps=4, checkpoint_every=0, beta=0.0, weight_decay=0.1,
                   learning_rate=1e-3, head_learning_rate=3e-2)
    assert trainer.ref_model is None  # beta 0: no reference forward; the initial router is still kept
    if head_decay:
        for g in trainer.optimizer.param_groups:
            if g["name"].startswith("head"):
                g["weight_decay"] = head_decay
    equal_rewards(trainer)
    before = weights(trainer)
    # cosine schedule, 1 warm-up step of 4: lr_t / peak = 0, 1, (1 + cos(pi / 3)) / 2, (1 + cos(2 pi / 3)) / 2
    factors = [0.0, 1.0, 0.75, 0.25]
    for factor in factors:
        lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}  # what this step's update uses
        assert lrs["policy"] == pytest.approx(1e-3 * factor) and lrs["head_no_decay"] == pytest.approx(3e-2 * factor)
        metrics = trainer.train_step().metrics
        assert metrics["reward_std"] == 0.0 and metrics["grad_norm"] == 0.0
    shrink_policy = math.prod(1 - 1e-3 * f * 0.1 for f in factors)
    shrink_head = math.prod(1 - 3e-2 * f * (head_decay or 0.0) for f in factors)
    after = weights(trainer)
    assert sorted(k for k in before if k.startswith("mode.")) == HEADS[method]
    for name, value in before.items():
        if name in DECAYED:
            expected = value * shrink_policy
        elif name.startswith("mode.") and head_decay:
            expected = value * shrink_head
        else:
            moved = float((after[name] - value).abs().max())
            assert moved == 0, f"{name} moved by up to {moved:.3g} with zero advantage and no decay"
            continue
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-12, msg=name)
        assert value.abs().max() == 0 or not torch.equal(after[name], value), name
    assert_reference_is_the_initial_policy(trainer, before)
    if method == "hrpo" and head_decay:  # Lambda in [6, 9] shrinks by (1 - 3e-3)(1 - 2.25e-3)(1 - 7.5e-4) ~ 0.994
        assert float((after["mode.log_lambda"] - before["mode.log_lambda"]).abs().max()) > 0.02


def assert_same_step_in_pieces(prepared, tmp_path, method, keys, **train):
    """One step with the training forward whole (forward_batch 0), in singles and in uneven pieces of 3: the
    weights agree to 1e-6 and the step metrics `keys` to rel 1e-5."""
    results = []
    for forward_batch in (0, 1, 3):
        trainer = make(prepared, tmp_path / str(forward_batch), method, steps=1, checkpoint_every=0,
                       forward_batch=forward_batch, **train)
        unequal_rewards(trainer)
        metrics = trainer.train_step().metrics
        assert metrics["grad_norm"] > 0
        results.append((weights(trainer), metrics))
    (whole, m0), *pieces = results
    for params, metrics in pieces:
        for name, value in whole.items():
            torch.testing.assert_close(params[name], value, rtol=0, atol=1e-6, msg=name)
        for key in keys:
            assert metrics[key] == pytest.approx(m0[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("method,updates", [("grpo", 1), ("tarpo", 2)])
def test_scoring_in_pieces_gives_the_same_update(prepared, tmp_path, method, updates):
    """forward_batch splits the training forward; the loss is a mean over completions, so the step is the same."""
    from tarpo.trainer import forward_pieces

    assert forward_pieces(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)] and forward_pieces(5, 0) == [slice(0, 5)]
    # 4 completions a step: whole, singles, uneven pieces
    assert_same_step_in_pieces(prepared, tmp_path, method, ("loss", "kl", "reward_mean", "grad_norm"),
                               updates_per_batch=updates, clip_eps=0.2)


def test_resume_after_sigterm_gives_the_same_weights(prepared, tmp_path, monkeypatch):
    straight = make(prepared, tmp_path / "straight")
    straight.run()
    expected = weights(straight)

    interrupted = make(prepared, tmp_path / "killed")
    original = GrpoTrainer.train_step

    def step_then_sigterm(self):
        result = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # SLURM preemption arrives mid-run
        return result

    monkeypatch.setattr(GrpoTrainer, "train_step", step_then_sigterm)
    with pytest.raises(SystemExit) as stop:
        interrupted.run()
    assert stop.value.code == EXIT_PREEMPTED
    assert not (tmp_path / "killed" / "tarpo" / "checkpoint").exists()  # never mistaken for finished
    assert latest_checkpoint(interrupted.state_dir).name == "step-000002"
    monkeypatch.setattr(GrpoTrainer, "train_step", original)
    # where versions before per-output state dirs kept it (train_state/{fingerprint}): found, moved, resumed
    shared = interrupted.state_root.parent / interrupted.state_dir.name
    interrupted.state_dir.rename(shared)

    resumed = make(prepared, tmp_path / "killed")
    assert resumed.resume() and resumed.step == 2
    assert not shared.exists() and latest_checkpoint(resumed.state_dir).name == "step-000002"
    resumed = make(prepared, tmp_path / "killed")
    resumed.run()
    for name, value in expected.items():
        assert torch.allclose(weights(resumed)[name], value, atol=1e-6), name
    assert [h["reward_mean"] for h in resumed.history] == [h["reward_mean"] for h in straight.history]


def test_non_finite_losses_are_skipped_then_abort(prepared, tmp_path, monkeypatch):
    import tarpo.trainer as trainer_module

    real = trainer_module.grpo_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 2:  # step 1 is fine, every later loss is NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "grpo_loss", sometimes_nan)
    trainer = make(prepared, tmp_path, steps=8, max_nonfinite_steps=3)
    earlier = open_bars("train ")  # (another test's run may have left one open)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row") as caught:
        trainer.run()
    # the bar is closed though the traceback (held here, as by the CLI printing the error) keeps run()'s frame
    assert not open_bars("train ", besides=earlier), "the CLI's error message would go on the progress bar's line"
    del caught
    assert trainer.nonfinite_total == 3
    assert [round(h["nonfinite_skipped"]) for h in trainer.history] == [0, 1, 2]
    for p in trainer.params.values():
        assert torch.isfinite(p).all()
    for ckpt in trainer.state_dir.glob("step-*"):
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["params"].values())


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(prepared, tmp_path):
    raw = json.loads(json.dumps(SMOKE))
    raw["train"].update(steps=2, checkpoint_every=1)
    out = tmp_path / "tiny" / "tarpo" / "checkpoint"
    env = {**os.environ, "TARPO_TRACKING": "off", "OMP_NUM_THREADS": "1"}
    # --multi_gpu makes accelerate start the processes with torchrun; on a machine without GPUs the trainer's
    # Accelerator(cpu=True) then joins them over gloo (accelerate's --cpu flag would start a single process).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tarpo.cli", "train",
           "--config-json", json.dumps(raw), "--backbone", "tiny", "--method", "tarpo",
           "--backbone-dir", str(prepared / "backbone"), "--data", str(prepared / "data"), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[-1]["world_size"] == 2
    # 2 processes x 2 prompts x group 2 completions were rewarded per step
    assert history[-1]["completions"] == 8


# ---------------------------------------------------------------- resume only the same run, survive bad checkpoints


def interrupt_at(prepared, tmp_path, monkeypatch, step, **train):
    """Run until `step`, then deliver SIGTERM (a checkpoint is written at that step); returns the trainer."""
    original = GrpoTrainer.train_step

    def step_then_sigterm(self):
        result = original(self)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    trainer = make(prepared, tmp_path, **train)
    monkeypatch.setattr(GrpoTrainer, "train_step", step_then_sigterm)
    with pytest.raises(SystemExit):
        trainer.run()
    monkeypatch.setattr(GrpoTrainer, "train_step", original)
    return trainer


def open_bars(prefix: str, besides: list | None = None) -> list:
    """The progress bars still drawn (not closed) whose description starts with `prefix`, other than `besides`."""
    from tqdm import tqdm

    return [bar for bar in list(getattr(tqdm, "_instances", ()))
            if str(bar.desc).startswith(prefix) and not any(bar is other for other in besides or ())]


@pytest.mark.slow
def test_a_preempted_run_closes_its_bar_before_its_message(prepared, tmp_path, monkeypatch, capsys):
    import tarpo.trainer as trainer_module

    bars_at_message = []
    warning = trainer_module.log.warning
    earlier = open_bars("train ")  # (another test's run may have left one open)

    def recording_warning(msg, *args, **kwargs):
        if msg.startswith("SIGTERM"):
            bars_at_message.append(open_bars("train ", besides=earlier))
        warning(msg, *args, **kwargs)

    monkeypatch.setattr(trainer_module.log, "warning", recording_warning)
    interrupt_at(prepared, tmp_path, monkeypatch, 2)
    assert bars_at_message == [[]]  # one message, with no bar left to redraw after it
    out = capsys.readouterr().out
    assert "WARNING tarpo.trainer: SIGTERM: checkpointed tiny/tarpo at step 2; rerun to resume" in out


@pytest.mark.slow
def test_a_config_change_starts_over_and_says_which_key(prepared, tmp_path, monkeypatch, capsys):
    straight = make(prepared, tmp_path / "straight", learning_rate=2e-3)
    straight.run()

    old = interrupt_at(prepared, tmp_path / "changed", monkeypatch, 3)  # learning_rate 1e-3
    assert latest_checkpoint(old.state_dir).name == "step-000003"
    capsys.readouterr()
    new = make(prepared, tmp_path / "changed", learning_rate=2e-3)
    assert new.state_dir != old.state_dir and new.state_dir.parent == old.state_dir.parent
    new.run()
    log = capsys.readouterr().out
    assert "train.learning_rate: 0.001 -> 0.002" in log and "starts over" in log and "resuming" not in log
    # the new learning rate was used from step 1: same weights and lr curve as a run that never saw the old one
    assert [h["lr"] for h in new.history] == [h["lr"] for h in straight.history]
    for name, value in weights(straight).items():
        assert torch.allclose(weights(new)[name], value, atol=1e-6), name
    recorded = json.loads((tmp_path / "changed" / "tarpo" / "checkpoint" / "run.json").read_text())
    assert recorded["train"]["learning_rate"] == 2e-3 and recorded["fingerprint"] == new.state_dir.name


@pytest.mark.slow
def test_fewer_steps_than_an_old_checkpoint_start_over(prepared, tmp_path, monkeypatch):
    interrupt_at(prepared, tmp_path, monkeypatch, 3)  # steps 4, checkpoint at 3
    short = make(prepared, tmp_path, steps=2)
    assert short.resume() is False and short.step == 0
    short.run()
    history = (tmp_path / "tarpo" / "checkpoint" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [1, 2]
    saved = torch.load(tmp_path / "tarpo" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert saved["step"] == 2


@pytest.mark.slow
def test_a_finished_run_leaves_no_train_state_and_a_rerun_retrains(prepared, tmp_path, capsys):
    first = make(prepared, tmp_path)
    first.run()
    assert not first.state_root.exists()
    assert "removed" in capsys.readouterr().out
    # what `--forcerun train` does: the output is deleted, the job runs again, from step 0
    import shutil

    shutil.rmtree(tmp_path / "tarpo" / "checkpoint")
    again = make(prepared, tmp_path)
    assert again.resume() is False
    again.run()
    assert len(again.history) == 4


def test_logging_settings_do_not_change_the_fingerprint(prepared, tmp_path):
    assert make(prepared, tmp_path, checkpoint_every=2).state_dir == make(prepared, tmp_path, log_samples=1).state_dir
    assert make(prepared, tmp_path).state_dir != make(prepared, tmp_path, beta=0.02).state_dir


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garble", "delete_checksum"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(prepared, tmp_path, monkeypatch, capsys, damage):
    straight = make(prepared, tmp_path / "straight")
    straight.run()

    killed = interrupt_at(prepared, tmp_path / "killed", monkeypatch, 3)
    state_dir = killed.state_dir
    assert [p.name for p in sorted(state_dir.glob("step-*"))] == ["step-000002", "step-000003"]
    newest = state_dir / "step-000003" / "trainer_state.pt"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garble":  # same size, loads fine with torch: only the checksum can tell
        middle = len(data) // 2
        newest.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    else:
        (state_dir / "step-000003" / "SHA256SUMS").unlink()
    capsys.readouterr()

    resumed = make(prepared, tmp_path / "killed")
    assert resumed.resume() and resumed.step == 2
    log = capsys.readouterr().out
    assert "step-000003" in log and "unusable" in log and "set aside as corrupt-step-000003" in log
    assert (state_dir / "corrupt-step-000003").is_dir() and not (state_dir / "step-000003").exists()
    resumed = make(prepared, tmp_path / "killed")
    resumed.run()
    for name, value in weights(straight).items():
        assert torch.allclose(weights(resumed)[name], value, atol=1e-6), name


@pytest.mark.slow
def test_every_checkpoint_corrupt_starts_over(prepared, tmp_path, monkeypatch):
    killed = interrupt_at(prepared, tmp_path, monkeypatch, 2, checkpoint_every=1)
    for ckpt in killed.state_dir.glob("step-*"):
        (ckpt / "trainer_state.pt").write_bytes(b"not a checkpoint")
    fresh = make(prepared, tmp_path)
    assert fresh.resume() is False and fresh.step == 0
    assert sorted(p.name for p in killed.state_dir.glob("corrupt-*")) == ["corrupt-step-000001", "corrupt-step-000002"]


@pytest.mark.slow
def test_a_damaged_finished_policy_is_named_not_loaded(prepared, tmp_path):
    from tarpo.config import ConfigError
    from tarpo.io import BadInputError
    from tarpo.policy import load_policy

    trainer = make(prepared, tmp_path, steps=1, checkpoint_every=0)
    trainer.run()
    out = tmp_path / "tarpo" / "checkpoint"
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert {"policy.json", "mode.safetensors", "trainer_state.pt", "run.json"} <= set(listed)
    load_policy(prepared / "backbone", "tarpo", trainer.tcfg, out)  # intact: loads
    with pytest.raises(ConfigError, match="trained as 'tarpo', not 'grpo'"):
        load_policy(prepared / "backbone", "grpo", trainer.tcfg, out)
    mode_file = out / "mode.safetensors"
    mode_file.write_bytes(mode_file.read_bytes()[:100])
    with pytest.raises(BadInputError, match="damaged: mode.safetensors does not match its sha256"):
        load_policy(prepared / "backbone", "tarpo", trainer.tcfg, out)
    (out / "SHA256SUMS").unlink()  # no manifest to check: the load itself fails, with the same kind of message
    with pytest.raises(BadInputError, match="does not load .*retrain it"):
        load_policy(prepared / "backbone", "tarpo", trainer.tcfg, out)


@pytest.mark.slow
def test_atp_latent_runs_from_its_sft_stage(prepared, tmp_path):
    """SFT stage -> RL through the same trainer: no reference model, the reward's parts and the block's
    statistics logged per step, a policy evaluation can load."""
    from tarpo.atp_sft import run_sft
    from tarpo.policy import load_policy

    raw = json.loads(json.dumps(SMOKE))
    raw["methods"] = {"atp_latent": {"atp_max_steps": 4}}
    raw["atp_sft"] = {"steps_per_stage": 1, "latent_steps": 2, "batch_size": 4, "eval_problems": 4}
    cfg = load_config(raw)
    sft = tmp_path / "sft"
    summary = run_sft(cfg, "tiny", prepared / "backbone", prepared / "data", sft)
    assert summary["steps"] == 4 * 1 + 2 and (sft / "decoder" / "config.json").exists()
    assert set(summary["checks"]) >= {"decoded_step_exact_match", "stop_accuracy", "pass_at_1", "coherence"}
    trainer = GrpoTrainer(cfg, "tiny", "atp_latent", sft, prepared / "data", tmp_path / "atp" / "checkpoint")
    assert trainer.ref_model is None and trainer.tcfg.beta == 0 and trainer.tcfg.advantage_eps == 1e-8
    last = trainer.run()
    for key in ("coherence", "accuracy", "format", "active_latents", "stop_rate", "reward_mean"):
        assert key in last and 0.0 <= last[key] <= 8.0, key
    model, tok, mode = load_policy(sft, "atp_latent", trainer.tcfg, tmp_path / "atp" / "checkpoint")
    assert mode.special_ids and len(tok) == model.get_input_embeddings().weight.shape[0]


@pytest.mark.compile
def test_compiled_decoding_reaches_the_training_rollout(prepared, tmp_path):
    """`train.compile_decode` samples on the compiled static-cache path: same completions as eager (fp32)."""
    from tarpo import decode

    decode.clear_cache()
    rollouts = {}
    for compiled in (False, True):
        trainer = make(prepared, tmp_path / str(compiled), "grpo", steps=1, checkpoint_every=0, compile_decode=compiled)
        rollouts[compiled], *_ = trainer.sample(0)
        assert bool(decode._DECODERS) == compiled
    torch.testing.assert_close(rollouts[True].tokens, rollouts[False].tokens, rtol=0, atol=0)
    torch.testing.assert_close(rollouts[True].valid, rollouts[False].valid, rtol=0, atol=0)
    decode.clear_cache()


# ---------------------------------------------------------------- loss types and dynamic sampling (issue 25)


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "dr_grpo"])
def test_token_sum_loss_types_give_the_same_update_in_pieces(prepared, tmp_path, loss_type):
    """Two micro-batches scored whole or in pieces: the token-sum losses divide by a count fixed for the step
    (dapo, dr_grpo) or the micro-batch (bnpo), never by a piece's own, so the step is the same."""
    assert_same_step_in_pieces(prepared, tmp_path, "tarpo", ("loss",), grad_accum=2, updates_per_batch=2,
                               clip_eps=0.2, epsilon_high=0.28, loss_type=loss_type,
                               scale_rewards="batch" if loss_type == "bnpo" else "group")


def test_dapo_divides_by_the_whole_steps_tokens(prepared, tmp_path, monkeypatch):
    """With 2 micro-batches every loss call gets the step's valid-token count (one big batch), and truncated
    completions (mask_truncated_completions) leave both the loss and that count."""
    import tarpo.trainer as trainer_module
    from tarpo.rollout import truncated

    seen = []
    original = trainer_module.grpo_loss

    def spy(*args, **kwargs):
        seen.append((kwargs["normalizer"], args[4].clone()))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "grpo_loss", spy)
    trainer = make(prepared, tmp_path, "grpo", steps=1, checkpoint_every=0, grad_accum=2, loss_type="dapo",
                   mask_truncated_completions=True, max_new_tokens=6)
    unequal_rewards(trainer)
    collected = []
    sample = trainer.sample
    trainer.sample = lambda micro: collected.append(sample(micro)) or collected[-1]
    trainer.train_step()
    rollouts = [c[0] for c in collected]
    cut = torch.cat([truncated(r, trainer.eos_ids) for r in rollouts])
    assert bool(cut.any())  # 6 tokens: some completions are cut
    kept_tokens = sum(float((r.valid & ~truncated(r, trainer.eos_ids).unsqueeze(1)).sum()) for r in rollouts)
    assert [n for n, _ in seen] == [max(kept_tokens, 1.0)] * 2
    for (_, valid), r in zip(seen, rollouts):  # the loss never sees a cut completion's positions
        assert not bool(valid[truncated(r, trainer.eos_ids)].any())


def scripted_rewards(trainer, script):
    """Rewards handed out draw by draw from `script` (a list of lists); records every call."""
    calls = []

    def rewards(rollout, texts, records, checked):
        calls.append([r["question"] for r in records])
        return torch.tensor(script[len(calls) - 1], dtype=torch.float32), {}

    trainer.rewards = rewards
    return calls


def test_dynamic_sampling_drops_uniform_groups_and_draws_more(prepared, tmp_path):
    from tarpo.data.batching import batch_indices

    trainer = make(prepared, tmp_path, "grpo", steps=2, checkpoint_every=0, dynamic_sampling=True)
    # draw 0: group 0 all right (dropped), group 1 mixed; draw 1: group 0 mixed, group 1 not needed
    calls = scripted_rewards(trainer, [[1, 1, 0, 1], [1, 0, 0, 0]])
    result = trainer.train_step()
    m = result.metrics
    assert (m["groups_drawn"], m["groups_kept"], m["rollouts"], m["draws"]) == (4.0, 2.0, 8.0, 2.0)
    assert m["reward_mean"] == pytest.approx(4 / 8) and m["reward_mean_kept"] == pytest.approx(2 / 4)
    assert trainer.draws == 2  # the stream moved on by two draws
    # the kept groups: draw 0's second prompt, then draw 1's first, from the same seeded stream
    first, second = (batch_indices(len(trainer.records), 0, d, 0, 1, 1, 0, 2) for d in (0, 1))
    trainer_questions = [trainer.records[i]["question"] for i in (first[1], second[0])]
    assert [calls[0][2], calls[1][0]] == trainer_questions
    # each draw's kept groups form a micro-batch; the step's result shows the last one
    assert [r["question"] for r in result.records] == [trainer_questions[1]] * 2
    assert result.rewards.tolist() == [1.0, 0.0]
    # the next step starts where this one stopped: draw 2
    scripted_rewards(trainer, [[0, 1, 1, 0]])
    trainer.train_step()
    assert trainer.draws == 3


def test_dynamic_sampling_cap_trains_on_what_it_kept(prepared, tmp_path, caplog):
    trainer = make(prepared, tmp_path, "grpo", steps=2, checkpoint_every=0, dynamic_sampling=True,
                   dynamic_sampling_max_draws=2)
    scripted_rewards(trainer, [[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])  # one informative group in 3 draws
    with caplog.at_level("WARNING", logger="tarpo.trainer"):
        m = trainer.train_step().metrics
    assert (m["groups_drawn"], m["groups_kept"], m["rollouts"], m["draws"]) == (6.0, 1.0, 12.0, 3.0)
    assert m["completions"] == 2.0 and m["grad_norm"] > 0
    assert "kept 1/2 informative groups after 3 draws" in caplog.text
    # nothing informative at all: the last draw is trained on as it is (zero advantages)
    equal_rewards(trainer)
    m = trainer.train_step().metrics
    assert (m["groups_kept"], m["draws"], m["completions"]) == (0.0, 3.0, 4.0)
    assert trainer.draws == 6


def content_rewards(self, rollout, texts, records, checked):
    """GrpoTrainer.rewards from the question alone (so a resumed run sees the same): a group is uniform when its
    question's length is even, mixed (0, 1, ...) otherwise."""
    even = [len(r["question"]) % 2 == 0 for r in records]
    return torch.tensor([1.0 if e else float(i % 2) for i, e in enumerate(even)]), {}


def test_dynamic_sampling_resumes_bitwise(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(GrpoTrainer, "rewards", content_rewards)
    train = {"dynamic_sampling": True, "loss_type": "dapo", "steps": 4}
    straight = make(prepared, tmp_path / "straight", **train)
    straight.run()
    assert all("groups_drawn" in h for h in straight.history)
    assert sum(h["groups_drawn"] for h in straight.history) > sum(h["groups_kept"] for h in straight.history)
    saved = [json.loads(line) for line in (tmp_path / "straight" / "tarpo" / "checkpoint" / "metrics.jsonl").open()]
    assert [r["groups_kept"] for r in saved] == [h["groups_kept"] for h in straight.history]

    interrupt_at(prepared, tmp_path / "killed", monkeypatch, 2, **train)
    resumed = make(prepared, tmp_path / "killed", **train)
    assert resumed.resume() and resumed.step == 2 and resumed.draws == sum(h["draws"] for h in straight.history[:2])
    resumed.run()
    for name, value in weights(straight).items():
        assert torch.equal(weights(resumed)[name], value), name
    keys = ("reward_mean", "groups_drawn", "groups_kept", "rollouts", "draws", "loss")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in straight.history]


@pytest.mark.slow
def test_two_runs_whose_outputs_share_a_parent_keep_their_own_state(prepared, tmp_path, monkeypatch, capsys):
    """Hand-run trainings with --out shared/a and --out shared/b: b finishing never deletes a's checkpoints."""
    cfg = load_config(json.loads(json.dumps(SMOKE)))

    def trainer(name: str) -> GrpoTrainer:
        return GrpoTrainer(cfg, "tiny", "tarpo", prepared / "backbone", prepared / "data", tmp_path / "shared" / name)

    original = GrpoTrainer.train_step

    def step_then_sigterm(self):
        result = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(GrpoTrainer, "train_step", step_then_sigterm)
    killed = trainer("a")
    with pytest.raises(SystemExit):
        killed.run()
    monkeypatch.setattr(GrpoTrainer, "train_step", original)
    b = trainer("b")
    assert b.state_dir != killed.state_dir and b.resume() is False  # same configuration, yet not a's state
    b.run()
    assert not b.state_root.exists()
    assert latest_checkpoint(killed.state_dir).name == "step-000002"  # a's state survived b's cleanup
    assert killed.state_root == tmp_path / "shared" / "train_state" / "a"
    resumed = trainer("a")
    assert resumed.resume() and resumed.step == 2
    resumed.run()
    assert not (tmp_path / "shared" / "train_state").exists()  # the last run to finish removes train_state/ too


def test_a_random_router_trains_the_policy_and_leaves_its_frozen_head_alone(prepared, tmp_path):
    """TARPO's control arm: the policy learns (unequal rewards move its weights), the coin's head never moves
    and holds no optimiser state, and the action term's log-ratios are exactly 0 (constant log-probs)."""
    trainer = make(prepared, tmp_path, "tarpo", action_router="random", random_soft_ratio=0.3, steps=2)
    unequal_rewards(trainer)
    head = {n: p.detach().clone() for n, p in trainer.mode.named_parameters()}
    policy = {k: v for k, v in weights(trainer).items() if not k.startswith("mode.")}
    assert "head_no_decay" not in {g["name"] for g in trainer.optimizer.param_groups}
    trainer.run()
    assert all(torch.equal(p, head[n]) for n, p in trainer.mode.named_parameters())
    after = weights(trainer)
    assert any(not torch.equal(after[k], v) for k, v in policy.items())
    assert not any(k.startswith("mode.") for k in after)  # the head is not a trainable parameter
    assert len(trainer.history) == 2 and all(h["soft_ratio"] > 0 for h in trainer.history)
    assert all(h["action_kl"] == 0.0 for h in trainer.history)  # the same coin in policy and reference
