"""Slow, obviously correct references for the fast 4-bit kernels (tests only), written differently from
them: no lookup tables, no bit tricks, no strips. Each is the format's rule as its library states it."""

from __future__ import annotations

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_codes_ref(v: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 magnitude by distance (float64: exact enough that a float32 v ties only when it *is* a
    midpoint), ties to the even code; values beyond 6 go to 6; sign in bit 3 (-0 keeps it)."""
    mag = v.double().abs().clamp(max=6.0).reshape(-1, 1)
    dist = (mag - torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64)).abs()      # [n, 8]
    best = dist.min(dim=1, keepdim=True).values
    ties = dist == best
    even_tie = ties & (torch.arange(8) % 2 == 0)
    code = torch.where(ties.sum(1) > 1, even_tie.float().argmax(1), dist.argmin(1))
    return (code | (torch.signbit(v.reshape(-1)).long() << 3)).to(torch.uint8).reshape(v.shape)


def nf4_ref(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' CPU rule on whole blocks of the flattened bf16 weight: v = w * (1 / absmax) in
    float32, code = how many midpoints of adjacent NF4 levels lie strictly below v; packed two per
    byte, first value in the high nibble. (packed uint8 [n/2], absmax f32 [n/block])."""
    import bitsandbytes.functional as bnb
    levels = bnb.get_4bit_type("nf4", device="cpu").float()
    mids = (levels[1:] + levels[:-1]) / 2
    x = w.to(torch.bfloat16).float().reshape(-1, block)
    absmax = x.abs().amax(dim=1)
    v = (x * (1.0 / absmax.clamp(min=1e-38))[:, None]).reshape(-1)
    codes = (v[:, None] > mids[None, :]).sum(dim=1)
    return (codes[0::2] * 16 + codes[1::2]).to(torch.uint8), absmax


def int4_pack_ref(q: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' layout in plain arithmetic: word j of a row holds q[8j + i] + 8 at bits 4i."""
    rows, cols = q.shape
    words = -(-cols // 8)
    u = torch.zeros(rows, words * 8, dtype=torch.int64)
    u[:, :cols] = q.long() + 8
    weights = torch.tensor([16**i for i in range(8)], dtype=torch.int64)
    packed = (u.reshape(rows, words, 8) * weights).sum(-1)          # < 2**32
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def pack_low_first_ref(codes: torch.Tensor) -> torch.Tensor:
    """[..., C] codes -> [..., ceil(C/2)] bytes, first of each pair in the low nibble (last one padded with 0)."""
    c = codes.long()
    if c.shape[-1] % 2:
        c = torch.cat([c, torch.zeros(*c.shape[:-1], 1, dtype=torch.long)], dim=-1)
    return (c[..., 0::2] + 16 * c[..., 1::2]).to(torch.uint8)
