"""Read safetensors headers and shard indexes without touching tensor data (pure Python, no torch).

A safetensors file is ``u64 little-endian header length | JSON header | payload``. The header maps
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the payload.
Everything here is validated, because a lying header is how a truncated download shows up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core.safepaths import file_name
from mv4deploy.formats.dtypes import DTYPE_BITS, tensor_nbytes

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library refuses larger headers too
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class HeaderTensor:
    """One tensor of a safetensors file: where its bytes are (``offset`` is absolute in the file, past the
    8-byte length and the JSON header), what they are, and which file (its name in the folder)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    nbytes: int
    offset: int


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    tensors: tuple[HeaderTensor, ...]
    metadata: dict[str, str]
    payload_bytes: int


def read_header(path: Path) -> ShardHeader:
    """Parse and check one shard's header; reads the first 8 + header-length bytes only."""
    path = Path(path)
    try:
        file_bytes = path.stat().st_size
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise InputError(path, "header", file_bytes, "file too short for a safetensors header (truncated?)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or header_len > file_bytes - 8:
                raise InputError(path, "header length", header_len,
                                 f"exceeds the file ({file_bytes} bytes): truncated or not safetensors")
            raw = handle.read(header_len)
    except OSError as exc:
        raise InputError(path, None, None, f"cannot read: {exc.strerror}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(path, "header", None, f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise InputError(path, "header", type(header).__name__, "must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(path, "__metadata__", metadata, "must be an object of strings")
    payload_bytes = file_bytes - 8 - header_len
    tensors = tuple(sorted((_check_entry(path, name, entry, payload_bytes, 8 + header_len)
                            for name, entry in header.items()), key=lambda t: t.name))
    _check_no_overlap(path, header)
    _check_no_trailing_bytes(path, tensors, payload_bytes, 8 + header_len)
    return ShardHeader(path=path, tensors=tensors, metadata=metadata, payload_bytes=payload_bytes)


def _check_entry(path: Path, name: str, entry: object, payload_bytes: int, payload_offset: int) -> HeaderTensor:
    if not isinstance(entry, dict):
        raise InputError(path, name, entry, "header entry must be an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InputError(path, f"{name}.dtype", dtype, f"unknown dtype; known: {', '.join(sorted(DTYPE_BITS))}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InputError(path, f"{name}.shape", shape, "must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise InputError(path, f"{name}.data_offsets", offsets, "must be [begin, end] with 0 <= begin <= end")
    nbytes = tensor_nbytes(dtype, tuple(shape))
    if offsets[1] - offsets[0] != nbytes:
        raise InputError(path, f"{name}.data_offsets", offsets,
                         f"span {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {nbytes}")
    if offsets[1] > payload_bytes:
        raise InputError(path, f"{name}.data_offsets", offsets,
                         f"ends past the payload ({payload_bytes} bytes): file truncated")
    return HeaderTensor(name=name, dtype=dtype, shape=tuple(shape), file=path.name, nbytes=nbytes,
                        offset=payload_offset + offsets[0])


def _check_no_overlap(path: Path, header: dict) -> None:
    spans = sorted((entry["data_offsets"][0], entry["data_offsets"][1], name) for name, entry in header.items())
    for (_, end, name), (begin, _, next_name) in zip(spans, spans[1:]):
        if begin < end:
            raise InputError(path, next_name, begin, f"overlaps tensor {name!r}")


def _check_no_trailing_bytes(path: Path, tensors, payload_bytes: int, payload_offset: int) -> None:
    """The payload ends where the last tensor ends, as the safetensors library requires: bytes past it
    are a concatenated or corrupted file, never data we would read."""
    end = max((t.offset - payload_offset + t.nbytes for t in tensors), default=0)
    if end != payload_bytes:
        raise InputError(path, "payload", f"{payload_bytes - end} bytes",
                         f"trailing bytes after the last tensor (ends at {end} of {payload_bytes}): corrupted "
                         "or not one safetensors file")


def shard_files(folder: Path) -> dict[str, list[str]]:
    """The shard files of a checkpoint folder and the tensor names the index assigns to each.

    With an index, every file it names must lie inside the folder; without one, a single
    ``model.safetensors`` (or every ``*.safetensors``) is the checkpoint.
    """
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if not index_path.exists():
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise InputError(folder, None, None, f"no {INDEX_NAME} and no *.safetensors files")
        return {name: [] for name in files}
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(index_path, None, None, f"not valid JSON ({exc.__class__.__name__})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(index_path, "weight_map", weight_map, "must be a non-empty object name -> file")
    by_file: dict[str, list[str]] = {}
    root = folder.resolve()
    for name, file in weight_map.items():
        names = by_file.get(file) if isinstance(file, str) else None
        if names is None:            # each distinct file is checked once (an index names it per tensor)
            file_name(index_path, f"weight_map.{name}", file)
            target = (folder / file).resolve()
            if target.parent != root or Path(file).is_absolute() or ".." in Path(file).parts:
                raise InputError(index_path, f"weight_map.{name}", file, "names a file outside the checkpoint folder")
            if not target.is_file():
                raise InputError(index_path, f"weight_map.{name}", file, "file does not exist")
            names = by_file[file] = []
        names.append(name)
    return by_file


def read_checkpoint_headers(folder: Path) -> list[HeaderTensor]:
    """Every tensor of a checkpoint folder, from headers only; index and shards must agree."""
    folder = Path(folder)
    tensors: list[HeaderTensor] = []
    seen: dict[str, str] = {}
    for file, indexed_names in shard_files(folder).items():
        shard = read_header(folder / file)
        names = {t.name for t in shard.tensors}
        missing = sorted(set(indexed_names) - names)
        if missing:
            raise InputError(folder / INDEX_NAME, f"weight_map.{missing[0]}", file,
                             f"index names a tensor the shard does not hold ({len(missing)} such)")
        extra = sorted(names - set(indexed_names)) if indexed_names else []
        if extra:
            raise InputError(folder / file, extra[0], None,
                             f"shard holds a tensor the index does not list ({len(extra)} such)")
        for tensor in shard.tensors:
            if tensor.name in seen:
                raise InputError(folder / file, tensor.name, None, f"tensor also stored in {seen[tensor.name]}")
            seen[tensor.name] = file
            tensors.append(tensor)
    return tensors
