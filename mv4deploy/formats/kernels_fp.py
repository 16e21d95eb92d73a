"""Float kernels: FP8 e4m3 with 128x128 / 32x32 block scales (F32 or UE8M0), FP8 rows for Engram
tables, and MXFP4 (e2m1 packed two per byte with a UE8M0 scale per 32 along K).

Scaled values are computed as x * 2**-e, which is exact, so bf16 inputs are scaled in bf16 (half the
memory traffic of float32, same bits); the one rounding is the cast to the target grid. Work runs in
strips of rows (``row_strips``) written straight into the preallocated outputs.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mv4deploy.formats.kernels import (E2M1, E4M3, E4M3_MAX, abs_max, block_exponent, clamp_scaled, e2m1_codes,
                                     e2m1_lut, e8m0_to_exp, exp_to_e8m0, pack_nibbles, pad_last, pad_rows_cols,
                                     pow2, row_strips)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32


def _tiles(x: torch.Tensor, block: int) -> torch.Tensor:
    """[R, C] -> zero-padded [R/b, b, C/b, b] tiles (a view unless padding was needed)."""
    xp = pad_rows_cols(x, block, block)
    rp, cp = xp.shape
    return xp.view(rp // block, block, cp // block, block)


def _untile(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    rb, br, cb, bc = t.shape
    return t.reshape(rb * br, cb * bc)[:rows, :cols]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- FP8 e4m3 with block scales
F32_SCALE_MAX = float(torch.tensor(torch.finfo(torch.float32).max / E4M3_MAX).view(torch.int32).bitwise_and(~0xF)
                      .view(torch.float32))  # largest 20-bit scale with 448 * s finite


def fp8_f32_scale(amax: torch.Tensor) -> torch.Tensor:
    """V3 ``weight_scale_inv``: amax / 448 rounded *up* to 20 significant bits, so 448 * s and every
    e4m3 value times s are exact in float32 (re-quantizing a dequantized block gives back the same
    scale and bytes). Zero blocks get 1.0; tiny ones the smallest normal float32."""
    s = (amax.float() / E4M3_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
    s = ((s.view(torch.int32) + 0xF) & ~0xF).view(torch.float32).clamp_(max=F32_SCALE_MAX)
    return torch.where(amax > 0, s, torch.ones_like(s))


def fp8_tile_scales(tiles: torch.Tensor, ue8m0: bool):
    """(scale as stored, float32 scale, clamp limit, clamp needed) for [Rb, b, Cb, b] tiles."""
    amax = abs_max(tiles, (1, 3))
    if not ue8m0:
        s = fp8_f32_scale(amax)
        return s, s, torch.full_like(s, E4M3_MAX), True
    e, limit, clamp = block_exponent(amax, E4M3)
    return exp_to_e8m0(e), pow2(e), limit, clamp


def _fp8_block_strip(x: torch.Tensor, block: int, ue8m0: bool, q_out: torch.Tensor, s_out: torch.Tensor) -> None:
    tiles = _tiles(x, block)                                           # [Rb, b, Cb, b]
    stored, s, limit, clamp = fp8_tile_scales(tiles, ue8m0)
    if ue8m0:
        work = _work_dtype(x)
        scaled = tiles.to(work) * (1 / s).to(work)[:, None, :, None]   # times 2**-e: exact
    else:
        scaled = tiles.float() / s[:, None, :, None]
    if clamp:
        clamp_scaled(scaled, limit[:, None, :, None], E4M3_MAX)
    q_out.copy_(_untile(scaled, *x.shape))                             # the one rounding: to e4m3
    s_out.copy_(stored)


def fp8_block_quant(x: torch.Tensor, block: int, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[*lead, R, C] -> (e4m3 [*lead, R, C], scale [*lead, ceil(R/b), ceil(C/b)]).

    UE8M0: payload round(x * 2**-e) with e from ``block_exponent``. F32: payload round(x / s)."""
    rows, cols = x.shape[-2:]
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((*x.shape[:-2], _cdiv(rows, block), _cdiv(cols, block)),
                        dtype=torch.float8_e8m0fnu if ue8m0 else torch.float32, device=x.device)
    for m, qm, sm in zip(x.reshape(-1, rows, cols), q.view(-1, rows, cols), scale.view(-1, *scale.shape[-2:])):
        for a, b in row_strips(m, block):
            _fp8_block_strip(m[a:b], block, ue8m0, qm[a:b], sm[a // block:_cdiv(b, block)])
    return q, scale


def fp8_block_dequant(q: torch.Tensor, scale: torch.Tensor, block: int, dtype=torch.float32) -> torch.Tensor:
    """DeepSeek's formula: each e4m3 value times its tile's scale (partial edge tiles included)."""
    s = pow2(e8m0_to_exp(scale)) if scale.dtype == torch.float8_e8m0fnu else scale.float()
    rows, cols = q.shape[-2:]
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    for m, om, sm in zip(q.view(-1, rows, cols), out.view(-1, rows, cols), s.view(-1, *s.shape[-2:])):
        for a, b in row_strips(m, block):
            tiles = _tiles(m[a:b].float(), block)
            tiles.mul_(sm[a // block:_cdiv(b, block), None, :, None])
            om[a:b].copy_(_untile(tiles, b - a, cols))
    return out


def fp8_block_scale_per_element(x: torch.Tensor, block: int, ue8m0: bool) -> torch.Tensor:
    """The float32 scale of each element's tile, shaped like x (for error bounds)."""
    out = []
    for m in x.reshape(-1, *x.shape[-2:]):
        tiles = _tiles(m, block)
        s = fp8_tile_scales(tiles, ue8m0)[1]
        full = torch.zeros(tiles.shape, dtype=torch.float32, device=x.device) + s[:, None, :, None]
        out.append(_untile(full, *m.shape))
    return torch.stack(out).reshape(x.shape)


# ---------------------------------------------------------------- groups along the last dim
def _groups(x: torch.Tensor, group: int) -> torch.Tensor:
    return pad_last(x, group).unflatten(-1, (-1, group))                # [..., G, group]


def group_scales(x: torch.Tensor, group: int, grid):
    """(exponent e, clamp limit, clamp needed) per group of ``group`` along the last dim."""
    return block_exponent(abs_max(_groups(x, group), (-1,)), grid)


def group_scale_per_element(x: torch.Tensor, group: int, grid) -> torch.Tensor:
    e = group_scales(x, group, grid)[0]
    return pow2(e).repeat_interleave(group, dim=-1)[..., : x.shape[-1]]


def _scaled_groups(x: torch.Tensor, group: int, grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * 2**-e clamped to the grid's range, as [rows, G, group]; e) for one strip."""
    e, limit, clamp = group_scales(x, group, grid)
    work = _work_dtype(x)
    scaled = _groups(x, group).to(work) * pow2(-e, work)[..., None]
    if clamp:
        clamp_scaled(scaled, limit[..., None], grid.qmax)
    return scaled, e


def fp8_rows_quant(x: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (e4m3 [..., C], e8m0 [..., ceil(C/32)]): one UE8M0 scale per 32 along each row."""
    cols = x.shape[-1]
    flat = x.reshape(-1, cols)
    q = torch.empty(flat.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((flat.shape[0], _cdiv(cols, group)), dtype=torch.float8_e8m0fnu, device=x.device)
    for a, b in row_strips(flat):
        scaled, e = _scaled_groups(flat[a:b], group, E4M3)
        q[a:b].copy_(scaled.flatten(-2)[:, :cols])
        scale[a:b].copy_(exp_to_e8m0(e))
    return q.view(x.shape), scale.view(*x.shape[:-1], -1)


def _dequant_groups(vals_fn, rows_like: torch.Tensor, scale: torch.Tensor, group: int, cols: int, dtype):
    """Dequantize strip by strip: ``vals_fn(a, b)`` gives unscaled float32 [b - a, cols] values."""
    fs = scale.reshape(-1, scale.shape[-1])
    out = torch.empty((fs.shape[0], cols), dtype=dtype, device=scale.device)
    for a, b in row_strips(rows_like):
        g = _groups(vals_fn(a, b), group)
        g.mul_(pow2(e8m0_to_exp(fs[a:b]))[..., None])
        out[a:b].copy_(g.flatten(-2)[:, :cols])
    return out


def fp8_rows_dequant(q: torch.Tensor, scale: torch.Tensor, group: int = 32, dtype=torch.float32) -> torch.Tensor:
    fq = q.reshape(-1, q.shape[-1])
    return _dequant_groups(lambda a, b: fq[a:b].float(), fq, scale, group, q.shape[-1], dtype).view(q.shape)


# ---------------------------------------------------------------- MXFP4
@lru_cache(maxsize=8)
def _bf16_to_e2m1(device: str) -> torch.Tensor:
    """[65536] uint8: the e2m1 code (RNE, ties to even) of every bf16 bit pattern (|v| <= 6)."""
    values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    return e2m1_codes(values.nan_to_num(0.0).clamp(-6, 6)).to(device)


def e2m1_key(v: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 index into the 64K e2m1 table: v narrowed to bf16 with round-to-odd (truncate, then
    set the last bit if anything was dropped), which makes the table's rounding exact (bf16 keeps 6 more
    bits than e2m1, so no e2m1 midpoint lies strictly between a truncation and the next bf16 value)."""
    bits = v.view(torch.int32)
    key = torch.bitwise_right_shift(bits, 16).bitwise_and_(0xFFFF)
    dropped = torch.bitwise_and(bits, 0xFFFF).add_(0xFFFF).bitwise_right_shift_(16)   # 1 where the low half != 0
    return key.bitwise_or_(dropped)


def e2m1_codes_fast(v: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled values (|v| > 6 counts as 6, NaN as 0) -> e2m1 codes through a 64K table indexed by bf16 bits
    (``index_select``: 1 ns a value, advanced indexing 3); float32 goes through ``e2m1_key``."""
    v = v.contiguous()
    index = e2m1_key(v) if v.dtype == torch.float32 else v.view(torch.uint16).to(torch.int32)
    table = _bf16_to_e2m1(str(v.device)) if table is None else table
    return torch.index_select(table, 0, index.view(-1)).view(v.shape)


E2M1_STRIP_BYTES = 1 << 20   # input bytes per MXFP4 / NVFP4 strip: their temporaries stay in L2


def mxfp4_quant(x: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (int8 [..., ceil(C/2)]: two e2m1 codes per byte, low nibble first (sign in bit 3);
    e8m0 [..., ceil(C/32)]). An odd K leaves the last high nibble 0. Values are x * 2**-e (exact) looked
    up in the e2m1 table, which rounds anything beyond +-6 to +-6 itself: the clamp pass runs only for
    groups whose limit is below 6 (weights near float32's maximum)."""
    cols = x.shape[-1]
    flat = x.reshape(-1, cols)
    packed = torch.empty((flat.shape[0], _cdiv(cols, 2)), dtype=torch.uint8, device=x.device)
    scale = torch.empty((flat.shape[0], _cdiv(cols, group)), dtype=torch.float8_e8m0fnu, device=x.device)
    work = _work_dtype(x)
    for a, b in row_strips(flat, chunk_bytes=E2M1_STRIP_BYTES):
        e, limit, _ = group_scales(flat[a:b], group, E2M1)
        scaled = _groups(flat[a:b], group).to(work) * pow2(-e, work)[..., None]   # [rows, G, group]
        if not bool((limit >= E2M1.qmax).all()):
            clamp_scaled(scaled, limit[..., None], E2M1.qmax)
        codes = pad_last(e2m1_codes_fast(scaled.flatten(-2)[:, :cols]), 2)
        pairs = torch.empty(codes.numel() // 2, dtype=torch.int16, device=x.device)
        pack_nibbles(codes.reshape(-1), pairs, False, packed[a:b].view(-1))
        scale[a:b].copy_(exp_to_e8m0(e))
    return packed.view(torch.int8).view(*x.shape[:-1], -1), scale.view(*x.shape[:-1], -1)


@lru_cache(maxsize=8)
def _byte_pairs(device: str) -> torch.Tensor:
    """[256, 2] float32: the e2m1 values of each byte's (low, high) nibbles."""
    lut, b = e2m1_lut("cpu"), torch.arange(256)
    return torch.stack([lut[b & 0xF], lut[b >> 4]], dim=-1).to(device)


def mxfp4_unpack(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """int8 [..., P] -> unscaled float32 e2m1 values [..., cols]."""
    pairs = _byte_pairs(str(packed.device))[packed.view(torch.uint8).to(torch.int32)]
    return pairs.flatten(-2)[..., :cols]


def mxfp4_dequant(packed: torch.Tensor, scale: torch.Tensor, cols: int, group: int = 32,
                  dtype=torch.float32) -> torch.Tensor:
    fp = packed.reshape(-1, packed.shape[-1])
    out = _dequant_groups(lambda a, b: mxfp4_unpack(fp[a:b], cols), fp, scale, group, cols, dtype)
    return out.view(*packed.shape[:-1], cols)
