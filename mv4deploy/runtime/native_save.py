"""Write a transformers state dict as a checkpoint in the layout its config describes.

For DeepSeek V4 that is the native layout: native names (the name map read backwards), per-expert
``w1``/``w2``/``w3`` cut out of the fused 3-D tensors, and each weight in the format the config's
``quantization_config`` implies (BF16, or FP8 block + MXFP4 experts, encoded by the format registry).
For Qwen2/Llama it is the HF layout. Shards and the index are written under temporary names and renamed
into place; the index and config.json come last, so a half-written folder never looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mv4deploy.core.fileio import atomic_path, write_text_atomic
from mv4deploy.model.config import read_config
from mv4deploy.model.safetensors_headers import INDEX_NAME
from mv4deploy.model.spec import Arch
from mv4deploy.model.rules import LogicalWeight, logical_weights
from mv4deploy.runtime import name_map
from mv4deploy.runtime.weights import encode, slot_view

NATIVE_ARCHES = (Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41)


def source_tensor(state: dict[str, torch.Tensor], weight: LogicalWeight, native: bool) -> torch.Tensor:
    """The full-precision value of one logical weight, taken from a transformers state dict."""
    if not native:
        return state[weight.name]
    target = name_map.to_target(weight.name)
    if target is None:
        raise KeyError(f"{weight.name}: {name_map.skip_reason(weight.name)}")
    return slot_view(state[target.param], target.expert, target.half)


def save_native(state: dict[str, torch.Tensor], config: dict, folder: Path, sorted_shards: int = 1) -> Path:
    """Write ``config`` + the weights of ``state`` into ``folder`` in ``sorted_shards`` shards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = read_config(config, str(folder / "config.json"))
    native = spec.architecture in NATIVE_ARCHES
    weights = logical_weights(spec)
    groups = []
    for weight in weights:
        value = source_tensor(state, weight, native).detach()
        groups.append(encode(weight, value if weight.is_plain else value.float()))
    shards = _split(groups, sorted_shards)
    weight_map = {}
    from safetensors.torch import save_file
    for index, tensors in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        with atomic_path(folder / file) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "mv4deploy": "native_save"})
        weight_map.update({name: file for name in tensors})
    total = sum(_nbytes(group) for group in groups)
    write_text_atomic(folder / INDEX_NAME, json.dumps({"metadata": {"total_size": total},
                                                       "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _split(groups: list[dict[str, torch.Tensor]], count: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive runs of whole weights (payload with its scales) of about equal bytes."""
    total = sum(map(_nbytes, groups))
    shards, current, size = [], {}, 0
    for group in groups:
        current.update(group)
        size += _nbytes(group)
        if size >= total * (len(shards) + 1) / count and len(shards) < count - 1:
            shards.append(current)
            current = {}
    return shards + [current] if current else shards
