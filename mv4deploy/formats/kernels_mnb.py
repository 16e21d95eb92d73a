"""onnxruntime's MatMulNBits 4-bit block quantization: onnxruntime's own quantizer, called as its
``MatMulNBitsQuantizer`` calls it (``onnxruntime.capi._pybind_state.quantize_matmul_4bits`` on the weight
transposed to ONNX's [K, N], K zero-padded to whole blocks). Torch keeps the dequantization, the error
bound and one corner: blocks whose scale is so small that MLAS's float32 reciprocal overflows (absmax below
~2^-124) get saturated codes from MLAS; for a symmetric weight those blocks are re-coded here by exact
division (``_exact_codes``), which keeps the round trip within its bound and idempotent.

What MLAS ``QuantizeBlockwise`` computes (used as it comes: torch does not re-implement these rules; the
error bound re-derives the symmetric scale), per block of ``block`` values along K of a weight [*, N, K]
(K zero-padded to whole blocks, the padding taking part in the block's range, as the quantizer pads
before calling the kernel):

- symmetric: the value of largest magnitude (``max`` if ``|max| > |min|`` else ``min``; for a block of
  zeros the first one, whose sign decides the sign of a zero scale) divided by -8 is the scale, so that
  value lands exactly on code 0; codes are ``roundf(v / scale + 8)`` clamped to [0, 15];
- asymmetric: the range is widened to include 0, ``scale = (max - min) / 15``, the zero point is
  ``roundf(-min / scale)`` clamped to [0, 15] (``min`` itself when the scale is 0), codes ``roundf(v /
  scale + zp)`` clamped.

``v / scale`` is computed as ``v * (1 / scale)`` in float32 and ``roundf`` rounds halves away from zero,
as MLAS does. One deliberate difference: where the scale is so small (a block absmax below ~2^-124) that
its float32 reciprocal overflows, MLAS produces saturated codes; here the division is done in float64
(symmetric only: an asymmetric weight keeps MLAS's codes).
Codes pack two per byte, low nibble first; zero points too, an odd count padded with 8.
Checked against onnxruntime's exports in tests/test_export_formats.py.
"""

from __future__ import annotations

from math import ceil

import torch
from torch import Tensor

CODE_MAX = 15
SYM_ZERO = 8


def _roundf(x: Tensor) -> Tensor:
    """C ``roundf``: halves away from zero (torch.round rounds them to even)."""
    t = torch.trunc(x)
    return t + torch.where((x - t).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def _blocks(weight: Tensor, block: int) -> Tensor:
    """[*, N, K] -> float32 [*, N, ceil(K/block), block], zero-padded."""
    k = weight.shape[-1]
    w = torch.nn.functional.pad(weight.float(), (0, ceil(k / block) * block - k))
    return w.reshape(*w.shape[:-1], -1, block)


def _exact_codes(w: Tensor, scale: Tensor) -> Tensor:
    """Symmetric codes of blocks [M, block] with nonzero scales [M]: ``roundf(v / scale + 8)`` clamped to
    [0, 15], the quotient taken in float64 and the sum rounded to float32 (where MLAS multiplies by a float32
    reciprocal, which overflows for these scales)."""
    x = (w.double() / scale.double()[:, None] + SYM_ZERO).float()
    return _roundf(x).clamp(0, CODE_MAX).to(torch.uint8)


def _pack(codes: Tensor) -> Tensor:
    """Codes [..., block] (block even) -> bytes [..., block/2], low nibble first."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(packed: Tensor) -> Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def mnb4_quantize(weight: Tensor, block: int, symmetric: bool) -> tuple[Tensor, ...]:
    """Weight [*, N, K] -> (B uint8 [*, N, blocks, block/2], scales float32 [*, N, blocks]
    (, zero points uint8 [*, N, ceil(blocks/2)] when asymmetric)), by onnxruntime's quantizer."""
    *lead, n, k = weight.shape
    parts = [_ort_quantize(w, block, symmetric) for w in weight.reshape(-1, n, k).float()]
    out = [torch.stack([p[i] for p in parts]).reshape(*lead, *parts[0][i].shape) for i in range(len(parts[0]))]
    return tuple(out)


def _ort_quantize(w: Tensor, block: int, symmetric: bool) -> tuple[Tensor, ...]:
    """One [N, K] matrix through ``quantize_matmul_4bits`` ([K, N] float32 in, as MatMulNBitsQuantizer)."""
    import numpy as np
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    n, k = w.shape
    blocks = ceil(k / block)
    kn = np.ascontiguousarray(torch.nn.functional.pad(w, (0, blocks * block - k)).T.numpy())
    packed = np.zeros((n, blocks, block // 2), dtype=np.uint8)
    scales = np.zeros(n * blocks, dtype=np.float32)
    zero = np.zeros(n * ((blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, kn, scales, zero, block, n, blocks * block, symmetric)
    packed, scales = torch.from_numpy(packed), torch.from_numpy(scales).view(n, blocks)
    overflow = torch.isinf(1.0 / scales) & (scales != 0)
    if symmetric and bool(overflow.any()):   # MLAS saturates these blocks: code them by exact division
        codes = _unpack(packed)                                         # [N, blocks, block]
        codes[overflow] = _exact_codes(_blocks(w, block)[overflow], scales[overflow])
        packed = _pack(codes)
    if symmetric:
        return packed, scales
    return packed, scales, torch.from_numpy(zero).view(n, -1)


def mnb4_dequantize(packed: Tensor, scale: Tensor, zero_points: Tensor | None, cols: int | None,
                    dtype=torch.float32) -> Tensor:
    """The weight [*, N, K] (K = ``cols``, or whole blocks when not given)."""
    codes = _unpack(packed).float()                                     # [*, N, blocks, block]
    if zero_points is None:
        zero = torch.full_like(scale, float(SYM_ZERO))
    else:
        zero = _unpack(zero_points)[..., : scale.shape[-1]].float()
    # + 0.0 turns -0.0 (code == zero times a negative scale) into +0.0, so that quantizing the result
    # again picks the same sign for a zero block's scale (idempotence)
    w = ((codes - zero[..., None]) * scale.float()[..., None] + 0.0).flatten(-2)
    return w[..., :cols].to(dtype)                                      # cols None: all


def mnb4_error_bound(weight: Tensor, block: int) -> Tensor:
    """Bound on |dequantize(quantize(w)) - w| for the symmetric kernel: half a step, or a whole step for
    values on the side opposite the block's extreme beyond 7.5 steps (code 16 clamps to 15), plus
    float32 rounding of the reciprocal and of the product, plus 2**-146 for subnormal scales."""
    w = _blocks(weight, block)
    vmax, vmin = w.amax(-1, keepdim=True), w.amin(-1, keepdim=True)
    extreme = torch.where(vmax.abs() > vmin.abs(), vmax, vmin)         # lands on code 0: scale extreme / -8
    step = extreme.abs() / SYM_ZERO
    clamped = (torch.sign(w) != torch.sign(extreme)) & (w.abs() > 7.5 * step)
    bound = torch.where(clamped, step, step / 2) + step * 2.0**-18 + 2.0**-146
    return bound.flatten(-2)[..., : weight.shape[-1]]
