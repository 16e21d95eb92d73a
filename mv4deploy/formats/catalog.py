"""Every registered weight format (one class each; ``FORMATS`` in ``base`` is filled as they are defined).

Each class says how it stores a logical weight (``stored``), its torch side (kernels in ``kernels_fp``,
``kernels_int``, ``kernels_mnb``, imported inside the methods so the planner never loads torch) and
``ecosystem``: its name in safetensors, transformers' ``quantization_config``, compressed-tensors, ONNX and
GGUF (None where that ecosystem has no identical layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import ceil, prod
from typing import ClassVar

from mv4deploy.formats.base import Ecosystem, QuantFormat, StoredTensor, _base, _half_ulp

NF4_BLOCK = 64          # bitsandbytes' default blocksize (transformers' BitsAndBytesConfig uses it too)
NF4_DTYPE = "bfloat16"  # NF4 quantizes the bf16 weight, as transformers' load_in_4bit does


@dataclass(frozen=True)
class Plain(QuantFormat, register=False):
    """Stored as is in ``dtype`` (round-to-nearest-even cast)."""

    dtype: ClassVar[str]
    min_ndim: ClassVar[int] = 0
    lossless: ClassVar[bool] = True

    def stored(self, name, shape):
        return (StoredTensor(name, self.dtype, tuple(shape), prod(shape)),)

    def _quantize(self, weight):
        from mv4deploy.formats.kernels import TORCH_DTYPES
        return (weight.to(TORCH_DTYPES[self.dtype]).contiguous(),)

    def _dequantize(self, stored, shape, dtype):
        return stored[0].to(dtype)


class BF16(Plain):
    """Error: half an ulp, |w| * 2**-8 (2**-134 for subnormals); 0 for bf16 inputs."""

    name, compute, bits, dtype = "bf16", "bf16", 16, "BF16"
    ecosystem = Ecosystem("BF16", onnx="BFLOAT16", gguf="BF16")

    def error_bound(self, weight):
        import torch
        if weight.dtype == torch.bfloat16:
            return torch.zeros_like(weight, dtype=torch.float32)
        return _half_ulp(weight, 7, -126)


class F32(Plain):
    """Exact for bf16/f16/f32 inputs."""

    name, compute, bits, dtype = "f32", "bf16", 32, "F32"
    ecosystem = Ecosystem("F32", onnx="FLOAT", gguf="F32")

    def error_bound(self, weight):
        import torch
        return torch.zeros_like(weight, dtype=torch.float32)


@dataclass(frozen=True)
class FP8Block(QuantFormat, register=False):
    """e4m3 payload with one scale per ``block`` x ``block`` tile; edge tiles are partial (the
    reference zero-pads them for the scale computation, so the scale grid is ceil(out/b) x ceil(in/b)).
    Dequant (DeepSeek's formula, transformers' Fp8Dequantize): w = e4m3 * scale of its tile.

    Error: with v = |w| / s, half an e4m3 ulp: max(|w| * 2**-4, s * 2**-10) (subnormal spacing 2**-9),
    plus |w| * 2**-20 for the F32 scale's division."""

    block: ClassVar[int]
    scale_dtype: ClassVar[str]     # F32 (V3 `weight_scale_inv`) or F8_E8M0 (V4 `.scale`)
    scale_suffix: ClassVar[str]
    config_family = "fp8"

    def stored(self, name, shape):
        *lead, rows, cols = shape
        grid = (*lead, ceil(rows / self.block), ceil(cols / self.block))
        scale_name = (name + "_scale_inv") if self.scale_suffix == "_scale_inv" else _base(name) + ".scale"
        return (StoredTensor(name, "F8_E4M3", tuple(shape), prod(shape)),
                StoredTensor(scale_name, self.scale_dtype, grid, 0))

    @property
    def ue8m0(self) -> bool:
        return self.scale_dtype == "F8_E8M0"

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_fp import fp8_block_quant
        return fp8_block_quant(weight, self.block, self.ue8m0)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_fp import fp8_block_dequant
        return fp8_block_dequant(stored[0], stored[1], self.block, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels_fp import fp8_block_scale_per_element
        s = fp8_block_scale_per_element(weight, self.block, self.ue8m0)
        bound = (weight.float().abs() * 2.0**-4).maximum(s * 2.0**-10)
        return bound if self.ue8m0 else bound + weight.float().abs() * 2.0**-20


class FP8Block128(FP8Block):
    name, compute, bits = "fp8-e4m3-block128", "fp8", 8
    ecosystem = Ecosystem("F8_E4M3", {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [128, 128]})   # DeepSeek-V3 / R1
    block, scale_dtype, scale_suffix = 128, "F32", "_scale_inv"


class FP8Block128UE8M0(FP8Block):
    name, compute, bits = "fp8-e4m3-block128-ue8m0", "fp8", 8
    ecosystem = Ecosystem("F8_E4M3", {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "scale_fmt": "ue8m0", "weight_block_size": [128, 128]})   # V4
    block, scale_dtype, scale_suffix = 128, "F8_E8M0", ".scale"


class FP8Block32UE8M0(FP8Block):
    name, compute, bits = "fp8-e4m3-block32-ue8m0", "fp8", 8
    ecosystem = Ecosystem("F8_E4M3", {"activation_scheme": "dynamic", "quant_method": "fp8", "scale_fmt": "ue8m0",
                                     "weight_block_size": [32, 32]})   # V4.1
    block, scale_dtype, scale_suffix = 32, "F8_E8M0", ".scale"


class FP8RowsUE8M0(QuantFormat):
    """Engram table rows: e4m3 values with one UE8M0 scale per 32 along the row (256 + 8 = 264 B/row).
    Error as FP8Block with the group's scale: max(|w| * 2**-4, s * 2**-10)."""

    name, compute, bits = "fp8-rows-ue8m0", "fp8", 8
    ecosystem = Ecosystem("F8_E4M3")   # V4.1 Engram table rows: no other ecosystem stores them
    group = 32
    min_ndim = 1
    config_family = "fp8"   # DeepSeek V4.1 ships its Engram tables this way under the FP8 config

    def stored(self, name, shape):
        *lead, cols = shape
        return (StoredTensor(name, "F8_E4M3", tuple(shape), prod(shape)),
                StoredTensor(_base(name) + ".scale", "F8_E8M0", (*lead, ceil(cols / self.group)), 0))

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_fp import fp8_rows_quant
        return fp8_rows_quant(weight, self.group)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_fp import fp8_rows_dequant
        return fp8_rows_dequant(stored[0], stored[1], self.group, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels import E4M3
        from mv4deploy.formats.kernels_fp import group_scale_per_element
        s = group_scale_per_element(weight, self.group, E4M3)
        return (weight.float().abs() * 2.0**-4).maximum(s * 2.0**-10)


class MXFP4(QuantFormat):
    """e2m1 values packed two per byte (low nibble first) along K, one UE8M0 scale per 32 along K.
    Error: with v = |w| / s, half the e2m1 spacing (0.5 below 2, 1 below 4, 2 up to 6):
    max(s / 4, |w| / 4)."""

    name, compute, bits = "mxfp4", "fp4", 4
    # V4's experts as DeepSeek ships them (config: "expert_dtype": "fp4"); ggml's MXFP4 is the same OCP MX
    # block (e2m1, ue8m0 per 32); compressed-tensors' mxfp4-pack-quantized names and packs it differently
    ecosystem = Ecosystem("I8", gguf="MXFP4")
    group = 32
    config_family = "fp8"   # DeepSeek V4's FP8 config with ``expert_dtype: fp4``

    def stored(self, name, shape):
        *lead, rows, cols = shape
        return (StoredTensor(name, "I8", (*lead, rows, ceil(cols / 2)), prod(shape)),
                StoredTensor(_base(name) + ".scale", "F8_E8M0", (*lead, rows, ceil(cols / self.group)), 0))

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_fp import mxfp4_quant
        return mxfp4_quant(weight, self.group)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_fp import mxfp4_dequant
        cols = shape[-1] if shape else 2 * stored[0].shape[-1]
        return mxfp4_dequant(stored[0], stored[1], cols, self.group, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels import E2M1
        from mv4deploy.formats.kernels_fp import group_scale_per_element
        s = group_scale_per_element(weight, self.group, E2M1)
        return (weight.float().abs() / 4).maximum(s / 4)


class NVFP4(QuantFormat):
    """NVFP4 as compressed-tensors' ``nvfp4-pack-quantized`` (NVFP4A16, Blackwell's FP4 tensor cores):
    ``weight_packed`` U8 [R, ceil(C/2)] (e2m1, low nibble first), ``weight_scale`` F8_E4M3 [R, ceil(C/16)],
    ``weight_global_scale`` F32 [1] (one per matrix; [*lead, 1] for 3-D); w = e2m1 * scale / global.
    4.5 bits + 4 bytes per matrix. Kernels: ``kernels_nvfp4`` (compressed-tensors' own quantizer and packer).
    Error: ``kernels_nvfp4.nvfp4_error_bound``."""

    name, compute, bits = "nvfp4", "fp4", 4
    group = 16
    ecosystem = Ecosystem("U8", {"quant_method": "compressed-tensors"}, "nvfp4-pack-quantized")
    config_family = "compressed-tensors"
    ct_scheme = ("NVFP4A16", "nvfp4-pack-quantized")   # compressed-tensors' preset and compressor
    requantizes_exactly = False   # a group whose e4m3 scale is subnormal may land on another code

    def stored(self, name, shape):
        *lead, rows, cols = shape
        base = _base(name)
        return (StoredTensor(base + ".weight_packed", "U8", (*lead, rows, ceil(cols / 2)), prod(shape)),
                StoredTensor(base + ".weight_scale", "F8_E4M3", (*lead, rows, ceil(cols / self.group)), 0),
                StoredTensor(base + ".weight_global_scale", "F32", (*lead, 1), 0))

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_nvfp4 import nvfp4_quant
        return nvfp4_quant(weight)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_nvfp4 import nvfp4_dequant
        cols = shape[-1] if shape else 2 * stored[0].shape[-1]
        return nvfp4_dequant(stored[0], stored[1], stored[2], cols, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels_nvfp4 import nvfp4_error_bound
        return nvfp4_error_bound(weight)


@dataclass(frozen=True)
class Int4Group(QuantFormat, register=False):
    """Symmetric INT4 with one BF16 scale per ``group`` along K, packed eight per int32 as
    compressed-tensors' pack-quantized W4A16 (``weight_packed``, ``weight_scale``, ``weight_shape``).
    Error: half a step, s / 2 with s = bf16(amax / 7) of the group."""

    group: ClassVar[int]
    config_family = "compressed-tensors"
    ct_scheme = ("W4A16", "pack-quantized")   # compressed-tensors' preset and compressor

    def stored(self, name, shape):
        *lead, rows, cols = shape
        base = _base(name)
        return (StoredTensor(base + ".weight_packed", "I32", (*lead, rows, ceil(cols / 8)), prod(shape)),
                StoredTensor(base + ".weight_scale", "BF16", (*lead, rows, ceil(cols / self.group)), 0),
                StoredTensor(base + ".weight_shape", "I64", (len(shape),), 0))

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_int import int4_quant
        q, scale = int4_quant(weight, self.group)
        return self.pack(q, scale)

    def pack(self, q, scale) -> tuple:
        """Stored tensors from integer codes and scales (also used by GPTQ)."""
        import torch
        from mv4deploy.formats.kernels_int import int4_pack
        return int4_pack(q), scale.to(torch.bfloat16), torch.tensor(tuple(q.shape), dtype=torch.int64)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_int import int4_dequant
        packed, scale, logical = stored
        return int4_dequant(packed, scale, int(logical[-1]), self.group, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels import expand_groups
        from mv4deploy.formats.kernels_int import int4_group_scales
        s = expand_groups(int4_group_scales(weight, self.group).float(), self.group, weight.shape[-1])
        return s * (0.5 + 2.0**-20)


class Int4G128(Int4Group):
    name, compute, bits, group = "int4-g128", "int4", 4, 128
    ecosystem = Ecosystem("I32", {"quant_method": "compressed-tensors"}, "pack-quantized")


class Int4G32(Int4Group):
    name, compute, bits, group = "int4-g32", "int4", 4, 32
    ecosystem = Ecosystem("I32", {"quant_method": "compressed-tensors"}, "pack-quantized")


@dataclass(frozen=True)
class MatMulNBits4(QuantFormat, register=False):
    """onnxruntime's MatMulNBits (bits=4), as the onnxruntime-genai builder and MatMulNBitsQuantizer store
    a weight [N, K] (torch Linear layout): ``B`` U8 [N, ceil(K/block), block/2] (two codes per byte, low
    nibble first), ``scales`` F32 [N, ceil(K/block)], and when asymmetric ``zero_points`` U8
    [N, ceil(ceil(K/block)/2)] (4-bit, packed). Symmetric block 32 (the builder's CPU default) is
    4 + 32/32 = 5 bits per weight; the builder's ``GatherBlockQuantized`` embedding has the same bytes.
    The torch side reproduces onnxruntime's kernel bit for bit (``kernels_mnb``). Error: half a step, one
    step for values clamped from code 16 (symmetric). Checked against real exports in tests/test_export.py."""

    block: ClassVar[int]
    symmetric: ClassVar[bool] = True

    def stored(self, name, shape):
        *lead, rows, cols = shape
        blocks = ceil(cols / self.block)
        base = _base(name)
        out = [StoredTensor(base + ".weight_Q4", "U8", (*lead, rows, blocks, self.block // 2), prod(shape)),
               StoredTensor(base + ".weight_scales", "F32", (*lead, rows, blocks), 0)]
        if not self.symmetric:
            out.append(StoredTensor(base + ".weight_zp", "U8", (*lead, rows, ceil(blocks / 2)), 0))
        return tuple(out)

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_mnb import mnb4_quantize
        return mnb4_quantize(weight, self.block, self.symmetric)

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_mnb import mnb4_dequantize
        zero = None if self.symmetric else stored[2]
        return mnb4_dequantize(stored[0], stored[1], zero, shape[-1] if shape else None, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels_mnb import mnb4_error_bound
        if not self.symmetric:
            raise NotImplementedError(f"{self.name}: error_bound (asymmetric)")
        return mnb4_error_bound(weight, self.block)


class MatMulNBits4B32(MatMulNBits4):
    name, compute, bits, block = "mnb-int4-b32", "int4", 4, 32
    ecosystem = Ecosystem("U8", onnx="MatMulNBits")


def nf4_state_json(shape: tuple[int, ...]) -> bytes:
    """The JSON bitsandbytes packs into ``quant_state.bitsandbytes__nf4`` (same keys, order, spacing)."""
    return json.dumps({"quant_type": "nf4", "blocksize": NF4_BLOCK, "dtype": NF4_DTYPE,
                       "shape": list(shape)}).encode()


class NF4(QuantFormat):
    """bitsandbytes NF4 as transformers saves a ``Linear4bit`` (blocksize 64, no double quant): the
    flattened weight's codes two per byte ``[ceil(n/2), 1]`` U8, F32 ``absmax`` per 64, the 16-entry
    F32 ``quant_map`` and the packed JSON quant state. Quantized and dequantized by bitsandbytes.
    Error: half the widest NF4 gap (0.1385) times the block absmax, plus bf16 roundings."""

    name, compute, bits = "nf4", "bf16", 4
    ecosystem = Ecosystem("U8", {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                "bnb_4bit_quant_type": "nf4"})
    min_ndim = 1
    config_family = "bitsandbytes"

    def stored(self, name, shape):
        n = prod(shape)
        return (StoredTensor(name, "U8", ((n + 1) // 2, 1), n),
                StoredTensor(name + ".absmax", "F32", (ceil(n / NF4_BLOCK),), 0),
                StoredTensor(name + ".quant_map", "F32", (16,), 0),
                StoredTensor(name + ".quant_state.bitsandbytes__nf4", "U8", (len(nf4_state_json(shape)),), 0))

    def _quantize(self, weight):
        from mv4deploy.formats.kernels_int import nf4_quant
        return nf4_quant(weight, NF4_BLOCK, nf4_state_json(tuple(weight.shape)))

    def _dequantize(self, stored, shape, dtype):
        from mv4deploy.formats.kernels_int import nf4_dequant
        state = json.loads(bytes(stored[3].tolist()))
        return nf4_dequant(stored[0], stored[1], stored[2], tuple(state["shape"]), NF4_BLOCK, dtype)

    def error_bound(self, weight):
        from mv4deploy.formats.kernels_int import nf4_error_bound
        return nf4_error_bound(weight, NF4_BLOCK)
