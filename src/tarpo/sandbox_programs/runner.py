"""The candidate's runner, run as `python -I -B -c <this file, codec included> <args>`.

Arguments: workdir, memory bytes, CPU seconds, file size bytes, nproc (0: no
limit), the end marker, and the serve fds (-1 -1: none). It reads the nonce
from stdin, sets limits, installs the guard, then execs the user's program.py.
With serve fds it then answers calls of the program's functions
(`tarpo.sandbox.run_check`). Everything it needs is bound before the user code
can tamper with modules.
"""

import builtins
import io
import os
import posix
import resource
import sys

from .codec import _dec, _enc, _frame, _json  # replaced by codec.py's text in the program that runs


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
    import _posixsubprocess
    import _socket
    import shutil
    import socket
    import subprocess

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

if __name__ == "__main__":
    DONE = sys.argv[6]
    _main()
