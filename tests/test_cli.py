"""The command line: help with descriptions and examples, choices, --version, what prepare says, log format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tarpo import __version__
from tarpo.cli import build_parser, main
from tarpo.methods import method_names

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["check", "methods", "schema", "prepare", "backbone", "atp-sft", "train", "evaluate", "router-probe",
               "router-figure", "summarise", "ablations", "tune-report", "track"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) tarpo\.[\w.]+: ")


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"tarpo {__version__}"


def test_the_subcommand_list_here_is_the_parser_s():  # a new subcommand gets the help checks below too
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


def test_top_level_help_lists_every_subcommand_with_an_example(capsys):
    out = _help(capsys)
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", out, re.M), name
    assert "example:" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_a_description_and_an_example(capsys, name):
    out = _help(capsys, name)
    usage, _, rest = out.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert len(description.split()) >= 8, description  # a sentence, not just the usage line
    example = out.split("example:\n", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"tarpo {name}")
    # the example parses (as far as argparse is concerned)
    build_parser().parse_args(example.split()[1:])


def test_method_choices_are_listed_and_enforced(capsys):
    train = _help(capsys, "train")
    trained = method_names(trained=True)
    assert "{" + ",".join(trained) + "}" in train
    assert "cot" in _help(capsys, "evaluate").split("--method", 1)[1].split("--backbone-dir")[0]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--backbone", "b", "--method", "grpoo", "--backbone-dir", "x", "--data", "y", "--out", "z"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'grpoo'" in err and "'tarpo'" in err and "'atp_latent'" in err


def test_benchmark_choices_are_listed_and_enforced(capsys):
    from tarpo.data.benchmarks import EVAL_BENCHMARKS, TRAIN_SETS

    out = " ".join(_help(capsys, "evaluate").split())
    for name in (*EVAL_BENCHMARKS, "DATASET_test_id", "DATASET_test_ood"):
        assert name in out, name
    for name in TRAIN_SETS:  # training sets are not evaluated (the config check says so too)
        assert name not in out.split("--benchmark", 1)[1].split("--data-root")[0], name
    argv = ["evaluate", "--backbone", "b", "--method", "cot", "--backbone-dir", "x", "--out", "y", "--benchmark"]
    assert build_parser().parse_args([*argv, "gsm8k"]).benchmark == "gsm8k"
    assert build_parser().parse_args([*argv, "arith_test_ood"]).benchmark == "arith_test_ood"  # a config's dataset
    for wrong in ("gsm8kk", "gsm8k_train"):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, wrong])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --benchmark: invalid choice: '{wrong}'" in err
        assert "'math500'" in err and "'humaneval'" in err and "'DATASET_test_id'" in err


def test_prepare_says_what_it_wrote_in_timestamped_log_lines(tmp_path, capsys):
    out_dir = tmp_path / "data"
    assert main(["prepare", "--config", str(REPO / "config" / "smoke.yaml"), "--out", str(out_dir)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    said = lines[-1]
    assert "INFO tarpo.cli: synthetic: wrote " in said
    for split in ("train", "val", "test_id", "test_ood"):
        n = len((out_dir / f"{split}.jsonl").read_text().splitlines())
        assert n > 0 and f"{out_dir / split}.jsonl ({n} problems)" in said, split


def test_a_config_error_is_one_line_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config" / "smoke.yaml").read_text().replace("train:\n", "trian:\n", 1))
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tarpo: config error:") and "trian" in err and len(err.splitlines()) == 1


def test_a_loaded_model_draws_no_weight_loading_bar(tiny_model, tmp_path, capfd):
    """transformers draws a "Loading weights" bar per from_pretrained (some 22 per pipeline run); tarpo turns it off."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    tiny_model.save_pretrained(tmp_path / "model")
    hf_logging.enable_progress_bar()  # as a fresh process starts
    try:
        AutoModelForCausalLM.from_pretrained(tmp_path / "model")
        assert "Loading" in capfd.readouterr().err  # the bar this test is about (else the test proves nothing)
        assert main(["check", "--config", str(REPO / "config" / "smoke.yaml")]) == 0
        AutoModelForCausalLM.from_pretrained(tmp_path / "model")
        captured = capfd.readouterr()
        assert "Loading" not in captured.err and "Loading" not in captured.out
    finally:
        hf_logging.disable_progress_bar()


def test_check_prints_its_one_line_summary_on_stdout(capsys):
    # the one stdout line that is not a log record: `tarpo check`'s answer (as `snakemake -n` users read it)
    assert main(["check", "--config", str(REPO / "config" / "smoke.yaml")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{REPO / 'config' / 'smoke.yaml'}: ok (") and len(out.splitlines()) == 1


# ------------------------------------------------------------------ a full disk, from every subcommand


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The smoke config's synthetic data and tiny backbone, once for the module."""
    from tarpo.backbone import build_backbone
    from tarpo.config import load_config
    from tarpo.data.synthetic import prepare_dataset

    root = tmp_path_factory.mktemp("built")
    cfg = load_config(REPO / "config" / "smoke.yaml")
    prepare_dataset(cfg.datasets["synthetic"], root / "data" / "synthetic")
    build_backbone(cfg, "tiny", root / "data" / "synthetic", root / "backbone")
    return root


def _subcommand_argv(name: str, built: Path, out: Path) -> tuple[list[str], Path]:
    """argv of one subcommand on the smoke fixtures, and the file or directory its first write goes to."""
    smoke = ["--config", str(REPO / "config" / "smoke.yaml")]
    data, backbone = built / "data" / "synthetic", built / "backbone"
    if name == "prepare":
        return ["prepare", *smoke, "--out", str(out / "data")], out / "data"
    if name == "backbone":
        return ["backbone", *smoke, "--backbone", "tiny", "--data", str(data), "--out", str(out / "bb")], out / "bb"
    if name == "atp-sft":
        return (["atp-sft", *smoke, "--backbone", "tiny", "--backbone-dir", str(backbone), "--data", str(data),
                 "--out", str(out / "sft")], out / "sft")
    if name == "evaluate":
        return (["evaluate", *smoke, "--backbone", "tiny", "--method", "cot", "--backbone-dir", str(backbone),
                 "--benchmark", "synthetic_test_id", "--data-root", str(built / "data"), "--out", str(out / "e.json")],
                out / "e.samples.jsonl.partial")
    assert name == "summarise"
    return ["summarise", *smoke, "--results", str(out / "results"), "--out", str(out / "fig"), "--combined"], out / "fig"


@pytest.mark.parametrize("name", ["prepare", "backbone", "atp-sft", "evaluate", "summarise"])
def test_a_full_disk_is_one_line_naming_the_file_free_space_and_what_is_intact(name, built, tmp_path, monkeypatch,
                                                                                capsys):
    import errno
    import tempfile

    def full(*args, **kwargs):  # what write() says on a full disk: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    argv, written = _subcommand_argv(name, built, tmp_path)
    monkeypatch.setenv("TARPO_TRACKING", "off")
    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(tempfile, "mkdtemp", full)
    capsys.readouterr()
    assert main(argv) == 5
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "%|" not in line]  # besides the closed progress bars
    assert len(lines) == 1, err
    assert re.fullmatch(rf"tarpo: no space left on device writing {re.escape(str(written))}\S* \(\d+\.\d MiB free\); "
                        r"free some space and rerun; .*(intact|resumes).*", lines[0]), lines[0]


def test_another_io_error_is_one_line_too(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tempfile, "mkdtemp", broken)
    assert main(["prepare", "--config", str(REPO / "config" / "smoke.yaml"), "--out", str(tmp_path / "d")]) == 6
    err = capsys.readouterr().err.strip()
    assert err == (f"tarpo: I/O error on {tmp_path / 'd'}: Input/output error ({err.split('(')[1].split(')')[0]}); "
                   "--out is replaced only once complete, so an earlier one is intact"), err
    assert "MiB free" in err
