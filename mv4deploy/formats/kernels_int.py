"""Integer and lookup-table 4-bit kernels: symmetric INT4 groups packed by compressed-tensors' own
``pack_to_int32`` (pack-quantized W4A16), and NF4 as bitsandbytes codes it. Imported lazily (torch)."""

from __future__ import annotations

from functools import lru_cache

import torch

from mv4deploy.formats.kernels import abs_max, pad_last, row_strips

INT4_QMAX = 7          # symmetric: q in [-7, 7] (the int4 range [-8, 7] is clamped to, never reached)


# ---------------------------------------------------------------- INT4, symmetric, one scale per group along K
# Largest bf16 scale with 7 * s finite in float32 (float32 bits truncated to bf16: rounds down).
INT4_SCALE_MAX = float(torch.tensor(torch.finfo(torch.float32).max / INT4_QMAX).view(torch.int32)
                       .bitwise_and(~0xFFFF).view(torch.float32))


def int4_scale(amax: torch.Tensor) -> torch.Tensor:
    """amax / 7 rounded to bf16 (the stored scale); zero (or underflowing) groups get 1.0."""
    s = (amax.float() / INT4_QMAX).to(torch.bfloat16).clamp_(max=INT4_SCALE_MAX)
    return torch.where(s > 0, s, torch.ones_like(s))


def int4_group_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    return int4_scale(abs_max(pad_last(x, group).unflatten(-1, (-1, group)), (-1,)))


def int4_quant(x: torch.Tensor, group: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (q int8 in [-8, 7] [..., C], bf16 scale [..., ceil(C/group)]).

    q = round_half_even(x / s): with s = bf16(amax / 7) the largest element maps to 7 (bf16 rounding
    moves it by < 0.03), so q stays in [-7, 7] and re-quantizing q * s gives back the same s and q.
    GPTQ passes its own ``scale``. Runs strip by strip (see ``kernels.row_strips``)."""
    cols = x.shape[-1]
    flat = x.reshape(-1, cols)
    q = torch.empty(flat.shape, dtype=torch.int8, device=x.device)
    s_all = torch.empty((flat.shape[0], -(-cols // group)), dtype=torch.bfloat16, device=x.device)
    given = None if scale is None else scale.reshape(-1, scale.shape[-1])
    for a, b in row_strips(flat):
        strip = flat[a:b]
        s = int4_group_scales(strip, group) if given is None else given[a:b]
        groups = pad_last(strip, group).unflatten(-1, (-1, group)).to(torch.float32, copy=True)
        groups.div_(s.float()[..., None]).round_().clamp_(-8, 7)
        q[a:b].copy_(groups.flatten(-2)[:, :cols])
        s_all[a:b].copy_(s)
    return q.view(x.shape), s_all.view(*x.shape[:-1], -1)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """int8 [..., C] in [-8, 7] -> int32 [..., ceil(C/8)]: compressed-tensors' own ``pack_to_int32(q, 4)``
    (element i at bits 4*(i % 8) of word i // 8, stored as q + 8), run on cache-sized strips of rows
    (3x faster than on the whole matrix at once)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    cols = q.shape[-1]
    flat = q.reshape(-1, cols)
    out = torch.empty((flat.shape[0], -(-cols // 8)), dtype=torch.int32, device=q.device)
    for a, b in row_strips(flat, chunk_bytes=1 << 20):
        out[a:b] = pack_to_int32(flat[a:b].contiguous(), 4)
    return out.view(*q.shape[:-1], -1)


def int4_unpack(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """int32 [..., P] -> int8 [..., cols] in [-8, 7]: compressed-tensors' ``unpack_from_int32``."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    flat = packed.reshape(-1, packed.shape[-1]).contiguous()
    return unpack_from_int32(flat, 4, torch.Size((flat.shape[0], cols))).view(*packed.shape[:-1], cols)


def int4_dequant(packed: torch.Tensor, scale: torch.Tensor, cols: int, group: int,
                 dtype=torch.float32) -> torch.Tensor:
    """q * s, computed exactly in float32 then rounded once to ``dtype`` (compressed-tensors multiplies
    in the scale's bf16, which is the same single rounding of the same exact product)."""
    q = pad_last(int4_unpack(packed, cols).float(), group).unflatten(-1, (-1, group))
    q.mul_(scale.float()[..., None])
    return q.flatten(-2)[..., :cols].to(dtype)


# ---------------------------------------------------------------- NF4 through bitsandbytes
def _bnb():
    import logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU import warns about optional kernels
    import bitsandbytes.functional as bnb_functional
    return bnb_functional


def nf4_quant(x: torch.Tensor, block: int, state_json: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    """(packed uint8 [ceil(n/2), 1], absmax f32 [ceil(n/block)], quant_map f32 [16], state uint8 [json]),
    byte for byte what bitsandbytes' ``quantize_4bit(bf16 x, block, "nf4")`` returns (tested): its CPU
    kernel is run on the tail (the last partial block), the whole blocks go through ``nf4_codes``."""
    flat = x.to(torch.bfloat16).reshape(-1)
    n = flat.numel()
    full = n - n % block
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=x.device)
    absmax = torch.empty(-(-n // block), dtype=torch.float32, device=x.device)
    step = max(block, (1 << 16) // block * block)
    for a in range(0, full, step):
        b = min(full, a + step)
        codes, absmax[a // block:b // block] = nf4_codes(flat[a:b].view(-1, block))
        packed[a // 2:b // 2, 0] = (codes[0::2] << 4) | codes[1::2]
    if full < n:   # the partial block: bitsandbytes itself
        q, state = _bnb().quantize_4bit(flat[full:].contiguous(), blocksize=block, quant_type="nf4",
                                        compress_statistics=False)
        packed[full // 2:] = q.reshape(-1, 1)
        absmax[full // block:] = state.absmax
    return packed, absmax, nf4_levels(), torch.tensor(list(state_json), dtype=torch.uint8)


def nf4_codes(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [m, block] -> (NF4 codes uint8 [m * block], absmax f32 [m]). bitsandbytes' rule: the code of
    v = clamp(w / absmax, -1, 1) is the number of level midpoints below v (its ``bucketize``, 4x slower).
    Here the top 16 bits of v's float32 index a table (``_nf4_table``): the code of the smallest value
    with those bits, plus one where a midpoint lies inside that 2**16-value interval and v is above it."""
    x = blocks.float()
    absmax = x.abs().amax(-1)
    v = x.mul_((1.0 / absmax.clamp(min=1e-38))[:, None]).clamp_(-1, 1).reshape(-1)
    base, above = _nf4_table(str(v.device))
    prefix = (v.view(torch.int32) >> 16) & 0xFFFF
    return base[prefix] + (v > above[prefix]), absmax


@lru_cache(maxsize=4)
def _nf4_table(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 16-bit float32 prefix p (the values [lo, hi] sharing it): (number of midpoints < lo, the one
    midpoint m with lo <= m < hi, else +inf). No interval holds two: midpoints are >= 0.08 apart."""
    levels = nf4_levels()
    mids = (levels[1:] + levels[:-1]) / 2                      # bitsandbytes' bounds, same arithmetic
    p = torch.arange(1 << 16, dtype=torch.int32)
    ends = torch.stack(((p << 16).view(torch.float32), ((p << 16) | 0xFFFF).view(torch.float32)))
    lo, hi = ends.amin(0), ends.amax(0)
    base = (mids[None, :] < lo[:, None]).sum(-1).to(torch.uint8)
    inside = (mids[None, :] >= lo[:, None]) & (mids[None, :] < hi[:, None])
    above = torch.where(inside.any(-1), (mids[None, :] * inside).sum(-1), torch.full_like(lo, float("inf")))
    return base.to(device), above.to(device)


def nf4_dequant(q: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor, shape: tuple[int, ...],
                block: int, dtype=torch.float32) -> torch.Tensor:
    """Dequantized as one flat row: bitsandbytes 0.50's CPU kernel mis-assigns absmax blocks for a 2-D
    shape whose last dim is not a multiple of 64 (its quantizer always blocks the flattened weight)."""
    bnb = _bnb()
    numel = int(torch.Size(shape).numel())
    state = bnb.QuantState(absmax=absmax, shape=torch.Size([numel]), code=quant_map, blocksize=block,
                           quant_type="nf4", dtype=torch.bfloat16)
    return bnb.dequantize_4bit(q, state).reshape(shape).to(dtype)


def nf4_levels() -> torch.Tensor:
    return _bnb().get_4bit_type("nf4", device="cpu").float()


def nf4_error_bound(x: torch.Tensor, block: int) -> torch.Tensor:
    """Half the widest gap between NF4 levels times the block absmax (of the bf16 weight), plus the
    bf16 roundings on the way in and out. Blocks whose absmax is subnormal are flushed to zero by
    bitsandbytes' CPU kernel (it multiplies by 1 / absmax), so their bound is the absmax itself."""
    levels = nf4_levels()
    half_gap = float((levels[1:] - levels[:-1]).max()) / 2
    xb = x.to(torch.bfloat16).float()
    flat = pad_last(xb.reshape(-1), block).unflatten(-1, (-1, block))
    absmax = flat.abs().amax(dim=-1).repeat_interleave(block)[: x.numel()].reshape(x.shape)
    into = (x.float() - xb).abs()
    flushed = torch.where(absmax < torch.finfo(torch.float32).tiny, absmax, torch.zeros_like(absmax))
    return absmax * half_gap * (1 + 2.0**-7) + xb.abs() * 2.0**-7 + into + flushed
