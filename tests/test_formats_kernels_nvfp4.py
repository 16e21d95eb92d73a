"""NVFP4 kernel corners found by mutation testing (docs/ci.md, "Mutation testing"): a group scale stepped
down so that the dequantized weight stays finite, the output dtype, the error bound's global scale per
matrix, and scratch buffers sized exactly. Expected values are worked by hand in comments; each test runs
in milliseconds (after compressed-tensors' first import)."""

from __future__ import annotations

import warnings

import torch

from mv4deploy.formats import kernels_nvfp4


def test_scale_near_the_float32_maximum_steps_down_to_a_finite_product():
    # amax 3.4e38 = 1.99834 * 2**127: global scale 2**-117 (amax * 2**-117 = 2046.3 in [1344, 2688)).
    # Group scale 2046.3 / 6 = 341.05 rounds to 352 in e4m3 (step 32 in [256, 512)), but 6 * 352 * 2**117
    # = 3.51e38 overflows float32: the largest e4m3 whose product is finite, 341.33 (float32 max / 6 *
    # 2**-117) rounded down, is 320. Codes v = w / (320 * 2**117): 3.4e38 -> 6.39 -> clamped 6 (code 7);
    # -1e38 -> -1.88 -> -2 (8 + 4); 5e37 -> 0.94 -> 1 (code 2). Dequantized: 6 * 320 * 2**117 = 1920 * 2**117
    w = torch.zeros(1, 16)
    w[0, 0], w[0, 1], w[0, 2] = 3.4e38, -1e38, 5e37
    packed, scale, gs = kernels_nvfp4.nvfp4_quant(w)
    assert gs.tolist() == [2.0**-117] and scale.float().tolist() == [[320.0]]
    assert packed.tolist() == [[7 | 12 << 4, 2, 0, 0, 0, 0, 0, 0]]
    back = kernels_nvfp4.nvfp4_dequant(packed, scale, gs, 16)
    assert back[0, :3].tolist() == [1920 * 2.0**117, -640 * 2.0**117, 320 * 2.0**117]


def test_dequantize_gives_the_asked_dtype():
    # amax 6: global scale 256, group scale 256 (e4m3-exact), effective scale 1: the codes are the values
    w = torch.tensor([[6.0, -1.5, 0.5] + [0.0] * 13])
    packed, scale, gs = kernels_nvfp4.nvfp4_quant(w)
    back = kernels_nvfp4.nvfp4_dequant(packed, scale, gs, 16, torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.equal(back, w.to(torch.bfloat16))


def test_error_bound_takes_one_global_scale_per_matrix():
    # rows [6, 0...] and [0.75, 0...] of one matrix: global scale from amax 6 is 256 for both rows
    # (row 1 alone would get 2048). Row 0: s = 256 / 256 = 1; row 1: group scale 0.75 * 256 / 6 = 32,
    # s = 32 / 256 = 0.125. Bound max(s / 4, |w| / 4) + 6 * 2**-8 / 256
    w = torch.zeros(2, 16)
    w[0, 0], w[1, 0] = 6.0, 0.75
    floor = 6 * 2.0**-8 / 256
    bound = kernels_nvfp4.nvfp4_error_bound(w)
    assert bound[0].tolist() == [1.5 + floor] + [0.25 + floor] * 15
    assert bound[1].tolist() == [0.1875 + floor] + [0.03125 + floor] * 15


def test_scratch_is_sized_exactly():
    # the pair buffer is int16 [codes / 2]; a wrong size makes torch resize an out= tensor, with a warning.
    # 6 -> code 7, -1 -> 8 + 2, 0.5 -> 1 (amax 6: effective scale 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed, _, _ = kernels_nvfp4.nvfp4_quant(torch.tensor([[6.0, -1.0, 0.5]] * 3))
    assert packed.tolist() == [[7 | 10 << 4, 1]] * 3
