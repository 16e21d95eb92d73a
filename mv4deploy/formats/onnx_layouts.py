"""Weight layouts that only ONNX exports produce, beside the shared registry ``formats.FORMATS``.

``FORMATS`` holds formats a checkpoint pipeline can write and read back (each with a torch side that the
registry's property tests exercise). The layouts here describe bytes that onnxruntime's own tools write
inside an ONNX graph, and serve the byte accounting of ``footprint`` and the layout checks against real
exports; they are not registered, so no pipeline picks them by mistake. ``get_layout`` looks in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod
from typing import ClassVar

from mv4deploy.formats.base import FORMATS, Ecosystem, QuantFormat, StoredTensor, _base


from mv4deploy.formats.catalog import MatMulNBits4


class MatMulNBits4B128ZP(MatMulNBits4, register=False):
    """MatMulNBitsQuantizer's defaults: block 128, asymmetric (a 4-bit zero point per block)."""

    name, compute, bits, block, symmetric = "mnb-int4-b128-zp", "int4", 4, 128, False
    ecosystem = Ecosystem("U8", onnx="MatMulNBits")


@dataclass(frozen=True)
class QDQPerChannel(QuantFormat, register=False):
    """A QDQ weight as onnxruntime's static quantizer stores it for the QNN HTP (a Gemm weight [N, K],
    one scale per output channel, axis 0): payload [N, K] (ONNX packs INT4 two per byte across the whole
    tensor; written here as U8 rows of K/2 bytes), scale F32 [N] and zero point [N] of the payload type."""

    payload_bits: ClassVar[int]

    def stored(self, name, shape):
        *lead, rows, cols = shape
        base = _base(name)
        if self.payload_bits == 8:
            payload = StoredTensor(base + ".weight_quantized", "U8", tuple(shape), prod(shape))
            zero = StoredTensor(base + ".weight_zero_point", "U8", (*lead, rows), 0)
        else:
            payload = StoredTensor(base + ".weight_quantized", "U8", (*lead, rows, ceil(cols / 2)), prod(shape))
            zero = StoredTensor(base + ".weight_zero_point", "U8", (*lead, ceil(rows / 2)), 0)
        return payload, StoredTensor(base + ".weight_scale", "F32", (*lead, rows), 0), zero


class QDQUInt8Channel(QDQPerChannel, register=False):
    name, compute, bits, payload_bits = "qdq-u8-channel", "int8", 8, 8
    ecosystem = Ecosystem("U8", onnx="DequantizeLinear")


class QDQInt4Channel(QDQPerChannel, register=False):
    name, compute, bits, payload_bits = "qdq-i4-channel", "int4", 4, 4
    ecosystem = Ecosystem("U8", onnx="DequantizeLinear")


LAYOUTS: dict[str, QuantFormat] = {cls.name: cls() for cls in (MatMulNBits4B128ZP, QDQUInt8Channel, QDQInt4Channel)}


def layout_names() -> list[str]:
    return sorted({*FORMATS, *LAYOUTS})


def get_layout(name: str) -> QuantFormat:
    found = LAYOUTS.get(name) or FORMATS.get(name)
    if found is None:
        raise KeyError(f"unknown weight layout {name!r}; known: {', '.join(layout_names())}")
    return found
