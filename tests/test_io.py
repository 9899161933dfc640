"""Atomic outputs: permissions that follow the umask, and a full disk reported as such."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tarpo.io import DiskFullError, atomic_dir, atomic_write_text, disk_full_as_error, file_digest, tree_digest


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o002, 0o664, 0o775)])
def test_atomic_outputs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner.txt").write_text("y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "d" / "inner.txt").stat().st_mode & 0o777 == file_mode


def test_disk_full_errors_name_the_target_and_what_is_kept(tmp_path):
    with pytest.raises(DiskFullError, match=r"no space left on device writing a checkpoint to .*/x .*; "
                                            r"free some space and rerun; step-3 is intact"):
        with disk_full_as_error(tmp_path / "x", "a checkpoint", "step-3 is intact"):
            raise OSError(errno.ENOSPC, "No space left on device")
    # other failures pass through untouched
    with pytest.raises(PermissionError):
        with disk_full_as_error(tmp_path / "x", "a checkpoint"):
            raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(RuntimeError, match="unrelated"):  # plenty of space here: a torch error is just an error
        with disk_full_as_error(tmp_path / "x", "a checkpoint"):
            raise RuntimeError("unrelated")


def can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m none /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs unshare with user+mount namespaces to make a small tmpfs")
def test_a_really_full_disk_during_a_checkpoint_says_no_space_left(tmp_path):
    """torch.save on a full file system raises an opaque zip-writer RuntimeError; the user sees 'no space left'."""
    mount = tmp_path / "small"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from tarpo.checkpoints import save_checkpoint
        params = {{"w": torch.nn.Parameter(torch.zeros(1_000_000))}}  # 4 MB on a 2 MB disk
        try:
            save_checkpoint(Path({str(mount)!r}) / "state", 5, params, {{}})
        except OSError as err:
            print(type(err).__name__, err)
        import os
        print("left:", sorted(os.listdir({str(mount)!r} + "/state")))
    """)
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size=2m none {mount} && exec {sys.executable} -c \"$0\"", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DiskFullError no space left on device writing a checkpoint" in proc.stdout
    assert "left: []" in proc.stdout  # no half-written step-* directory to be taken for a checkpoint


def test_digests_change_with_content(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"1" * 1000)
    (tmp_path / "m" / ".hidden").write_text("ignored")
    before = tree_digest(tmp_path / "m")
    (tmp_path / "m" / ".hidden").write_text("changed")
    assert tree_digest(tmp_path / "m") == before
    (tmp_path / "m" / "a.bin").write_bytes(b"1" * 999 + b"2")
    assert tree_digest(tmp_path / "m") != before
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 3_000_000)
    sampled = file_digest(big, whole_below=1_000_000)  # size + first and last MiB
    with open(big, "r+b") as fh:
        fh.seek(2_999_999)
        fh.write(b"\1")
    assert file_digest(big, whole_below=1_000_000) != sampled


def test_read_jsonl_names_file_and_line_of_a_bad_row(tmp_path):
    from tarpo.io import BadInputError, read_jsonl

    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(BadInputError, match=r"train.jsonl:3: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(BadInputError, match=r"train.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys):
    from tarpo import cli

    def full(args):
        with disk_full_as_error("/results/x", "the final policy", "training resumes from step-000050"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "cmd_schema", full)
    assert cli.main(["schema"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tarpo: no space left on device writing the final policy")
    assert "resumes from step-000050" in err[0]
