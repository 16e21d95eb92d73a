"""Integer and lookup-table 4-bit kernels: symmetric INT4 groups packed by compressed-tensors' own
``pack_to_int32`` (pack-quantized W4A16), and NF4 as bitsandbytes codes it. Imported lazily (torch)."""

from __future__ import annotations

from functools import lru_cache

import torch

from mv4deploy.formats.kernels import abs_max, pack_nibbles, pad_last, row_strips

INT4_STRIP_BYTES = 1 << 20   # input bytes per INT4 strip: the float32 temporaries stay in L2
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
    for a, b in row_strips(flat, chunk_bytes=INT4_STRIP_BYTES):
        strip = flat[a:b]
        s = int4_group_scales(strip, group) if given is None else given[a:b]
        groups = pad_last(strip, group).unflatten(-1, (-1, group)).to(torch.float32, copy=True)
        groups.div_(s.float()[..., None]).round_().clamp_(-8, 7)
        q[a:b].copy_(groups.flatten(-2)[:, :cols])
        s_all[a:b].copy_(s)
    return q.view(x.shape), s_all.view(*x.shape[:-1], -1)


def int4_pack(q: torch.Tensor) -> torch.Tensor:
    """int8 [..., C] in [-8, 7] -> int32 [..., ceil(C/8)], compressed-tensors' ``pack_to_int32(q, 4)`` bit for
    bit (element i at bits 4*(i % 8) of word i // 8, stored as q + 8; tested against it): on a little-endian
    machine that is q + 8 packed two per byte, low nibble first, read as int32. Its own scatter_add runs at
    6 ns a value on CPU, this at 0.3."""
    cols = q.shape[-1]
    flat = q.reshape(-1, cols)
    out = torch.empty((flat.shape[0], -(-cols // 8)), dtype=torch.int32, device=q.device)
    for a, b in row_strips(flat, chunk_bytes=INT4_STRIP_BYTES):
        codes = pad_last(torch.add(flat[a:b], 8).view(torch.uint8), 8).reshape(-1)   # [-8, 7] -> [0, 15]; pad 0
        pairs = torch.empty(codes.numel() // 2, dtype=torch.int16, device=q.device)
        pack_nibbles(codes, pairs, False, out[a:b].view(torch.uint8).view(-1))
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


NF4_STRIP = 1 << 17    # values per NF4 work unit: its temporaries (512 KB float32 / int32 each) stay in L2 (measured best)


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
    step = max(block, NF4_STRIP // block * block)
    work = _NF4Work(min(step, full), x.device)
    for a in range(0, full, step):
        b = min(full, a + step)
        codes = work.codes(flat[a:b].view(-1, block), absmax[a // block:b // block])
        pack_nibbles(codes, work.pairs[:(b - a) // 2], True, packed[a // 2:b // 2, 0])
    if full < n:   # the partial block: bitsandbytes itself
        q, state = _bnb().quantize_4bit(flat[full:].contiguous(), blocksize=block, quant_type="nf4",
                                        compress_statistics=False)
        packed[full // 2:] = q.reshape(-1, 1)
        absmax[full // block:] = state.absmax
    return packed, absmax, nf4_levels(), torch.tensor(list(state_json), dtype=torch.uint8)


class _NF4Work:
    """Buffers for one strip of NF4 blocks, reused strip after strip (no allocation, no page faults).

    bitsandbytes' rule: v = w * (1 / absmax) in float32 (its ``clamp(-1, 1)`` changes no code: |v| exceeds 1
    by at most an ulp, which has 1.0's prefix), code = number of level midpoints below v (its ``bucketize``,
    25 ns a value on CPU). Here the top 16 bits of v index a table (``_nf4_table``): the code of the smallest
    value with those bits, plus one where a midpoint lies inside that 2**16-value interval and v is above it."""

    def __init__(self, size: int, device):
        self.base, self.above = _nf4_table(str(device))
        self.v = torch.empty(size, dtype=torch.float32, device=device)
        self.prefix = torch.empty(size, dtype=torch.int32, device=device)
        self.code = torch.empty(size, dtype=torch.uint8, device=device)
        self.mid = torch.empty(size, dtype=torch.float32, device=device)
        self.up = torch.empty(size, dtype=torch.uint8, device=device)
        self.mag = torch.empty(size, dtype=torch.int16, device=device)
        self.pairs = torch.empty(size // 2, dtype=torch.int16, device=device)

    def codes(self, blocks: torch.Tensor, absmax_out: torch.Tensor) -> torch.Tensor:
        """bf16 [m, block] -> NF4 codes uint8 [m * block] (a view of the buffer); absmax f32 [m] into ``absmax_out``."""
        k = blocks.numel()
        bits = blocks.view(torch.int16)
        mag = torch.bitwise_and(bits, 0x7FFF, out=self.mag[:k].view(blocks.shape))
        absmax_out.copy_(mag.amax(-1).view(torch.bfloat16))        # |w| as integer bits: same order, exact
        v = self.v[:k]
        v.copy_(blocks.view(-1))                                    # bf16 -> float32: exact
        v.view(blocks.shape).mul_((1.0 / absmax_out.clamp(min=1e-38))[:, None])
        prefix = self.prefix[:k]
        prefix.copy_(v.view(torch.uint16)[1::2])                   # the high half of each (little-endian) float32
        code = torch.index_select(self.base, 0, prefix, out=self.code[:k])
        mid = torch.index_select(self.above, 0, prefix, out=self.mid[:k])
        return code.add_(torch.gt(v, mid, out=self.up[:k]))       # comparison written as 0 / 1 bytes


def nf4_codes(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 [m, block] -> (NF4 codes uint8 [m * block], absmax f32 [m]) (see ``_NF4Work``)."""
    absmax = torch.empty(blocks.shape[0], dtype=torch.float32, device=blocks.device)
    return _NF4Work(blocks.numel(), blocks.device).codes(blocks.contiguous(), absmax), absmax


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
