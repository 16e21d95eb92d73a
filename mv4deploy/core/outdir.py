"""One writer per output folder, and no debris after a failure.

``claim_out(out)`` is held for the whole of a run that writes OUT: it creates OUT if needed, takes an
exclusive ``flock`` on ``OUT/.mv4deploy.lock`` (the holder's pid inside), and on the way out — success
or failure — removes this process's ``*.PID.tmp`` files, the lock file, and OUT itself when this run
created it and left it empty. A second run into the same OUT fails at once with exit 2 naming OUT and
the holder. ``claim_out(out, shared=True)`` is the hold of one ``quantize --part I/N`` process: many
parts share OUT at once (each takes ``hold_lock`` on its own part's lock as well), none while an exclusive
run holds it; a shared holder leaves the lock file in place (others may hold it) and the next exclusive run
removes it. ``write_errors(path)`` turns a full disk, a read-only file system or a permission refusal
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
def claim_out(out: Path, shared: bool = False):
    """Hold ``out`` exclusively, or shared with other ``--part`` runs (see the module doc); yields ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, None, "OUT exists and is not a folder")
    created = not out.exists()
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = _lock(out / LOCK_NAME, out, shared)
        except BaseException:
            _remove_if_empty(out, created)
            raise
    try:
        yield out
    finally:
        remove_own_tmp(out)
        _release(out / LOCK_NAME, fd, unlink=not shared)
        _remove_if_empty(out, created)


@contextmanager
def hold_lock(path: Path, out: Path):
    """An exclusive lock on ``path`` (its folder must exist) for a part of a run into ``out``."""
    with write_errors(out):
        fd = _lock(Path(path), out, shared=False)
    try:
        yield
    finally:
        _release(Path(path), fd, unlink=True)


def _release(path: Path, fd: int, unlink: bool) -> None:
    if unlink:
        try:
            os.unlink(path)   # still held: a waiting run sees the inode vanish and retries
        except OSError:
            pass
    os.close(fd)


def _lock(path: Path, out: Path, shared: bool) -> int:
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder else "--part runs"
            raise InputError(out, path.name if path.name != LOCK_NAME else None, None,
                             f"another mv4deploy run ({who}) is writing this OUT; wait for it to finish, "
                             "or choose another OUT") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)   # shared: no pid (the holders are many), nor a crashed run's stale one
                if not shared:
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                _release(path, fd, unlink=not shared)   # ours alone: no stale lock file is left
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
