"""Float kernels: FP8 e4m3 with 128x128 / 32x32 block scales (F32 or UE8M0), FP8 rows for Engram
tables, and MXFP4 (e2m1 packed two per byte with a UE8M0 scale per 32 along K).

Scaled values are computed as x * 2**-e, which is exact, so bf16 inputs are scaled in bf16 (half the
memory traffic of float32, same bits); the one rounding is the cast to the target grid.
"""

from __future__ import annotations

import torch

from mv4deploy.quant.kernels import (E2M1, E4M3, E4M3_MAX, block_exponent, clamp_scaled, e2m1_codes,
                                     e2m1_lut, e8m0_to_exp, exp_to_e8m0, pad_last, pad_rows_cols, pow2)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.float32


def _tiles(x: torch.Tensor, block: int) -> torch.Tensor:
    """[*lead, R, C] -> zero-padded [L, R/b, b, C/b, b] tiles (a view unless padding was needed)."""
    rows, cols = x.shape[-2:]
    xp = pad_rows_cols(x.reshape(-1, rows, cols), block, block)
    L, rp, cp = xp.shape
    return xp.view(L, rp // block, block, cp // block, block)


def _untile(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    L, rb, br, cb, bc = t.shape
    rows, cols = shape[-2:]
    return t.reshape(L, rb * br, cb * bc)[:, :rows, :cols].reshape(shape)


def _tile_amax(tiles: torch.Tensor) -> torch.Tensor:
    return tiles.abs().amax(dim=(2, 4)).float()                    # [L, Rb, Cb]


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


def fp8_block_scales(x: torch.Tensor, block: int, ue8m0: bool):
    """(scale as stored, float32 scale, clamp limit) per tile, each [L, Rb, Cb]."""
    amax = _tile_amax(_tiles(x, block))
    if not ue8m0:
        s = fp8_f32_scale(amax)
        return s, s, torch.full_like(s, E4M3_MAX)
    e, limit = block_exponent(amax, E4M3)
    return exp_to_e8m0(e), pow2(e), limit


def fp8_block_quant(x: torch.Tensor, block: int, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[*lead, R, C] -> (e4m3 [*lead, R, C], scale [*lead, ceil(R/b), ceil(C/b)]).

    UE8M0: payload round(x * 2**-e) with e from ``block_exponent``. F32: payload round(x / s)."""
    tiles = _tiles(x, block)
    stored, s, limit = fp8_block_scales(x, block, ue8m0)
    if ue8m0:
        work = _work_dtype(x)
        scaled = tiles.to(work) * (1 / s).to(work)[:, :, None, :, None]  # 1/2**e is exact
    else:
        scaled = tiles.float() / s[:, :, None, :, None]
    q = clamp_scaled(scaled, limit[:, :, None, :, None], E4M3_MAX).to(torch.float8_e4m3fn)
    return _untile(q, x.shape), stored.reshape(*x.shape[:-2], *stored.shape[-2:])


def fp8_block_dequant(q: torch.Tensor, scale: torch.Tensor, block: int, dtype=torch.float32) -> torch.Tensor:
    """DeepSeek's formula: each e4m3 value times its tile's scale (partial edge tiles included)."""
    s = pow2(e8m0_to_exp(scale)) if scale.dtype == torch.float8_e8m0fnu else scale.float()
    tiles = _tiles(q.float(), block)
    tiles.mul_(s.reshape(-1, *s.shape[-2:])[:, :, None, :, None])
    return _untile(tiles, q.shape).to(dtype)


def fp8_block_scale_per_element(x: torch.Tensor, block: int, ue8m0: bool) -> torch.Tensor:
    """The float32 scale of each element's tile, shaped like x (for error bounds)."""
    _, s, _ = fp8_block_scales(x, block, ue8m0)
    full = torch.zeros(_tiles(x, block).shape, dtype=torch.float32, device=x.device) + s[:, :, None, :, None]
    return _untile(full, x.shape)


# ---------------------------------------------------------------- groups along the last dim
def _groups(x: torch.Tensor, group: int) -> torch.Tensor:
    return pad_last(x, group).unflatten(-1, (-1, group))             # [..., G, group]


def group_scales(x: torch.Tensor, group: int, grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(exponent e, clamp limit) per group of ``group`` along the last dim."""
    return block_exponent(_groups(x, group).abs().amax(dim=-1).float(), grid)


def group_scale_per_element(x: torch.Tensor, group: int, grid) -> torch.Tensor:
    e, _ = group_scales(x, group, grid)
    return pow2(e).repeat_interleave(group, dim=-1)[..., : x.shape[-1]]


def fp8_rows_quant(x: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (e4m3 [..., C], e8m0 [..., ceil(C/32)]): one UE8M0 scale per 32 along each row."""
    e, limit = group_scales(x, group, E4M3)
    work = _work_dtype(x)
    scaled = _groups(x, group).to(work) * pow2(-e, work)[..., None]
    q = clamp_scaled(scaled, limit[..., None], E4M3_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2)[..., : x.shape[-1]], exp_to_e8m0(e)


def _apply_group_scale(vals: torch.Tensor, scale: torch.Tensor, group: int, cols: int, dtype) -> torch.Tensor:
    g = _groups(vals, group)
    g.mul_(pow2(e8m0_to_exp(scale))[..., None])
    return g.flatten(-2)[..., :cols].to(dtype)


def fp8_rows_dequant(q: torch.Tensor, scale: torch.Tensor, group: int = 32, dtype=torch.float32) -> torch.Tensor:
    return _apply_group_scale(q.float(), scale, group, q.shape[-1], dtype)


# ---------------------------------------------------------------- MXFP4
def mxfp4_quant(x: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., C] -> (int8 [..., ceil(C/2)]: two e2m1 codes per byte, low nibble first (sign in bit 3);
    e8m0 [..., ceil(C/32)]). An odd K leaves the last high nibble 0."""
    cols = x.shape[-1]
    e, limit = group_scales(x, group, E2M1)
    scaled = clamp_scaled(_groups(x, group).float() * pow2(-e)[..., None], limit[..., None], E2M1.qmax)
    codes = pad_last(e2m1_codes(scaled).flatten(-2)[..., :cols], 2)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.view(torch.int8), exp_to_e8m0(e)


def _byte_pairs(device) -> torch.Tensor:
    """[256, 2] float32: the e2m1 values of each byte's (low, high) nibbles."""
    lut, b = e2m1_lut(device), torch.arange(256, device=device)
    return torch.stack([lut[b & 0xF], lut[b >> 4]], dim=-1)


def mxfp4_unpack(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """int8 [..., P] -> unscaled float32 e2m1 values [..., cols]."""
    return _byte_pairs(packed.device)[packed.view(torch.uint8).long()].flatten(-2)[..., :cols]


def mxfp4_dequant(packed: torch.Tensor, scale: torch.Tensor, cols: int, group: int = 32,
                  dtype=torch.float32) -> torch.Tensor:
    return _apply_group_scale(mxfp4_unpack(packed, cols), scale, group, cols, dtype)
