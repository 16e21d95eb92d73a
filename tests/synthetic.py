"""Write synthetic checkpoints: real tensor names, dtypes and shapes from an inventory, zero payload.

Pure Python (no torch), so header-only code paths are tested without weights. ``shards`` splits the
tensors in order; an index is written when there is more than one shard.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mv4deploy.model.tensors import Inventory


def write_shard(path: Path, tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict | None = None) -> None:
    header, offset = {}, 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.write(bytes(offset))


def write_checkpoint(inventory: Inventory, folder: Path, config: dict, shards: int = 3) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    items = [(t.name, t.dtype, t.shape, t.nbytes) for t in inventory.tensors]
    per_shard = -(-len(items) // shards)
    weight_map = {}
    for k in range(shards):
        part = items[k * per_shard:(k + 1) * per_shard]
        name = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_shard(folder / name, part)
        weight_map.update({t[0]: name for t in part})
    if shards > 1:
        total = sum(t[3] for t in items)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder
