"""Weight formats as data: how each stores a logical weight, and exactly how many bytes that takes.

A format turns one logical weight (name, shape) into the tensors a checkpoint holds for it: the
payload plus its scales, each with a safetensors dtype and shape. ``nbytes`` is derived from that
layout, so it counts scales and padding exactly (FP4 with a UE8M0 scale per 32 values is 4.25 bits;
FP8 with a 128x128 F32 block scale adds 4 bytes per 16,384 values). This module imports no torch:
the planner uses it. A new format is one class with ``name=...``; tests loop over ``FORMATS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod
from typing import ClassVar

from mv4deploy.model.safetensors_headers import tensor_nbytes

FORMATS: dict[str, "QuantFormat"] = {}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    params: int  # logical parameters this tensor carries (0 for scales and metadata)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True)
class QuantFormat:
    """Base: a format named in ``FORMATS``. ``compute`` is the precision a device must run natively
    to execute it without conversion (matched against a hardware profile's ``native_formats``)."""

    name: ClassVar[str]
    compute: ClassVar[str]
    bits: ClassVar[float]  # nominal bits per value of the payload, without scales

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            FORMATS[cls.name] = cls()

    def stored(self, name: str, shape: tuple[int, ...]) -> tuple[StoredTensor, ...]:
        """The checkpoint tensors that hold logical weight ``name`` of ``shape`` (payload first)."""
        raise NotImplementedError

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return sum(t.nbytes for t in self.stored("w.weight", tuple(shape)))

    # The torch side (imported lazily inside the methods; this module must stay torch-free at import):
    #   quantize(name, weight) -> dict[str, torch.Tensor]   keys, dtypes and shapes exactly as ``stored``
    #   dequantize(name, tensors: dict[str, torch.Tensor], dtype) -> torch.Tensor of the logical shape
    #   error_bound(weight) -> torch.Tensor    elementwise bound on |dequantize(quantize(w)) - w|
    def quantize(self, name: str, weight):
        raise NotImplementedError(f"{self.name}: quantize")

    def dequantize(self, name: str, tensors: dict, dtype=None):
        raise NotImplementedError(f"{self.name}: dequantize")


def _base(name: str) -> str:
    """'layers.0.attn.wq_a.weight' -> 'layers.0.attn.wq_a' (scales are named after the module)."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


@dataclass(frozen=True)
class Plain(QuantFormat, register=False):
    dtype: ClassVar[str]

    def stored(self, name, shape):
        return (StoredTensor(name, self.dtype, tuple(shape), prod(shape)),)


class BF16(Plain):
    name, compute, bits, dtype = "bf16", "bf16", 16, "BF16"


class F32(Plain):
    name, compute, bits, dtype = "f32", "bf16", 32, "F32"


@dataclass(frozen=True)
class FP8Block(QuantFormat, register=False):
    """e4m3 payload with one scale per ``block`` x ``block`` tile; edge tiles are partial (the
    reference zero-pads them for the scale computation, so the scale grid is ceil(out/b) x ceil(in/b))."""

    block: ClassVar[int]
    scale_dtype: ClassVar[str]     # F32 (V3 `weight_scale_inv`) or F8_E8M0 (V4 `.scale`)
    scale_suffix: ClassVar[str]

    def stored(self, name, shape):
        *lead, rows, cols = shape
        grid = (*lead, ceil(rows / self.block), ceil(cols / self.block))
        scale_name = (name + "_scale_inv") if self.scale_suffix == "_scale_inv" else _base(name) + ".scale"
        return (StoredTensor(name, "F8_E4M3", tuple(shape), prod(shape)),
                StoredTensor(scale_name, self.scale_dtype, grid, 0))


class FP8Block128(FP8Block):
    name, compute, bits = "fp8-e4m3-block128", "fp8", 8
    block, scale_dtype, scale_suffix = 128, "F32", "_scale_inv"


class FP8Block128UE8M0(FP8Block):
    name, compute, bits = "fp8-e4m3-block128-ue8m0", "fp8", 8
    block, scale_dtype, scale_suffix = 128, "F8_E8M0", ".scale"


class FP8Block32UE8M0(FP8Block):
    name, compute, bits = "fp8-e4m3-block32-ue8m0", "fp8", 8
    block, scale_dtype, scale_suffix = 32, "F8_E8M0", ".scale"


class FP8RowsUE8M0(QuantFormat):
    """Engram table rows: e4m3 values with one UE8M0 scale per 32 along the row (256 + 8 = 264 B/row)."""

    name, compute, bits = "fp8-rows-ue8m0", "fp8", 8
    group = 32

    def stored(self, name, shape):
        *lead, cols = shape
        return (StoredTensor(name, "F8_E4M3", tuple(shape), prod(shape)),
                StoredTensor(_base(name) + ".scale", "F8_E8M0", (*lead, ceil(cols / self.group)), 0))


class MXFP4(QuantFormat):
    """e2m1 values packed two per byte (low nibble first) along K, one UE8M0 scale per 32 along K."""

    name, compute, bits = "mxfp4", "fp4", 4
    group = 32

    def stored(self, name, shape):
        *lead, rows, cols = shape
        return (StoredTensor(name, "I8", (*lead, rows, ceil(cols / 2)), prod(shape)),
                StoredTensor(_base(name) + ".scale", "F8_E8M0", (*lead, rows, ceil(cols / self.group)), 0))


@dataclass(frozen=True)
class Int4Group(QuantFormat, register=False):
    """Symmetric INT4 with one BF16 scale per ``group`` along K, packed eight per int32 as
    compressed-tensors' pack-quantized W4A16 (``weight_packed``, ``weight_scale``, ``weight_shape``)."""

    group: ClassVar[int]

    def stored(self, name, shape):
        *lead, rows, cols = shape
        base = _base(name)
        return (StoredTensor(base + ".weight_packed", "I32", (*lead, rows, ceil(cols / 8)), prod(shape)),
                StoredTensor(base + ".weight_scale", "BF16", (*lead, rows, ceil(cols / self.group)), 0),
                StoredTensor(base + ".weight_shape", "I64", (len(shape),), 0))


class Int4G128(Int4Group):
    name, compute, bits, group = "int4-g128", "int4", 4, 128


class Int4G32(Int4Group):
    name, compute, bits, group = "int4-g32", "int4", 4, 32


@dataclass(frozen=True)
class MatMulNBits4(QuantFormat, register=False):
    """onnxruntime's MatMulNBits (bits=4), as the onnxruntime-genai builder and MatMulNBitsQuantizer store
    a weight [N, K] (torch Linear layout): ``B`` U8 [N, ceil(K/block), block/2] (two values per byte, low
    nibble first), ``scales`` [N, ceil(K/block)] in the model's I/O float type, and for asymmetric
    quantization ``zero_points`` U8 [N, ceil(ceil(K/block)/2)] (4-bit, packed). Symmetric int4 block 32 with
    F32 scales (the builder's CPU default) is 4 + 32/32 = 5 bits per weight. The embedding table quantized
    by the builder's ``GatherBlockQuantized`` (INT4 [V, H] + F32 scales [V, H/block]) has the same bytes.
    Checked against the initializers of real exports in tests/test_export_formats.py."""

    block: ClassVar[int]
    scale_dtype: ClassVar[str]
    zero_points: ClassVar[bool]

    def stored(self, name, shape):
        *lead, rows, cols = shape
        blocks = ceil(cols / self.block)
        base = _base(name)
        out = [StoredTensor(base + ".weight_Q4", "U8", (*lead, rows, blocks, self.block // 2), prod(shape)),
               StoredTensor(base + ".weight_scales", self.scale_dtype, (*lead, rows, blocks), 0)]
        if self.zero_points:
            out.append(StoredTensor(base + ".weight_zp", "U8", (*lead, rows, ceil(blocks / 2)), 0))
        return tuple(out)


class MatMulNBits4B32(MatMulNBits4):
    name, compute, bits = "mnb-int4-b32", "int4", 4
    block, scale_dtype, zero_points = 32, "F32", False


class MatMulNBits4B128ZP(MatMulNBits4):
    name, compute, bits = "mnb-int4-b128-zp", "int4", 4
    block, scale_dtype, zero_points = 128, "F32", True


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


class QDQUInt8Channel(QDQPerChannel):
    name, compute, bits, payload_bits = "qdq-u8-channel", "int8", 8, 8


class QDQInt4Channel(QDQPerChannel):
    name, compute, bits, payload_bits = "qdq-i4-channel", "int4", 4, 4


def get_format(name: str) -> QuantFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}") from None
