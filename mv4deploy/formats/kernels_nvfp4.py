"""NVFP4 as compressed-tensors stores it (``nvfp4-pack-quantized``, the NVFP4A16 weights vLLM and SGLang run
on Blackwell): e2m1 codes two per byte (low nibble first, sign = bit 3), one FP8 e4m3 scale per 16 values
along K, one F32 global scale per matrix; w = e2m1 * scale / global_scale. The group scales are
compressed-tensors' own (``calculate_qparams``), and so is unpacking (``unpack_fp4_from_uint8``). The codes
are its rule -- v = w / (scale / global_scale), clamped to +-6, rounded to e2m1 (ties to even), packed --
computed strip by strip through the e2m1 table MXFP4 uses (``kernels_fp.e2m1_codes_fast``): its
``quantize_and_pack_fp4`` runs at 0.03 GB/s per CPU thread, this at copy speed; the bytes are identical
(``tests/test_formats_reference.py``). Imported lazily (torch, compressed-tensors).

One choice is ours: the global scale. compressed-tensors' observer takes 448 * 6 / amax; we take the power
of two 2**k with 1344 <= amax * 2**k < 2688 (and halve it when the largest group's scale would round up to
448), so the largest group's FP8 scale lies in [224, 448) and dividing by the global scale is exact. A
dequantized weight then re-quantizes to the same global scale and, wherever its FP8 group scales are
normal, to the same bytes.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mv4deploy.formats.kernels import abs_max, pack_nibbles, pad_last, row_strips

GROUP = 16
FP8_MAX, FP4_MAX = 448.0, 6.0


def _args():
    from compressed_tensors.quantization import preset_name_to_scheme
    return preset_name_to_scheme("NVFP4A16", ["Linear"]).weights


def global_scale(amax: torch.Tensor) -> torch.Tensor:
    """F32 [1]: 2**k with 1344 <= amax * 2**k < 2688, halved when amax * 2**k / 6 rounds to 448 in e4m3;
    1.0 for an all-zero matrix."""
    a = float(amax)
    if a == 0.0:
        return torch.ones(1)
    mantissa, exponent = torch.frexp(torch.tensor(FP8_MAX * FP4_MAX / 2 / a, dtype=torch.float64))
    k = int(exponent) - (1 if float(mantissa) == 0.5 else 0)       # 2**k >= 1344 / a, the smallest such
    k = max(-126, min(127, k))
    gs = torch.tensor([2.0**k], dtype=torch.float32)
    if float((amax.float() * gs / FP4_MAX).to(torch.float8_e4m3fn).float()) >= FP8_MAX:
        gs = gs / 2
    return gs


def nvfp4_quant(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[*lead, R, C] -> (packed uint8 [*lead, R, ceil(C/2)], scale e4m3 [*lead, R, ceil(C/16)],
    global scale f32 [*lead, 1]); K is zero-padded to a multiple of 16 first."""
    from compressed_tensors.quantization.utils import calculate_qparams
    *lead, rows, cols = weight.shape
    flat = weight.reshape(-1, rows, cols)
    packed, scales, gss = [], [], []
    for w in flat:
        gmax = _group_amax(w)                                                 # [R, G] float32
        gs = global_scale(gmax.max())
        scale = _finite(calculate_qparams(-gmax, gmax, _args(), global_scale=gs)[0], gs)
        packed.append(_codes(w, scale.float() / gs))
        scales.append(scale.to(torch.float8_e4m3fn))
        gss.append(gs)
    return (torch.stack(packed).reshape(*lead, rows, -1).contiguous(),
            torch.stack(scales).reshape(*lead, rows, -1).contiguous(),
            torch.stack(gss).reshape(*lead, 1).contiguous())


def _group_amax(w: torch.Tensor) -> torch.Tensor:
    """[R, C] -> max |w| per group of 16 along K, float32 [R, ceil(C/16)], strip by strip (in cache)."""
    from mv4deploy.formats.kernels_fp import E2M1_STRIP_BYTES
    out = torch.empty((w.shape[0], -(-w.shape[1] // GROUP)), dtype=torch.float32, device=w.device)
    for a, b in row_strips(w, chunk_bytes=E2M1_STRIP_BYTES):
        out[a:b] = abs_max(pad_last(w[a:b], GROUP).unflatten(-1, (-1, GROUP)), (-1,))
    return out


def _codes(w: torch.Tensor, s_eff: torch.Tensor) -> torch.Tensor:
    """[R, C] weight, [R, G] effective scales -> uint8 [R, ceil(C/2)] packed e2m1 codes, strip by strip:
    v = w / s_eff in float32, then the e2m1 table (``_table``: its clamp to +-6 and -0 -> +0 included)."""
    from mv4deploy.formats.kernels_fp import E2M1_STRIP_BYTES, e2m1_codes_fast
    rows, cols = w.shape
    out = torch.empty((rows, -(-cols // 2)), dtype=torch.uint8, device=w.device)
    table = _table(str(w.device))
    for a, b in row_strips(w, chunk_bytes=E2M1_STRIP_BYTES):
        v = torch.div(pad_last(w[a:b], GROUP).unflatten(-1, (-1, GROUP)), s_eff[a:b, :, None])   # float32
        codes = pad_last(e2m1_codes_fast(v.flatten(-2)[:, :cols], table), 2)
        pack_nibbles(codes.reshape(-1), torch.empty(codes.numel() // 2, dtype=torch.int16, device=w.device),
                     False, out[a:b].view(-1))
    return out


@lru_cache(maxsize=4)
def _table(device: str) -> torch.Tensor:
    """MXFP4's e2m1 table, except that an exact -0 codes as +0 (compressed-tensors: sign(-0) * 0), while
    tiny negatives keep the sign (their key has the round-to-odd bit set)."""
    from mv4deploy.formats.kernels_fp import _bf16_to_e2m1
    table = _bf16_to_e2m1("cpu").clone()
    table[0x8000] = 0
    return table.to(device)


def _finite(scale: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Scales so large that 6 * scale / global scale overflows float32 (weights near the bf16 maximum)
    step down to the largest e4m3 value whose product is finite (the largest values then clamp)."""
    limit = torch.finfo(torch.float32).max / FP4_MAX * float(gs)
    e4m3 = scale.to(torch.float8_e4m3fn)
    over = e4m3.float() > limit
    if not bool(over.any()):
        return scale
    below = torch.tensor(limit).to(torch.float8_e4m3fn)
    if float(below.float()) > limit:
        below = (below.view(torch.uint8) - 1).view(torch.float8_e4m3fn)
    return torch.where(over, below.float(), scale)


def nvfp4_dequant(packed: torch.Tensor, scale: torch.Tensor, gs: torch.Tensor, cols: int,
                  dtype=torch.float32) -> torch.Tensor:
    """The logical weight: compressed-tensors' unpack, times scale / global scale (exact: 2**k)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    *lead, rows, half = packed.shape
    codes = unpack_fp4_from_uint8(packed.reshape(-1, half), packed[..., 0].numel(), 2 * half, torch.float32)
    codes = pad_last(codes.reshape(*lead, rows, 2 * half), GROUP).unflatten(-1, (-1, GROUP))
    values = codes * (scale.float() / gs.float()[..., None])[..., None]
    return values.flatten(-2)[..., :cols].to(dtype)


def nvfp4_error_bound(weight: torch.Tensor) -> torch.Tensor:
    """Half an e2m1 step at v = |w| / s (s = scale / global scale): max(s / 4, |w| / 4) (v <= 6.4 after the
    e4m3 rounding of s clips at 6: 0.4 < v / 4), plus, where s is an e4m3 subnormal or 0, the scale's
    absolute rounding: 6 * 2**-8 / global scale."""
    *lead, rows, cols = weight.shape
    flat = pad_last(weight.float(), GROUP).reshape(-1, rows, -(-cols // GROUP) * GROUP)
    out = []
    for w in flat:
        gmax = w.unflatten(-1, (-1, GROUP)).abs().amax(-1)
        gs = global_scale(gmax.max())
        s = (_finite(gmax * gs / FP4_MAX, gs).to(torch.float8_e4m3fn).float() / gs).repeat_interleave(GROUP, -1)
        floor = FP4_MAX * 2.0**-8 / float(gs)   # covers scales that are e4m3 subnormals or 0
        out.append((s / 4).maximum(w.abs() / 4) + floor)
    return torch.stack(out)[..., :cols].reshape(weight.shape)
