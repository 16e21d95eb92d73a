"""Safetensors I/O for the pipeline without mmap: tensors are read with ``pread`` into fresh buffers
and written with ``pwrite`` at offsets fixed by a header computed up front.

Why not ``safe_open`` / ``save_file``: an mmap'd shard counts every touched page in the process RSS
(a 5 GB shard shows up as 5 GB), and ``save_file`` needs every output tensor in memory at once. Here
the header is known before any data is produced (each format gives its stored dtypes and shapes), so
tensors are written as they are quantized, in any order, by any number of workers, and the bytes
come out the same every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.formats.dtypes import tensor_nbytes
from mv4deploy.model.safetensors_headers import HeaderTensor

COPY_BYTES = 64 << 20   # pass-through copies move this much per read/write


def read_tensor(fd: int, slot: HeaderTensor, path: Path):
    """One tensor from an open file descriptor, into a new CPU tensor (no mmap)."""
    import torch
    from mv4deploy.formats.kernels import TORCH_DTYPES
    buf = torch.empty(slot.nbytes, dtype=torch.uint8)
    view, done = memoryview(buf.numpy()), 0
    while done < slot.nbytes:
        n = os.preadv(fd, [view[done:]], slot.offset + done)
        if n <= 0:
            raise InputError(path, slot.name, slot.offset + done, "file ended inside this tensor (truncated?)")
        done += n
    if slot.dtype == "F4":
        raise InputError(path, slot.name, slot.dtype, "F4 storage is not supported; FP4 is read as packed I8")
    return buf.view(TORCH_DTYPES[slot.dtype]).reshape(slot.shape)


def output_layout(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str],
                  file: str = "") -> tuple[bytes, list[HeaderTensor]]:
    """The header bytes of an output shard (named ``file``) and each tensor's place, in the given order.

    The JSON is padded with spaces to a multiple of 8 bytes (as the safetensors library does), so
    every tensor starts 8-byte aligned when the tensors before it are multiples of 8 long."""
    entries, slots, offset = {"__metadata__": metadata}, [], 0
    for name, dtype, shape in tensors:
        nbytes = tensor_nbytes(dtype, shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        slots.append((name, dtype, shape, offset, nbytes))
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    header = struct.pack("<Q", len(raw)) + raw
    return header, [HeaderTensor(name=n, dtype=d, shape=s, file=file, nbytes=b, offset=len(header) + o)
                    for n, d, s, o, b in slots]


class OrderedHasher:
    """sha256 of a file whose pieces are written at known offsets in any order: a piece is hashed as
    soon as every byte before it has been (out-of-order pieces wait, copied, until then). The output
    shard is hashed as it is written, never read back."""

    def __init__(self) -> None:
        self.digest, self.next, self.pending, self.lock = hashlib.sha256(), 0, {}, threading.Lock()

    def add(self, offset: int, data) -> None:
        with self.lock:
            if offset != self.next:
                self.pending[offset] = bytes(data)
                return
            self.digest.update(data)
            self.next += len(data)
            while self.next in self.pending:
                piece = self.pending.pop(self.next)
                self.digest.update(piece)
                self.next += len(piece)

    def hexdigest(self, total: int) -> str:
        if self.next != total or self.pending:
            raise AssertionError(f"hashed {self.next} of {total} bytes ({len(self.pending)} pieces pending)")
        return self.digest.hexdigest()


def write_tensor(fd: int, slot: HeaderTensor, tensor, hasher: OrderedHasher | None = None) -> None:
    """Write one tensor's bytes at its slot (checks dtype and shape against the header)."""
    import torch
    from mv4deploy.formats.kernels import TORCH_DTYPES
    if tensor.dtype != TORCH_DTYPES[slot.dtype] or tuple(tensor.shape) != slot.shape:
        raise AssertionError(f"{slot.name}: got {tensor.dtype}{list(tensor.shape)}, header says "
                             f"{slot.dtype}{list(slot.shape)}")
    data = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    _pwrite_all(fd, data, slot.offset)
    if hasher is not None:
        hasher.add(slot.offset, data)


def copy_bytes(src_fd: int, src: HeaderTensor, dst_fd: int, dst: HeaderTensor, path: Path, check=None,
               hasher: OrderedHasher | None = None) -> None:
    """Pass-through: copy a tensor's bytes unchanged, COPY_BYTES at a time (any size, little memory).
    ``check(piece, path)`` sees each piece first (pieces are whole elements: COPY_BYTES is a multiple
    of every element size)."""
    buf = bytearray(min(COPY_BYTES, max(src.nbytes, 1)))
    done = 0
    while done < src.nbytes:
        size = min(len(buf), src.nbytes - done)
        piece = memoryview(buf)[:size]
        got = 0
        while got < size:
            n = os.preadv(src_fd, [piece[got:]], src.offset + done + got)
            if n <= 0:
                raise InputError(path, src.name, src.offset + done + got, "file ended inside this tensor (truncated?)")
            got += n
        if check is not None:
            check(piece, path)
        _pwrite_all(dst_fd, piece, dst.offset + done)
        if hasher is not None:
            hasher.add(dst.offset + done, piece)
        done += size


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n

