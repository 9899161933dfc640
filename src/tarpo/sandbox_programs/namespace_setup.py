"""The namespace's setup, run as `python -I -B -c <this file> <config JSON>` as root of fresh namespaces.

PID 1 when there is a PID namespace: builds the private filesystem, then forks
the runner (through setpriv, which drops the uid and capabilities) and stays as
the namespace's init. When the runner ends, init reports its exit status on a
side pipe and exits, and the kernel kills whatever else is left in the
namespace. If the setup fails it exits with the config's `setup_failed` status.
"""

import ctypes
import json
import os
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)

def mount(source, target, fstype, flags, data=None):
    def enc(s):
        return None if s is None else os.fsencode(s)

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

def main():
    cfg = json.loads(sys.argv[1])
    try:
        if cfg["private_fs"]:
            private_fs(cfg)
        os.chdir(cfg["workdir"])
    except Exception as e:
        sys.stderr.write("sandbox setup failed: %s\n" % (e,))
        os._exit(cfg["setup_failed"])
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


if __name__ == "__main__":
    main()
