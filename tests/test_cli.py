"""The command line: help with descriptions and examples, choices, --version, what prepare says, log format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tarpo import __version__
from tarpo.cli import build_parser, main
from tarpo.modes import MODES

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["check", "schema", "prepare", "backbone", "atp-sft", "train", "evaluate", "summarise"]
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
    trained = [m for m in MODES if m != "cot"]
    assert "{" + ",".join(trained) + "}" in train
    assert "cot" in _help(capsys, "evaluate").split("--method", 1)[1].split("--backbone-dir")[0]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--backbone", "b", "--method", "grpoo", "--backbone-dir", "x", "--data", "y", "--out", "z"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'grpoo'" in err and "'tarpo'" in err and "'atp_latent'" in err


def test_benchmark_help_lists_the_registry(capsys):
    out = " ".join(_help(capsys, "evaluate").split())
    for name in ("gsm8k", "math500", "humaneval", "synthetic_test_id"):
        assert name in out


def test_prepare_says_what_it_wrote_in_timestamped_log_lines(tmp_path, capsys):
    out_dir = tmp_path / "data"
    assert main(["prepare", "--config", str(REPO / "config" / "smoke.yaml"), "--out", str(out_dir)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    said = lines[-1]
    assert "INFO tarpo.cli" in said and str(out_dir) in said
    for split in ("train", "test_id", "test_ood"):
        n = len((out_dir / f"{split}.jsonl").read_text().splitlines())
        assert f"{split} {n}" in said


def test_a_config_error_is_one_line_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "config" / "smoke.yaml").read_text().replace("train:\n", "trian:\n", 1))
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tarpo: config error:") and "trian" in err and len(err.splitlines()) == 1
