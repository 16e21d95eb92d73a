"""Torch primitives behind the format registry: power-of-two scales, FP8 / E2M1 grids, padding.

Imported lazily by ``formats.py`` (the planner never imports torch); the per-format kernels are in
``kernels_fp.py`` (FP8, MXFP4) and ``kernels_int.py`` (INT4, NF4). Every function is a pure
function of its tensors and runs unchanged on CPU or CUDA with the same bits: scales are exact
powers of two built from integer exponents (no ``log2`` rounding), products with them are exact,
and the only roundings are IEEE casts (round-to-nearest-even) that both devices implement alike.

Conventions: a weight is ``[*lead, rows, cols]``; ``cols`` is K (the reduction dimension). Partial
edge blocks and groups are computed as if zero-padded (the DeepSeek reference pads the same way for
its scale computation); payloads keep the logical shape (FP8) or pad the last byte / word with zero
nibbles (E2M1, INT4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

E4M3_MAX = 448.0   # largest finite float8_e4m3fn
E2M1_MAX = 6.0     # largest e2m1 magnitude
E8M0_BIAS = 127    # UE8M0 byte b encodes 2**(b - 127); 255 is NaN
MIN_EXP, MAX_EXP = -127, 127
# e2m1 codes 0..7 are these magnitudes; bit 3 is the sign (transformers' and compressed-tensors' table).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# safetensors dtype names -> torch dtypes (the ones our formats store or read).
TORCH_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}


class NonFiniteError(ValueError):
    """A source tensor holds NaN or Inf; the pipeline turns it into a one-line InputError."""

    def __init__(self, name: str, count: int, total: int):
        self.name, self.count, self.total = name, count, total
        super().__init__(f"{name}: {count} of {total} values are NaN or Inf")


def finite_or_zero(name: str, x: torch.Tensor, allow_nonfinite: bool) -> torch.Tensor:
    """Refuse NaN/Inf (naming the tensor) unless allowed; allowed ones are stored as 0.

    The common case costs one ``aminmax`` pass (no temporary: NaN propagates into both results, +-Inf
    into one of them, so both finite means every value is); only a tensor that has some pays for
    ``isfinite``."""
    if not x.is_floating_point() or x.numel() == 0:
        return x
    low, high = torch.aminmax(x)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return x
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return x
    if not allow_nonfinite:
        raise NonFiniteError(name, int(bad.sum()), x.numel())
    return x.masked_fill(bad, 0)


# ---------------------------------------------------------------- power-of-two scales
def pow2_exponent(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Smallest integer e with ``amax <= qmax * 2**e`` (exact: compares frexp mantissas, no log2),
    clamped to the UE8M0 range [-127, 127]; all-zero blocks get e = 0 (scale 1.0). int32."""
    amax = amax.float()
    m, k = torch.frexp(amax)
    qm, qk = torch.frexp(torch.tensor(qmax, dtype=torch.float32))
    e = k - int(qk) + (m > float(qm)).to(torch.int32)
    e = torch.where(amax > 0, e, torch.zeros_like(e))
    return e.clamp_(MIN_EXP, MAX_EXP)


def exp_to_e8m0(e: torch.Tensor) -> torch.Tensor:
    """Exponents -> float8_e8m0fnu bytes (b = e + 127)."""
    return (e + E8M0_BIAS).to(torch.uint8).view(torch.float8_e8m0fnu)


def e8m0_to_exp(scale: torch.Tensor) -> torch.Tensor:
    return scale.view(torch.uint8).to(torch.int32) - E8M0_BIAS


def pow2(e: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """2**e exactly (via the E8M0 decoder, so 2**-127 stays exact as a subnormal)."""
    return exp_to_e8m0(e).to(dtype)


# ---------------------------------------------------------------- rounding to the grids
def round_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Values already within [-448, 448] -> nearest e4m3 value (RNE), as float32."""
    return v.to(torch.float8_e4m3fn).float()


# Midpoints between e2m1 magnitudes. Ties go to the even code (compressed-tensors' cast_to_fp4
# agrees): 0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2.0, 2.5->2.0, 3.5->4.0, 5.0->4.0. ``bucketize``
# sends v == boundary to the lower bucket, so ties that round up use the float just below.
def _e2m1_bounds(device) -> torch.Tensor:
    below = lambda x: torch.nextafter(torch.tensor(x), torch.tensor(0.0)).item()  # noqa: E731
    return torch.tensor([0.25, below(0.75), 1.25, below(1.75), 2.5, below(3.5), 5.0], device=device)


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Scaled float32 values (|v| <= 6 after clamping) -> 4-bit codes (sign in bit 3), uint8."""
    mag = torch.bucketize(v.abs(), _e2m1_bounds(v.device)).to(torch.uint8)
    return mag | (torch.signbit(v).to(torch.uint8) << 3)


def e2m1_lut(device, dtype=torch.float32) -> torch.Tensor:
    vals = list(E2M1_VALUES)
    return torch.tensor(vals + [-x for x in vals], dtype=dtype, device=device)


def round_e2m1(v: torch.Tensor) -> torch.Tensor:
    return e2m1_lut(v.device)[e2m1_codes(v).long()]


@dataclass(frozen=True)
class Grid:
    """A low-precision value grid scaled by a power of two: its largest magnitude, its rounding,
    and its non-negative values in order (for rounding *down* to the grid)."""

    qmax: float
    round: Callable[[torch.Tensor], torch.Tensor]
    values: Callable[[torch.device], torch.Tensor]
    above_half: float   # the smallest value that rounds above qmax / 2 (ties go to the even code)


# e4m3: 232 is the tie between 224 (even) and 240, so the float just above 232; e2m1: 3.5 ties to 4 (even).
E4M3 = Grid(E4M3_MAX, round_e4m3,
            lambda device: torch.arange(127, dtype=torch.uint8, device=device).view(torch.float8_e4m3fn).double(),
            torch.nextafter(torch.tensor(232.0), torch.tensor(E4M3_MAX)).item())
E2M1 = Grid(E2M1_MAX, round_e2m1, lambda device: torch.tensor(E2M1_VALUES, dtype=torch.float64, device=device),
            3.5)


def block_exponent(amax: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-block exponent e, clamp limit L, and whether any block needs the clamp at all.

    e starts as the smallest with amax <= qmax * 2**e, and is lowered by one where the block's largest
    value would round down to qmax/2 (e4m3: 230 -> 224; e2m1: 3.2 -> 3). Why: re-quantizing such a
    block would pick e-1, so its bytes would not survive a dequantize/quantize round trip; with e-1
    up front the block max clamps to qmax (within half a step) and ``quantize(dequantize(q)) == q``.
    L is qmax, except for blocks so large (|w| near 2**128) that qmax * 2**e would overflow float32:
    there it is the largest grid value whose product with 2**e is finite. Without lowered or limited
    blocks every scaled value is already within [-qmax, qmax] and the clamp pass can be skipped."""
    e = pow2_exponent(amax, grid.qmax)
    limit = _grid_limit(e, grid)
    top = torch.minimum(amax.float() * pow2(-e), limit)          # rounds to <= qmax / 2 iff below above_half
    lower = (top < grid.above_half) & (e > MIN_EXP) & (amax > 0)
    if not bool(lower.any()):
        return e, limit, not bool((limit >= grid.qmax).all())
    e = e - lower.to(torch.int32)
    return e, _grid_limit(e, grid), True


def _grid_limit(e: torch.Tensor, grid: Grid) -> torch.Tensor:
    room = torch.finfo(torch.float32).max * pow2(-e, torch.float64)  # exact in float64
    if bool((room >= grid.qmax).all()):
        return torch.full(e.shape, grid.qmax, dtype=torch.float32, device=e.device)
    values = grid.values(e.device)
    idx = torch.searchsorted(values, room.clamp(max=grid.qmax).contiguous(), right=True) - 1
    return values[idx].float()


def clamp_scaled(v: torch.Tensor, limit: torch.Tensor, qmax: float) -> torch.Tensor:
    """Clamp scaled values in place to [-limit, limit] (a scalar clamp unless some block needs less)."""
    if bool((limit >= qmax).all()):
        return v.clamp_(-qmax, qmax)
    return torch.minimum(torch.maximum(v, -limit), limit, out=v)


# ---------------------------------------------------------------- layout helpers
def pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.shape[-1]) % multiple
    return F.pad(x, (0, extra)) if extra else x


def pad_rows_cols(x: torch.Tensor, rows_to: int, cols_to: int) -> torch.Tensor:
    """Zero-pad the last two dims of a [L, R, C] tensor up to multiples."""
    pr, pc = (-x.shape[-2]) % rows_to, (-x.shape[-1]) % cols_to
    return F.pad(x, (0, pc, 0, pr)) if pr or pc else x


def expand_groups(scale: torch.Tensor, group: int, cols: int) -> torch.Tensor:
    """[..., G] -> [..., cols]: each group's value repeated over its columns."""
    return scale.repeat_interleave(group, dim=-1)[..., :cols]


# ---------------------------------------------------------------- strips of rows (cache-sized work units)
CHUNK_BYTES = 1 << 20  # input bytes per strip: each elementwise pass over a strip stays in L2 (2 MB a core)


def row_strips(x: torch.Tensor, align: int = 1, chunk_bytes: int = CHUNK_BYTES):
    """(start, stop) row ranges of a 2-D ``x``, about ``chunk_bytes`` each and a multiple of ``align``
    rows (so 128x128 tiles never straddle two strips). Working strip by strip, writing straight into
    the preallocated outputs, keeps every pass in cache: that is what brings the kernels near copy
    speed on a CPU."""
    rows = x.shape[0]
    row_bytes = max(1, x.shape[-1] * x.element_size())
    step = max(align, chunk_bytes // row_bytes // align * align)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def abs_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """max |x| over ``dims`` as float32. For bf16 / float32 it reduces the magnitude bits as integers
    (same order as the values for finite inputs), which CPUs vectorize far better than float max."""
    bits = {torch.bfloat16: (torch.int16, 0x7FFF), torch.float32: (torch.int32, 0x7FFFFFFF)}.get(x.dtype)
    if bits is None:
        out = x.abs()
        for d in sorted(dims, reverse=True):
            out = out.amax(dim=d)
        return out.float()
    mag = x.view(bits[0]) & bits[1]
    for d in sorted(dims, reverse=True):
        mag = mag.amax(dim=d)
    return mag.view(x.dtype).float()


def pack_nibbles(codes: torch.Tensor, pairs: torch.Tensor, high_first: bool, out: torch.Tensor) -> torch.Tensor:
    """uint8 codes (< 16) [2m] -> uint8 [m], two per byte: the first of each pair in the high nibble
    (bitsandbytes) or the low one (e2m1 / MXFP4 / NVFP4). Worked on int16 pairs (one little-endian int16
    holds a pair: first in its low byte), four passes over half as many elements; ``pairs`` is int16 [m]
    scratch, ``out`` uint8 [m]."""
    both = codes.view(torch.int16)
    if high_first:     # (first << 4) | second
        torch.bitwise_left_shift(both, 4, out=pairs).bitwise_or_(torch.bitwise_right_shift(both, 8))
    else:              # first | (second << 4)
        torch.bitwise_right_shift(both, 4, out=pairs).bitwise_or_(both)
    return out.copy_(pairs.bitwise_and_(0xFF))
