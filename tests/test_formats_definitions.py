"""INT4 and MXFP4 held against their definitions, computed here a second way (NumPy and plain Python, no
mv4deploy kernel), so a wrong scale cannot widen its own bound: every scale, code and value must equal the
definition's, and the round-trip error is bounded by half a grid step of the *definition's* scale.

- INT4 (symmetric, one bf16 scale per group along K): s = bf16(amax / 7), rounded to nearest even from the
  float32 quotient; q = round_half_even(x / s) in [-8, 7]; zero groups get s = 1.
- MXFP4 (OCP MX e2m1, one power-of-two scale per 32 along K): e0 = the smallest integer with
  amax <= 6 * 2**e0; where amax / 2**e0 would round down to 3 or less (the upper half of the grid unused),
  e = e0 - 1 and the block max clamps to 6 (so a round trip keeps the bytes; ``kernels.block_exponent``);
  each x / 2**e rounds to the nearest e2m1 value (ties to the even code), clamped to +-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mv4deploy.formats import get_format

NAME = "layers.0.ffn.experts.0.w1.weight"
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)   # the non-negative e2m1 grid, codes 0..7


def _weight(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[0, :7] = 0.0                 # a partly zero group
    w[1, :32] = 0.0                # a whole zero group (first 32 columns)
    w[2, 5] = 0.3                  # an outlier that sets its group's scale
    return w.to(torch.bfloat16)


def _bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), by integer arithmetic on the bits."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _int4_reference(w: np.ndarray, group: int):
    rows, cols = w.shape
    scales = np.ones((rows, -(-cols // group)), dtype=np.float32)
    q = np.zeros_like(w, dtype=np.int64)
    for g in range(scales.shape[1]):
        block = w[:, g * group:(g + 1) * group]
        amax = np.abs(block).max(axis=1).astype(np.float32)
        s = _bf16_round(amax / np.float32(7.0))
        s = np.where(s > 0, s, np.float32(1.0))
        scales[:, g] = s
        q[:, g * group:(g + 1) * group] = np.clip(np.rint(block / s[:, None]), -8, 7)
    return q, scales


@pytest.mark.parametrize("fmt_name,group", [("int4-g128", 128), ("int4-g32", 32)])
@pytest.mark.parametrize("cols", [256, 200])
def test_int4_scales_and_codes_are_the_definitions(fmt_name, group, cols):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    fmt, w = get_format(fmt_name), _weight(16, cols, seed=cols + group)
    stored = fmt.quantize(NAME, w)
    base = NAME[: -len(".weight")]
    codes = unpack_from_int32(stored[base + ".weight_packed"], 4, torch.Size((16, cols))).numpy()
    q, scales = _int4_reference(w.float().numpy(), group)
    np.testing.assert_array_equal(stored[base + ".weight_scale"].float().numpy(), scales)
    np.testing.assert_array_equal(codes, q)
    # round trip within half a step of the definition's scale (the group's own s, not the code's)
    error = np.abs(fmt.dequantize(NAME, stored).numpy() - w.float().numpy())
    assert (error <= np.repeat(scales, group, axis=1)[:, :cols] / 2 + 1e-12).all()


def _mx_exponent(amax: float) -> int:
    """e as defined above (0 for an all-zero group); e0 found by search, not by frexp."""
    if amax == 0.0:
        return 0
    e = math.floor(math.log2(amax / 6.0))
    while amax > 6.0 * 2.0 ** e:
        e += 1
    while amax <= 6.0 * 2.0 ** (e - 1):
        e -= 1
    return e - 1 if abs(_e2m1_nearest(amax / 2.0 ** e)) <= 3.0 else e


def _e2m1_nearest(v: float) -> float:
    """Nearest grid value to v, ties to the even code (codes 0..7 are the grid's indexes)."""
    mag = min(abs(v), 6.0)
    best = min(range(8), key=lambda i: (abs(E2M1_VALUES[i] - mag), i % 2))
    return math.copysign(E2M1_VALUES[best], v)


@pytest.mark.parametrize("cols", [64, 96])
def test_mxfp4_scales_and_values_are_the_definitions(cols):
    fmt, w = get_format("mxfp4"), _weight(8, cols, seed=cols)
    stored = fmt.quantize(NAME, w)
    base = NAME[: -len(".weight")]
    exponents = stored[base + ".scale"].view(torch.uint8).to(torch.int64).numpy() - 127
    values = fmt.dequantize(NAME, stored).numpy()
    x = w.float().numpy()
    for r in range(x.shape[0]):
        for g in range(cols // 32):
            block = x[r, g * 32:(g + 1) * 32]
            e = _mx_exponent(float(np.abs(block).max()))
            assert exponents[r, g] == e, (r, g)
            want = [_e2m1_nearest(float(v) / 2.0 ** e) * 2.0 ** e for v in block]
            np.testing.assert_array_equal(values[r, g * 32:(g + 1) * 32], np.array(want, dtype=np.float32))


def test_the_reference_rounding_matches_hand_values():
    """The references themselves, by hand: bf16(0.3 / 7) and e2m1 ties."""
    assert _bf16_round(np.array([0.3 / 7], dtype=np.float32))[0] == np.float32(0.04296875)  # 0x3D30
    assert [_e2m1_nearest(v) for v in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 7.0)] == \
        [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 6.0]
    assert _mx_exponent(6.0) == 0 and _mx_exponent(3.0) == -1 and _mx_exponent(7.0) == 1   # 3.5 ties to 4
    assert _mx_exponent(6.0001) == 0          # e0 = 1, but 3.00005 rounds to 3: lowered, 6.0001 clamps to 6
    assert _mx_exponent(3.2) == -1            # 3.2 / 1 rounds to 3: e0 = 0 lowered to -1, 3.2 / 0.5 clamps to 6
    assert _mx_exponent(3.6) == 0             # 3.6 rounds to 4: e0 = 0 kept
