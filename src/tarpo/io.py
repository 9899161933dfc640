"""Atomic file and directory writes: a half-written output is never taken for a finished one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        _name_the_file(err, target)
        raise
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it owner-only; outputs are shared like any directory
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_file(err, target)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600; honour the umask like open() does
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _name_the_file(err, path)
        raise


def _name_the_file(err: BaseException, path: Path) -> None:
    # a failed write() names no file; the one-line message of an I/O error (io_error_message) needs it
    if isinstance(err, OSError) and not err.filename:
        err.filename = str(path)


def current_umask() -> int:
    """The process umask, read without changing it (Linux exposes it in /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting, then restore
    os.umask(mask)
    return mask


class DiskFullError(OSError):
    """Writing an output failed because its file system is full; the message says where and what is kept."""


# torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...",
# "file write failed"); below this much free space we take such an error for a full disk.
_NEARLY_FULL_BYTES = 64 * 2**20


@contextlib.contextmanager
def disk_full_as_error(path: str | Path, what: str, kept: str = "") -> Iterator[None]:
    """Turn a full-disk failure while writing `what` under `path` into a DiskFullError with a clear message.

    `kept` says what survives (e.g. the last complete checkpoint), so the user knows a rerun loses nothing.
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as err:
        free_bytes = free_space(path)
        reported = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if not (reported or (free_bytes is not None and free_bytes < _NEARLY_FULL_BYTES)):
            raise
        full_error = DiskFullError(f"no space left on device writing {what} to {path} ({_free_text(free_bytes)}); "
                                   f"free some space and rerun{'; ' + kept if kept else ''}")
        full_error.errno = errno.ENOSPC  # set after: OSError(errno, text) would prefix "[Errno 28]"
        raise full_error from err


def free_space(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None if unknown."""
    try:
        return shutil.disk_usage(_existing_parent(Path(path))).free
    except OSError:
        return None


def _free_text(free_bytes: int | None) -> str:
    return f"{free_bytes / 2**20:.1f} MiB free" if free_bytes is not None else "free space unknown"


def io_error_message(err: OSError, kept: str = "") -> str:
    """One line for an OSError that escaped a job: the file, the free space beside it and `kept` (what is intact).

    The message a full disk gives is the one `disk_full_as_error` gives; any other I/O error (EIO, a read-only
    file system, a permission) names its cause the same way, without a traceback.
    """
    if isinstance(err, DiskFullError):
        return str(err)
    path = err.filename or "an output"
    where = f"{path}{' -> ' + str(err.filename2) if err.filename2 else ''}"
    free = _free_text(free_space(err.filename)) if err.filename else "free space unknown"
    tail = f"; {kept}" if kept else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing {where} ({free}); free some space and rerun{tail}"
    reason = err.strerror or str(err) or type(err).__name__
    return f"I/O error on {where}: {reason} ({free}){tail}"


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def file_digest(path: str | Path, whole_below: int = 256 * 2**20) -> str:
    """sha256 of a file; above `whole_below` bytes, of its size, first and last MiB (weights of a
    multi-GB model would take minutes to hash, and a change to them changes those too in practice)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size < whole_below:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(fh.read(2**20))
            fh.seek(size - 2**20)
            h.update(fh.read(2**20))
    return h.hexdigest()


def tree_digest(root: str | Path) -> str:
    """sha256 over the relative paths and `file_digest`s of every file under `root` (hidden ones skipped)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


MANIFEST_FILE = "SHA256SUMS"


def write_manifest(root: str | Path) -> None:
    """Record the sha256 of every file under `root` (sha256sum's format), so a damaged copy is detected."""
    root = Path(root)
    lines = [f"{file_digest(p)}  {p.relative_to(root).as_posix()}\n"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE]
    (root / MANIFEST_FILE).write_text("".join(lines))


def verify_manifest(root: str | Path) -> None:
    """Raise BadInputError naming the first file under `root` that is missing or differs from its manifest
    (no manifest: nothing to check, e.g. outputs of an older version)."""
    root = Path(root)
    manifest = root / MANIFEST_FILE
    if not manifest.exists():
        return
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = root / name
        if not path.is_file():
            raise BadInputError(f"{root} is damaged: {name} is missing")
        if file_digest(path) != digest:
            raise BadInputError(f"{root} is damaged: {name} does not match its sha256 in {MANIFEST_FILE}")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class BadInputError(ValueError):
    """An input file is malformed; the message names the file and line."""


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); a malformed line or a row that is not an object
    is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInputError(f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(row, dict):
                raise BadInputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


class MissingInputError(FileNotFoundError):
    """A dataset, model or checkpoint the job needs is not there; the message says how to get it."""


def env_flag(name: str) -> bool:
    """Whether an environment variable is set to a true value (1 / on / yes / true), as the HF libraries read it."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_home() -> Path:
    """The Hugging Face cache root, read from the environment now (HF_HOME, else $XDG_CACHE_HOME/huggingface)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return Path(home)


_HELD_LOCKS: dict[str, int] = {}  # lock files this process holds, by path: open descriptors, never closed


def hold_lock(path: str | Path, owner: dict[str, Any], keep: bool = True) -> dict[str, Any] | None:
    """Take an exclusive lock on `path` for the rest of this process, writing `owner` (who holds it) into it.

    Returns None once held (also when this process already holds it), else what the holder wrote. The lock is
    flock's: the kernel drops it when the holder exits, however it exits, so a killed run leaves none behind.
    `keep=False` only asks: the lock is let go at once and nothing is created or changed (a dry run writes
    nothing).
    """
    path = Path(path).resolve()
    if str(path) in _HELD_LOCKS:
        return None
    if not keep and not path.exists():
        return None  # no lock file: nobody holds it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
        except ValueError:  # caught between its lock and its write
            holder = {}
        os.close(fd)
        return holder if isinstance(holder, dict) and holder else {"pid": "unknown"}
    if not keep:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    _HELD_LOCKS[str(path)] = fd
    return None
