"""Write outputs under a temporary name and rename them into place when complete.

A reader therefore never sees a half-written file under its final name: an interrupted run leaves
only ``*.tmp`` files, which the next run removes or overwrites.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from mv4deploy.core.errors import InputError

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; on success fsync and rename it to ``path``."""
    path = Path(path)
    if not path.resolve().parent.is_dir():
        raise InputError(path, None, None, "its folder does not exist")
    tmp = tmp_path(path)
    tmp.unlink(missing_ok=True)   # a link planted under the temporary name is replaced, never written through
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted run left in ``folder`` (``.NAME.PID.tmp``)."""
    stale = [p for p in Path(folder).glob(f".*{TMP_SUFFIX}")
             if p.is_file() and p.name[1:-len(TMP_SUFFIX)].rsplit(".", 1)[-1].isdigit()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)



def sha256_file(path: Path, block_bytes: int = 16 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``block_bytes`` pieces (a shard never sits whole in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()
