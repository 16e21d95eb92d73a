"""MatMulNBits kernel corners found by mutation testing (docs/ci.md, "Mutation testing"): which blocks keep
MLAS's codes and which are re-coded by exact division, dequantization of batched asymmetric weights, and
the error bound's tie and floor. Expected values are worked by hand in comments, with onnxruntime's own
quantizer (``quantize_matmul_4bits``, called as MatMulNBitsQuantizer calls it) as the outside reference;
each test runs in milliseconds."""

from __future__ import annotations

from math import ceil

import numpy as np
import pytest
import torch

from mv4deploy.formats import kernels_mnb

ort_kernels = pytest.importorskip("onnxruntime.capi._pybind_state")


def ort_quantize(w: torch.Tensor, block: int, symmetric: bool) -> list[np.ndarray]:
    """onnxruntime's kernel on W^T [K, N], K padded to whole blocks: packed, scales (, zero points)."""
    n, k = w.shape
    blocks = ceil(k / block)
    b = np.ascontiguousarray(np.pad(w.numpy().T.astype(np.float32), ((0, blocks * block - k), (0, 0))))
    packed = np.zeros((n, blocks, block // 2), np.uint8)
    zero = np.zeros((n, (blocks + 1) // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    ort_kernels.quantize_matmul_4bits(packed, b, scales, zero, block, n, blocks * block, symmetric)
    return [packed, scales, zero] if not symmetric else [packed, scales]


def codes_of(packed: torch.Tensor) -> list[int]:
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten().tolist()


@pytest.mark.parametrize("e, code", [(0, 15), (-128, 15), (-129, 14)])
def test_mlas_codes_are_kept_unless_its_float32_reciprocal_overflows(e, code):
    # scale s = 535/512 * 2**e (extreme -8 s = -8.359375 * 2**e), v = 7121919/2**20 * 2**e: v / s is
    # 6.49999909 exactly, so exact division codes roundf(6.49999909 + 8) = 14. MLAS multiplies by
    # fl32(1 / s) = 16055953/2**24 * 2**-e; v times that rounds to 6.4999995 in float32, + 8 = 14.5 -> 15.
    # e = -128: 1 / s = 0.957 * 2**128 is still finite (2 / s would not be): MLAS's 15 is kept.
    # e = -129: 1 / s overflows, MLAS saturates; the kernel codes by exact division: 14.
    # Row 1, a zero block (scale 0) in the same matrix, keeps code 8 everywhere.
    w = torch.zeros(2, 16)
    w[0, 0], w[0, 1] = -8.359375 * 2.0**e, 7121919 / 2**20 * 2.0**e
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    assert scale.tolist() == [[535 / 512 * 2.0**e], [0.0]]
    assert codes_of(packed[0]) == [0, code] + [8] * 14
    assert codes_of(packed[1]) == [8] * 16
    if e > -129:                                     # where MLAS does not saturate: its bytes exactly
        theirs = ort_quantize(w, 16, True)
        assert np.array_equal(packed.numpy(), theirs[0]) and np.array_equal(scale.numpy(), theirs[1])


def test_asymmetric_tiny_blocks_keep_mlas_output():
    # range [-2**-126, 2**-126]: scale 2**-125 / 15 (about 2**-129) has an overflowing float32 reciprocal;
    # the exact re-coding is for symmetric weights only, an asymmetric one is onnxruntime's as it comes
    w = torch.zeros(1, 16)
    w[0, 0], w[0, 1], w[0, 2] = -(2.0**-126), 2.0**-126, 2.0**-127
    ours = [t.numpy() for t in kernels_mnb.mnb4_quantize(w, 16, False)]
    theirs = ort_quantize(w, 16, False)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert theirs[1][0, 0] < 2.0**-128                                # so 1 / scale > float32 max


def test_dequantize_batched_asymmetric_by_hand():
    # [E=1, N=2, K=48], block 16: 3 blocks per row, zero points 2 bytes per row (z0 | z1 << 4, z2 | 8 << 4);
    # every code 5 in row 0 and 12 in row 1; w = (code - zero point) * scale
    scale = torch.tensor([[[1.0, 0.5, 2.0], [0.25, 4.0, 1.0]]])
    zp = [[3, 8, 0], [15, 12, 1]]
    zero_points = torch.tensor([[[3 | 8 << 4, 0 | 8 << 4], [15 | 12 << 4, 1 | 8 << 4]]], dtype=torch.uint8)
    packed = torch.stack([torch.full((3, 8), 5 | 5 << 4), torch.full((3, 8), 12 | 12 << 4)])
    packed = packed[None].to(torch.uint8)                                   # [1, 2, 3, 8]
    back = kernels_mnb.mnb4_dequantize(packed, scale, zero_points, 40, torch.bfloat16)
    assert back.shape == (1, 2, 40) and back.dtype == torch.bfloat16
    row0 = [(5 - zp[0][b]) * scale[0, 0, b].item() for b in range(3)]       # [2, -1.5, 10]
    row1 = [(12 - zp[1][b]) * scale[0, 1, b].item() for b in range(3)]      # [-0.75, 0, 11]
    assert row0 == [2.0, -1.5, 10.0] and row1 == [-0.75, 0.0, 11.0]
    assert back[0, 0].tolist() == [v for v in row0 for _ in range(16)][:40]
    assert back[0, 1].tolist() == [v for v in row1 for _ in range(16)][:40]
    assert kernels_mnb.mnb4_dequantize(packed, scale, zero_points, None).shape == (1, 2, 48)


def test_error_bound_ties_and_floor_by_hand():
    # row 0: |max| = |min| = 4, MLAS takes min (|max| > |min| is false): extreme -4, scale 0.5, step 0.5.
    # +4 codes to 4 / 0.5 + 8 = 16 -> clamped 15 -> 3.5: error 0.5, a whole step. +3.75 codes to 15.5 -> 16
    # -> 15 -> 3.5: error 0.25, half a step (3.75 is not beyond 7.5 steps). -3.75 and 0: half a step.
    # The rounding term is step * 2**-18 = 2**-19; the floor 2**-146 vanishes next to 0.25 in float32.
    # Row 1: a zero block, step 0: the bound is the floor 2**-146 alone.
    w = torch.zeros(2, 16)
    w[0, :4] = torch.tensor([-4.0, 4.0, 3.75, -3.75])
    bound = kernels_mnb.mnb4_error_bound(w, 16)
    half, whole = 0.25 + 2.0**-19, 0.5 + 2.0**-19
    assert bound[0].tolist() == [half, whole, half, half] + [half] * 12
    assert bound[1].tolist() == [2.0**-146] * 16
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    back = kernels_mnb.mnb4_dequantize(packed, scale, None, 16)
    assert back[0, :4].tolist() == [-4.0, 3.5, 3.5, -3.5]            # -3.75 / 0.5 + 8 = 0.5 -> 1 -> -3.5
    assert bool(((back - w).abs() <= bound).all())


def test_subnormal_scale_rounded_down_clamps_codes_at_zero():
    # extreme -11 * 2**-149: the scale 11/8 * 2**-149 rounds to 2**-149 in float32 (1.375 -> 1, the subnormal
    # quantum), so the extreme divides to -11 and codes -11 + 8 = -3, clamped to 0 (not wrapped to 253);
    # +5 * 2**-149 codes 13. Dequantized -8 * 2**-149: off by 3 * 2**-149, which only the bound's floor of
    # 2**-146 covers (half a step, 11/16 * 2**-149, rounds to 0 in float32)
    q = 2.0**-149
    w = torch.zeros(1, 16)
    w[0, 0], w[0, 1] = -11 * q, 5 * q
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    assert scale.tolist() == [[q]]
    assert codes_of(packed) == [0, 13] + [8] * 14
    back = kernels_mnb.mnb4_dequantize(packed, scale, None, 16)
    assert back[0, :2].tolist() == [-8 * q, 5 * q]
    assert bool(((back - w).abs() <= kernels_mnb.mnb4_error_bound(w, 16)).all())


def test_asymmetric_zero_points_of_an_even_block_count_by_hand():
    # [N=2, K=32], block 16: two blocks a row, so one zero-point byte a row (low nibble first, no padding).
    # row 0: [-6, 24] -> scale 30 / 15 = 2, zp roundf(6 / 2) = 3; [0, 15] -> scale 1, zp 0: byte 3 | 0 << 4
    # row 1: [-15, 0] -> scale 1, zp 15; a zero block -> scale 0, zp = min = 0: byte 15 | 0 << 4
    w = torch.zeros(2, 32)
    w[0, 0], w[0, 1], w[0, 16:] = -6.0, 24.0, torch.arange(16.0)
    w[1, 0] = -15.0
    packed, scale, zero = kernels_mnb.mnb4_quantize(w, 16, False)
    assert scale.tolist() == [[2.0, 1.0], [1.0, 0.0]]
    assert zero.tolist() == [[3], [15]]
    assert codes_of(packed[0, 1]) == list(range(16))                       # v / 1 + 0
    theirs = ort_quantize(w, 16, False)
    assert all(np.array_equal(a.numpy(), b) for a, b in zip((packed, scale, zero), theirs))
