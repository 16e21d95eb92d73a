"""Logical weights of a checkpoint and how they are encoded and decoded, shared by loader and writer.

A *logical weight* is one tensor of the network (``layers.0.attn.wq_a.weight``); a checkpoint may store
it as several tensors (FP8 payload + ``.scale``; FP4 packed + ``.scale``). The config-derived inventory
lists the stored tensors of each weight consecutively, payload first (``model.inventory._Builder``), so
grouping walks it once. Decoding a quantized weight is the format registry's ``dequantize``; plain
formats and raw tables are a cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mv4deploy.model.inventory import RAW_FORMAT, Inventory, TensorInfo
from mv4deploy.quant.formats import get_format
from mv4deploy.quant.kernels import TORCH_DTYPES  # safetensors dtype name -> torch dtype

__all__ = ["TORCH_DTYPES", "LogicalWeight", "logical_weights", "decode", "encode", "slot_view"]
PLAIN_FORMATS = frozenset({"bf16", "f32", RAW_FORMAT})


@dataclass(frozen=True)
class LogicalWeight:
    name: str                        # the payload's stored name (the weight's native name)
    format: str                      # a FORMATS name, or "raw"
    stored: tuple[TensorInfo, ...]   # payload first, then scales

    @property
    def is_plain(self) -> bool:
        return self.format in PLAIN_FORMATS


def logical_weights(inventory: Inventory) -> list[LogicalWeight]:
    """Group the stored tensors of a config-derived inventory into logical weights."""
    groups: list[LogicalWeight] = []
    tensors = inventory.tensors
    i = 0
    while i < len(tensors):
        head = tensors[i]
        count = 1 if head.format == RAW_FORMAT else len(get_format(head.format).stored(head.name, head.shape))
        members = tensors[i: i + count]
        if any(t.format != head.format for t in members) or len(members) != count:
            raise AssertionError(f"inventory of {inventory.spec.name}: {head.name} is not followed by its scales")
        groups.append(LogicalWeight(head.name, head.format, tuple(members)))
        i += count
    return groups


def decode(weight: LogicalWeight, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The full-precision tensor of ``weight`` from its stored tensors (keys: stored names)."""
    if weight.format == RAW_FORMAT:
        return tensors[weight.name]
    if weight.is_plain:
        return tensors[weight.name].to(dtype)
    return get_format(weight.format).dequantize(weight.name, tensors, dtype)


def encode(weight: LogicalWeight, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored tensors of ``weight`` for a full-precision ``value`` (dtypes as the inventory says)."""
    if weight.is_plain:
        return {weight.name: value.to(TORCH_DTYPES[weight.stored[0].dtype]).contiguous()}
    encoded = get_format(weight.format).quantize(weight.name, value)
    for info in weight.stored:
        got = encoded.get(info.name)
        if got is None or tuple(got.shape) != info.shape or got.dtype != TORCH_DTYPES[info.dtype]:
            raise AssertionError(f"{weight.format}.quantize({weight.name}) gave {info.name} as "
                                 f"{None if got is None else (got.dtype, tuple(got.shape))}, "
                                 f"expected {info.dtype}{list(info.shape)}")
    return {name: tensor.contiguous() for name, tensor in encoded.items()}  # safetensors needs contiguous


def slot_view(full: torch.Tensor, expert: int | None, half: str | None) -> torch.Tensor:
    """The part of a (possibly fused) parameter one native tensor fills: ``gate_up_proj[e, :I]`` for
    ``experts.e.w1``, ``gate_up_proj[e, I:]`` for ``w3`` (gate first, as ``_apply_gate`` chunks it)."""
    view = full if expert is None else full[expert]
    if half is None:
        return view
    rows = view.shape[0] // 2
    return view[:rows] if half == "gate" else view[rows:]
