"""Encoding a logical weight for the runtime's writer, and the slice of a fused parameter it fills.

The logical weights themselves (one tensor of the network and the stored tensors that hold it, payload
first) and their decoding are ``model.rules.LogicalWeight`` / ``logical_weights(spec)`` /
``LogicalWeight.decode``: one model of a weight for the quantizer, the readback and the runtime. Encoding
a quantized weight is the format registry's ``quantize``; plain formats are a cast.
"""

from __future__ import annotations

import torch

from mv4deploy.formats import get_format
from mv4deploy.formats.kernels import TORCH_DTYPES  # safetensors dtype name -> torch dtype
from mv4deploy.model.rules import LogicalWeight

__all__ = ["TORCH_DTYPES", "encode", "slot_view"]


def encode(weight: LogicalWeight, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored tensors of ``weight`` for a full-precision ``value`` (dtypes as the inventory says)."""
    if weight.is_plain:
        return {weight.name: value.to(TORCH_DTYPES[weight.stored[0].dtype]).contiguous()}
    encoded = get_format(weight.native).quantize(weight.name, value)
    for info in weight.stored:
        got = encoded.get(info.name)
        if got is None or tuple(got.shape) != info.shape or got.dtype != TORCH_DTYPES[info.dtype]:
            raise AssertionError(f"{weight.native}.quantize({weight.name}) gave {info.name} as "
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
