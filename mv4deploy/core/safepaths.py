"""Paths a user hands us stay where they belong: nothing outside a model folder is read through it.

A model folder is untrusted data. A symlink in it (``tokenizer.json -> ~/.ssh/id_rsa``) or a file name
in its index (``../../etc/passwd``, ``a\\0b``) must not make us read, copy or ship a file that lies
elsewhere. ``check_model_folder`` refuses a folder holding a link that resolves outside it (a link
within it is fine: some hubs store shards as links into a blob folder beside them, which we refuse as
well, since that folder is outside); ``file_name`` checks one name from a model's own files;
``regular_files`` lists what may be copied (regular files, never links or devices).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mv4deploy.core.errors import InputError


def file_name(source: str | Path, field: str, name: object) -> str:
    """A bare file name inside its folder (from an index or a manifest): text, no NUL, no separator,
    not absolute, not ``.``/``..``."""
    if not isinstance(name, str) or not name:
        raise InputError(source, field, name, "must be a file name")
    if "\0" in name:
        raise InputError(source, field, name, "contains a NUL byte")
    if "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute():
        raise InputError(source, field, name, "names a file outside the checkpoint folder")
    return name


def check_model_folder(folder: str | Path) -> Path:
    """Refuse a folder that holds a symlink (at any depth) resolving outside it; returns the folder."""
    folder = Path(folder)
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not _within(root, path.resolve()):
                raise InputError(path, None, os.readlink(path),
                                 "is a symlink to a file outside the model folder; copy the file in instead")
    return folder


def regular_files(folder: str | Path) -> list[tuple[str, Path]]:
    """(name, file to read) for each regular file directly in ``folder``, sorted by name: a symlink counts
    only when it resolves to a regular file inside ``folder`` (then its target is read); folders, devices,
    pipes and links out of the folder never do."""
    folder = Path(folder)
    root = folder.resolve()
    out = []
    for path in sorted(folder.iterdir()):
        real = path.resolve() if path.is_symlink() else path
        if path.is_symlink() and not _within(root, real):
            continue
        try:
            if stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode):
                out.append((path.name, real))
        except OSError:
            continue
    return out


def _within(root: Path, target: Path) -> bool:
    return target == root or root in target.parents
