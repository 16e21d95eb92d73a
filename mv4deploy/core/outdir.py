"""One writer per output folder, and no debris after a failure.

``claim_out(out)`` is held for the whole of a run that writes OUT: it creates OUT if needed, takes an
exclusive ``flock`` on ``OUT/.mv4deploy.lock`` (the holder's pid inside), and on the way out — success
or failure — removes this process's ``*.PID.tmp`` files, the lock file, and OUT itself when this run
created it and left it empty. A second run into the same OUT fails at once with exit 2 naming OUT and
the holder. ``write_errors(path)`` turns a full disk, a read-only file system or a permission refusal
into one line naming the file and what to do, instead of an internal error.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from mv4deploy.core.errors import InputError

LOCK_NAME = ".mv4deploy.lock"
# Errors of the machine, not of our code: the user can fix them (free space, mount rw, chmod).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextmanager
def write_errors(out: Path, retry: str = "re-run the same command"):
    """OSErrors of ``WRITE_ERRNOS`` raised inside become ``InputError(file, ...)``, exit 2."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, out, retry) from None


def write_error(exc: OSError, out: Path, retry: str = "re-run the same command") -> Exception:
    """``exc`` as the one-line error to raise in its place (``exc`` itself when it is not a write error)."""
    if exc.errno not in WRITE_ERRNOS:
        return exc
    return InputError(exc.filename or out, None, None,
                      f"cannot write ({exc.strerror or errno.errorcode[exc.errno]}); fix that and {retry}")


@contextmanager
def claim_out(out: Path):
    """Hold ``out`` exclusively (see the module doc); yields ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, None, "OUT exists and is not a folder")
    created = not out.exists()
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = _lock(out)
        except BaseException:
            _remove_if_empty(out, created)
            raise
    try:
        yield out
    finally:
        remove_own_tmp(out)
        try:
            os.unlink(out / LOCK_NAME)   # still held: a waiting run sees the inode vanish and retries
        except OSError:
            pass
        os.close(fd)
        _remove_if_empty(out, created)


def _lock(out: Path) -> int:
    path = out / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(out, None, None, f"another mv4deploy run (pid {holder}) is writing this OUT; "
                                              "wait for it to finish, or choose another OUT") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                os.unlink(path)   # ours (we hold it): no stale lock file is left
                os.close(fd)
                raise
            return fd
        os.close(fd)   # the holder removed the file as we opened it: take the new one
    raise InputError(out, LOCK_NAME, None, "could not take the lock on OUT; try again")


def remove_own_tmp(folder: Path) -> None:
    """Delete ``*.PID.tmp`` files this process left in ``folder`` and one level below it."""
    suffix = f".{os.getpid()}.tmp"
    for place in (Path(folder), *[p for p in Path(folder).glob(".*") if p.is_dir() and not p.is_symlink()]):
        for path in place.glob(f"*{suffix}"):
            try:
                path.unlink()
            except OSError:
                pass


def _remove_if_empty(out: Path, created: bool) -> None:
    if created:
        try:
            out.rmdir()
        except OSError:
            pass
