"""`tarpo evaluate` end to end on a tiny random backbone: metrics vs samples, resume, torn partial files, modes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import tarpo.evaluate as ev
import tarpo.sampling as sampling
from tarpo.config import ConfigError, TinyModelConfig, TrainConfig, load_config
from tarpo.metrics import mean_pass_at_k
from tarpo.rewards import extract_answer

CONFIG = {
    "name": "test",
    # "length": the problems the expectations below were written for (the "order" shift draws other ones)
    "datasets": {"synthetic": {"n_train": 40, "n_test_id": 8, "n_test_ood": 8, "ood_shift": "length"}},
    "backbones": {"tiny": {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                                     "intermediate_size": 64, "vocab_size": 300}}},
    "methods": {"grpo": {}, "hrpo": {}, "lepo": {}, "tarpo": {}},
    "train": {"adapter": "full", "max_new_tokens": 10, "soft_top_k": 4, "lepo_top_k": 4, "action_bias_hard": 0.0},
    # 8 problems in batches of 3: two full batches and a short one
    "evaluate": {"k": 4, "batch_size": 3, "max_new_tokens": 10, "temperature": 1.0},
}
VOLATILE = {"wall_seconds", "resumed_problems", "checkpoint", "machine"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared synthetic data and a randomly initialised tiny backbone (no warm start: fast)."""
    from tarpo.backbone import build_tiny_model, build_tokenizer, tokenizer_corpus
    from tarpo.data.synthetic import generate_split, prepare_dataset

    root = tmp_path_factory.mktemp("evaluate")
    cfg = load_config(CONFIG)
    prepare_dataset(cfg.datasets["synthetic"], root / "data" / "synthetic")
    tokenizer = build_tokenizer(tokenizer_corpus(generate_split(cfg.datasets["synthetic"], "train")), vocab_size=300)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(**CONFIG["backbones"]["tiny"]["model"]), tokenizer)
    model.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    return root


def config(**evaluate):
    raw = json.loads(json.dumps(CONFIG))
    raw["evaluate"].update(evaluate)
    return load_config(raw)


def run(prepared, out_dir: Path, method="cot", checkpoint=None, benchmark="synthetic_test_id", cfg=None):
    out = out_dir / "tiny" / method / "eval" / f"{benchmark}.json"
    metrics = ev.evaluate(cfg or config(), backbone="tiny", method=method, backbone_dir=prepared / "backbone",
                          checkpoint=checkpoint, benchmark=benchmark, data_root=prepared / "data", out_json=out)
    return metrics, out


def read_samples(out_json: Path) -> list[dict]:
    return [json.loads(line) for line in ev.output_paths(out_json)["samples"].read_text().splitlines()]


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def fake_reward(completion, gold, kind="math", **kw):
    """Pseudo-random but deterministic correctness, so pass@k sees every count from 0 to k."""
    return float(hashlib.sha256(completion.encode()).digest()[0] % 3 == 0)


def test_smoke_evaluation_json_agrees_with_its_samples(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "reward", fake_reward)
    metrics, out = run(prepared, tmp_path)
    written = json.loads(out.read_text())
    assert stable(written) == stable(json.loads(json.dumps(metrics)))
    rows = read_samples(out)
    paths = ev.output_paths(out)
    assert paths["html"].exists() and not paths["partial"].exists()

    assert written["n_problems"] == 8 and written["k"] == 4 and len(rows) == 32
    assert [(r["problem_index"], r["sample"]) for r in rows] == [(p, s) for p in range(8) for s in range(4)]
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
        assert row["correct"] == bool(fake_reward(row["completion"], row["gold"]))
        assert row["extracted"] == extract_answer(row["completion"])
        assert row["n_tokens"] == len(row["soft"]) == len(row["token_ids"]) and 1 <= row["n_tokens"] <= 10
        assert set(row["soft"]) <= {0} and 0 <= row["n_thinking"] <= row["n_tokens"]  # cot never goes soft
    counts = [(len(v), sum(r["correct"] for r in v)) for v in by_problem.values()]
    assert written["pass@1"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    for j in (1, 2, 4):
        assert written[f"pass@{j}"] == pytest.approx(mean_pass_at_k(counts, j))
    assert "pass@8" not in written
    assert 0 < written["pass@1"] < written["pass@4"] < 1  # the fake reward gives mixed groups
    assert written["mean_tokens"] == pytest.approx(sum(r["n_tokens"] for r in rows) / len(rows))
    assert written["kind"] == "math" and written["distribution"] == "id" and written["ood"] is False
    assert written["temperature"] == 1.0 and written["max_new_tokens"] == 10 and written["wall_seconds"] > 0
    assert "soft_ratio" not in written and "mean_gate" not in written
    # what the statistics need: correct samples per problem id, and each pass@j's interval around it
    assert written["correct_per_problem"] == {pid: sum(r["correct"] for r in v) for pid, v in by_problem.items()}
    assert list(written["correct_per_problem"]) == list(by_problem)  # in the benchmark's order
    assert written["tokens_per_problem"] == {pid: pytest.approx(sum(r["n_tokens"] for r in v) / 4)
                                             for pid, v in by_problem.items()}
    assert written["machine"]["cpus"] >= 1 and written["machine"]["torch"] == torch.__version__
    for j in (1, 2, 4):
        low, high = written["ci95"][f"pass@{j}"]
        assert 0 <= low <= written[f"pass@{j}"] <= high <= 1 and low < high
    # synthetic records carry their gold steps: every sample's chain is checked
    assert all(isinstance(r["chain_ok"], bool) for r in rows)
    lucky = sum(r["correct"] and not r["chain_ok"] for r in rows)
    assert written["lucky_samples"] == lucky == sum(written["lucky_per_problem"].values())
    assert written["lucky_share"] == pytest.approx(lucky / sum(r["correct"] for r in rows))


def test_lucky_share_counts_correct_samples_with_a_wrong_chain():
    gold = "5 + 3 = 8. 8 - 2 = 6. #### 6"
    rows = [[{"problem_id": "a", "correct": True, "chain_ok": True, "n_tokens": 5, "n_thinking": 4},
             {"problem_id": "a", "correct": True, "chain_ok": False, "n_tokens": 5, "n_thinking": 4}],
            [{"problem_id": "b", "correct": True, "chain_ok": False, "n_tokens": 5, "n_thinking": 4},
             {"problem_id": "b", "correct": False, "chain_ok": False, "n_tokens": 5, "n_thinking": 4}]]
    metrics = ev.summarise(rows, k=2)
    assert metrics["lucky_share"] == pytest.approx(2 / 3) and metrics["lucky_per_problem"] == {"a": 1, "b": 1}
    assert metrics["correct_per_problem"] == {"a": 2, "b": 1}
    # t interval, 1 df: 0.75 +- 12.7 x 0.25, clipped
    assert metrics["pass@1"] == pytest.approx(0.75) and metrics["ci95"]["pass@1"] == [0.0, 1.0]
    # no gold chain (chain_ok null): no lucky_share at all
    for problem in rows:
        for row in problem:
            row["chain_ok"] = None
    assert "lucky_share" not in ev.summarise(rows, k=2) and "lucky_per_problem" not in ev.summarise(rows, k=2)
    from tarpo.rewards import chain_correct

    assert chain_correct("5 + 3 = 9. 9 - 3 = 6. #### 6", gold) is False


def test_atp_latent_chain_is_the_decoders_reading_of_its_latents():
    """ATP-Latent's completion is the answer alone; its chain is judged on the decoded latent steps, so a right
    answer after wrongly decoded steps counts as lucky and one after the gold steps does not."""
    from tarpo.rewards import chain_correct

    gold = "5 + 3 = 8. 8 - 2 = 6. #### 6"
    good = {"completion": "#### 6", "latent_steps": ["5 + 3 = 8.", "8 - 2 = 6."]}
    slipped = {"completion": "#### 6", "latent_steps": ["5 + 3 = 9.", "9 - 3 = 6."]}
    assert ev.reasoning_text(good) == "5 + 3 = 8. 8 - 2 = 6. #### 6"
    assert chain_correct(ev.reasoning_text(good), gold) is True
    assert chain_correct(ev.reasoning_text(slipped), gold) is False
    assert chain_correct(ev.reasoning_text({"completion": "#### 6", "latent_steps": []}), gold) is False
    plain = {"completion": "5 + 3 = 8. 8 - 2 = 6. #### 6"}  # every other method: the completion as it is
    assert ev.reasoning_text(plain) == plain["completion"] and chain_correct(ev.reasoning_text(plain), gold) is True


def test_resumed_evaluation_equals_an_uninterrupted_one(prepared, tmp_path, monkeypatch):
    straight, straight_out = run(prepared, tmp_path / "straight")

    real = ev.sample_batch
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "sample_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(prepared, tmp_path / "killed")
    killed_out = tmp_path / "killed" / "tiny" / "cot" / "eval" / "synthetic_test_id.json"
    partial = ev.output_paths(killed_out)["partial"]
    assert not killed_out.exists() and partial.exists()
    assert len(partial.read_text().splitlines()) == 1 + 3 * 4  # header + the first batch's problems

    monkeypatch.setattr(ev, "sample_batch", real)
    resumed, _ = run(prepared, tmp_path / "killed")
    assert resumed["resumed_problems"] == 3
    assert stable(resumed) == stable(straight)
    assert read_samples(killed_out) == read_samples(straight_out)
    assert not partial.exists()


def test_torn_partial_lines_are_dropped_and_the_batch_regenerated(prepared, tmp_path, monkeypatch):
    straight, straight_out = run(prepared, tmp_path / "straight")
    real = ev.sample_batch
    calls = {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "sample_batch", dies_on_third_batch)
    with pytest.raises(RuntimeError):
        run(prepared, tmp_path / "torn")
    monkeypatch.setattr(ev, "sample_batch", real)
    out = tmp_path / "torn" / "tiny" / "cot" / "eval" / "synthetic_test_id.json"
    partial = ev.output_paths(out)["partial"]
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 6 * 4
    # The kill landed in the middle of writing the second batch: its last problem lost two
    # samples and the final line is cut in half.
    partial.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])

    resumed, _ = run(prepared, tmp_path / "torn")
    assert resumed["resumed_problems"] == 5  # problem 6 was incomplete: sampled again with its batch
    assert stable(resumed) == stable(straight)
    assert read_samples(out) == read_samples(straight_out)


def test_a_partial_file_from_other_settings_is_not_reused(prepared, tmp_path, monkeypatch):
    real = ev.sample_batch
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "sample_batch", dies_on_second_batch)
    with pytest.raises(RuntimeError):
        run(prepared, tmp_path / "a", cfg=config(temperature=0.7))
    monkeypatch.setattr(ev, "sample_batch", real)
    metrics, _ = run(prepared, tmp_path / "a")  # temperature 1.0 now: nothing may be kept
    assert metrics["resumed_problems"] == 0 and metrics["temperature"] == 1.0


def _save_fresh_policy(prepared, tmp_path, method: str) -> Path:
    """A 'trained' checkpoint: the backbone with a freshly initialised mode (TARPO: bias 0, ~50% soft)."""
    from tarpo.backbone import load_backbone
    from tarpo.methods import build_mode
    from tarpo.policy import save_policy

    model, _ = load_backbone(prepared / "backbone", dtype=torch.float32)
    cfg = load_config(CONFIG)
    tcfg: TrainConfig = cfg.train_config("tiny", method)
    torch.manual_seed(1)
    mode = build_mode(method, tcfg, model.config.hidden_size)
    checkpoint = tmp_path / "tiny" / method / "checkpoint"
    checkpoint.mkdir(parents=True)
    save_policy(model, mode, tcfg, method, checkpoint)
    return checkpoint


@pytest.mark.parametrize("method", ["tarpo", "lepo", "hrpo"])
def test_latent_modes_report_their_statistics(prepared, tmp_path, method):
    checkpoint = _save_fresh_policy(prepared, tmp_path, method)
    metrics, out = run(prepared, tmp_path, method=method, checkpoint=checkpoint)
    rows = read_samples(out)
    thinking = sum(r["n_thinking"] for r in rows)
    assert thinking > 0
    for row in rows:  # soft steps only ever in the thinking phase (a prefix of the completion)
        assert all(t < row["n_thinking"] for t, s in enumerate(row["soft"]) if s)
    if method in ("tarpo", "lepo"):
        soft = sum(sum(r["soft"]) for r in rows)
        assert metrics["soft_ratio"] == pytest.approx(soft / thinking)
        assert 0.0 < metrics["soft_ratio"] <= 1.0
        if method == "lepo":
            assert metrics["soft_ratio"] == 1.0  # every thinking step is a relaxed sample
        else:
            assert metrics["soft_ratio"] < 1.0  # bias 0: the router mixes hard and soft steps
        assert 'class="tok soft"' in ev.output_paths(out)["html"].read_text()
        assert "mean_gate" not in metrics
    else:
        assert 0.97 < metrics["mean_gate"] < 1.0  # HRPO's gate starts almost fully explicit
        assert "soft_ratio" not in metrics


def test_checkpoint_rules_and_missing_data(prepared, tmp_path):
    from tarpo.io import MissingInputError

    with pytest.raises(ConfigError, match="--checkpoint"):
        run(prepared, tmp_path, method="tarpo")
    with pytest.raises(MissingInputError, match="tarpo prepare"):
        ev.evaluate(config(), backbone="tiny", method="cot", backbone_dir=prepared / "backbone", checkpoint=None,
                    benchmark="synthetic_test_ood", data_root=tmp_path / "nowhere", out_json=tmp_path / "x.json")


@pytest.mark.slow
def test_metrics_attach_to_the_training_run(prepared, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tarpo.tracking import start_run

    # The default store, results/mlflow.db (artifacts in results/mlruns), under a scratch working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TARPO_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    with start_run("test", "tiny/tarpo/train") as tracker:
        run_id = tracker.run_id
    checkpoint = _save_fresh_policy(prepared, tmp_path, "tarpo")
    (checkpoint / "run_id.txt").write_text(f"{run_id}\n")
    metrics, _ = run(prepared, tmp_path, method="tarpo", checkpoint=checkpoint, cfg=config(max_problems=3))
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert logged["eval/synthetic_test_id/pass_at_1"] == pytest.approx(metrics["pass@1"])
    assert logged["eval/synthetic_test_id/soft_ratio"] == pytest.approx(metrics["soft_ratio"])
    assert any((tmp_path / "results" / "mlruns").rglob("synthetic_test_id.html"))  # the trajectories, as an artifact


def test_code_evaluation_records_the_sandbox_layers(prepared, tmp_path):
    from tarpo.sandbox import isolation_report

    cfg = config(max_problems=2, k=1, max_new_tokens=8)
    metrics, out = run(prepared, tmp_path, benchmark="humaneval", cfg=cfg)
    written = json.loads(out.read_text())
    assert written["sandbox"] == isolation_report() and isinstance(written["sandbox"]["weak"], bool)
    assert written["n_problems"] == 2
    synthetic, _ = run(prepared, tmp_path, benchmark="synthetic_test_id", cfg=config(max_problems=2, k=1))
    assert "sandbox" not in synthetic  # only code is run in the sandbox


@pytest.mark.compile
def test_compiled_decoding_samples_what_eager_decoding_samples(prepared, tmp_path):
    """`evaluate.compile_decode` reaches the rollout: same samples as the eager reference (fp32, fixed seed)."""
    from tarpo import decode

    decode.clear_cache()
    eager, eager_out = run(prepared, tmp_path / "eager", cfg=config(batch_size=4))
    assert not decode._DECODERS  # the eager path builds no static decoder
    compiled, compiled_out = run(prepared, tmp_path / "compiled", cfg=config(batch_size=4, compile_decode=True))
    assert any(d.compiled for d in decode._DECODERS.values())
    decode.clear_cache()
    assert compiled["compile_decode"] is True and eager["compile_decode"] is False
    keys = ("problem_id", "sample", "token_ids", "completion", "correct")
    assert ([{k: r[k] for k in keys} for r in read_samples(compiled_out)]
            == [{k: r[k] for k in keys} for r in read_samples(eager_out)])
    assert compiled["pass@1"] == eager["pass@1"]


def test_a_damaged_store_costs_no_result_and_tracking_comes_after_the_files(prepared, tmp_path, monkeypatch, caplog):
    import logging

    from tarpo import tracking

    monkeypatch.chdir(tmp_path)  # the default store, results/mlflow.db, under a scratch working directory
    monkeypatch.setenv("TARPO_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mlflow.db").write_bytes(b"garbage " * 64)
    written_first = []
    log_evaluation = tracking.log_evaluation

    def spy(*args, **kwargs):  # what is on disk when the evaluation is tracked
        json_file = Path(kwargs["artifacts"][0]).with_name("synthetic_test_id.json")
        written_first.append(json_file.exists() and all(Path(p).exists() for p in kwargs["artifacts"]))
        return log_evaluation(*args, **kwargs)

    monkeypatch.setattr(tracking, "log_evaluation", spy)
    with caplog.at_level(logging.WARNING, logger="tarpo.tracking"):
        metrics, out = run(prepared, tmp_path, cfg=config(max_problems=2))
    assert written_first == [True]
    assert json.loads(out.read_text())["pass@1"] == metrics["pass@1"]
    from tarpo.provenance import source_digest

    assert json.loads(out.read_text())["code"]["source_sha256"] == source_digest()  # the result knows its code
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is unusable (not an SQLite database (damaged); set aside as" in warnings[0]
    assert "tarpo track --replay --results results" in warnings[0]
    [record] = [json.loads(line) for line in (tmp_path / "results" / tracking.PENDING_FILE).read_text().splitlines()]
    assert record["kind"] == "evaluation" and record["metrics"]["pass@1"] == metrics["pass@1"]
