"""The format kernels on small hand-worked blocks: every expected byte, scale and value below is worked
out from the format's definition in a comment (MLAS's MatMulNBits rule, symmetric INT4 with a bf16
scale, compressed-tensors' int32 packing, NF4's published levels, NVFP4's power-of-two global scale,
FP8 with UE8M0 / 20-bit F32 scales, MXFP4), never by calling the kernel twice. Found by mutation
testing (docs/ci.md, "Mutation testing"); each test runs in milliseconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mv4deploy.formats import kernels_fp, kernels_int, kernels_mnb, kernels_nvfp4

E2M1_CODE = {0.0: 0, 0.5: 1, 1.0: 2, 1.5: 3, 2.0: 4, 3.0: 5, 4.0: 6, 6.0: 7}   # sign: bit 3
GRID16 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
# codes 0..7 then 0 (-0 is coded +0), 9..15; two per byte, low nibble first
GRID16_BYTES = [0x10, 0x32, 0x54, 0x76, 0x90, 0xBA, 0xDC, 0xFE]


# ---------------------------------------------------------------- MatMulNBits (onnxruntime's MLAS rule)
def test_mnb_roundf_rounds_halves_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49, -1.2, 3.0])
    assert kernels_mnb._roundf(x).tolist() == [1, 2, 3, -1, -3, 0, -1, 3]


def test_mnb_symmetric_block_by_hand():
    # block of 16: the largest magnitude is -4, scale = -4 / -8 = 0.5; code = roundf(v / 0.5 + 8)
    w = torch.tensor([[1, -4, 2, 0, 0.5, -0.5, 3.5, 1.25] + [0.0] * 8])
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    codes = [10, 0, 12, 8, 9, 7, 15, 11] + [8] * 8                  # 1.25 / 0.5 + 8 = 10.5 -> 11 (away)
    assert scale.tolist() == [[0.5]]
    assert packed.flatten().tolist() == [codes[i] | codes[i + 1] << 4 for i in range(0, 16, 2)]
    back = kernels_mnb.mnb4_dequantize(packed, scale, None, 16)
    assert back.tolist() == [[1, -4, 2, 0, 0.5, -0.5, 3.5, 1.5] + [0.0] * 8]
    # bound: half a step (0.25) + step * 2**-18 + 2**-146; no value lies beyond 7.5 steps on the + side
    bound = kernels_mnb.mnb4_error_bound(w, 16)
    assert torch.equal(bound, torch.full((1, 16), 0.25 + 0.5 * 2.0**-18 + 2.0**-146))


def test_mnb_error_bound_is_a_whole_step_past_the_clamp():
    # extreme -4 (scale 0.5): +3.9 codes to roundf(15.8) = 16, clamped to 15 -> error 0.4; bound one step
    w = torch.tensor([[-4.0, 3.9, 3.7, -3.9] + [0.0] * 12])
    bound = kernels_mnb.mnb4_error_bound(w, 16)
    eps = 0.5 * 2.0**-18 + 2.0**-146
    assert bound[0, :4].tolist() == [0.25 + eps, 0.5 + eps, 0.25 + eps, 0.25 + eps]   # 3.7 < 7.5 * 0.5
    assert kernels_mnb.mnb4_error_bound(-w, 16)[0, 1].item() == 0.5 + eps              # mirrored


def test_mnb_asymmetric_block_by_hand():
    # range [-6, 24]: scale 30 / 15 = 2, zero point roundf(6 / 2) = 3, code = roundf(v / 2 + 3)
    w = torch.tensor([[-6.0, 24.0, 0.0, 3.0, 1.0, 8.0] + [0.0] * 10])
    packed, scale, zero = kernels_mnb.mnb4_quantize(w, 16, False)
    codes = [0, 15, 3, 5, 4, 7] + [3] * 10                           # 3 / 2 + 3 = 4.5 -> 5, 1 / 2 + 3 -> 4
    assert scale.tolist() == [[2.0]]
    assert zero.tolist() == [[3 | 8 << 4]]                           # one zero point, padded with 8
    assert packed.flatten().tolist() == [codes[i] | codes[i + 1] << 4 for i in range(0, 16, 2)]
    back = kernels_mnb.mnb4_dequantize(packed, scale, zero, 6)
    assert back.tolist() == [[-6.0, 24.0, 0.0, 4.0, 2.0, 8.0]]       # (code - 3) * 2


def test_mnb_subnormal_scale_is_coded_by_exact_division():
    # extreme -2**-138: scale 2**-141, whose float32 reciprocal 2**141 overflows (MLAS would saturate)
    w = torch.tensor([[2.0**-140, -(2.0**-138), 2.0**-139, 0.0] + [0.0] * 12])
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    assert scale.tolist() == [[2.0**-141]]
    codes = [10, 0, 12, 8] + [8] * 12                                # v / 2**-141 + 8
    assert packed.flatten().tolist() == [codes[i] | codes[i + 1] << 4 for i in range(0, 16, 2)]
    assert torch.equal(kernels_mnb.mnb4_dequantize(packed, scale, None, 16), w)


def test_mnb_zero_block_and_batched_shapes():
    w = torch.zeros(2, 3, 32)                                        # [E, N, K]: two blocks of 16 per row
    w[1, 2, 17] = -8.0                                               # one block with scale -8 / -8 = 1
    packed, scale = kernels_mnb.mnb4_quantize(w, 16, True)
    assert packed.shape == (2, 3, 2, 8) and scale.shape == (2, 3, 2)
    assert scale[1, 2].tolist() == [0.0, 1.0] and packed[1, 2, 1, 0].item() == 8 | 0 << 4
    assert torch.equal(kernels_mnb.mnb4_dequantize(packed, scale, None, 32), w)


# ---------------------------------------------------------------- INT4 and NF4
def test_int4_scale_by_hand():
    # bf16 keeps 8 significant bits: 1/7 = 1.142857 * 2**-3 -> 146/128 * 2**-3 = 0.142578125
    amax = torch.tensor([7.0, 1.0, 0.0, 0.7])
    assert kernels_int.int4_scale(amax).tolist() == [1.0, 0.142578125, 1.0, 0.10009765625]   # 0.1 -> 205/2048
    assert kernels_int.int4_scale(torch.tensor([torch.finfo(torch.float32).max])).item() == kernels_int.INT4_SCALE_MAX
    assert 7 * kernels_int.INT4_SCALE_MAX < math.inf and kernels_int.INT4_SCALE_MAX > 4.8e37


def test_int4_quant_rounds_half_to_even():
    # amax 7 -> scale 1: 2.5 -> 2, -1.5 -> -2, 0.5 -> 0 (ties to even); second group amax 0.7 -> s 0.10009765625
    x = torch.tensor([[7.0, 2.5, -1.5, 0.5, 0.7, -0.35, 0.1, 0.0]])
    q, s = kernels_int.int4_quant(x, 4)
    assert q.tolist() == [[7, 2, -2, 0, 7, -3, 1, 0]]                # -0.35 / 0.1001 = -3.497 -> -3
    assert s.dtype == torch.bfloat16 and s.float().tolist() == [[1.0, 0.10009765625]]
    given = torch.tensor([[2.0, 0.05]], dtype=torch.bfloat16)        # GPTQ's own scales: clamp to [-8, 7]
    assert kernels_int.int4_quant(x, 4, given)[0].tolist() == [[4, 1, -1, 0, 7, -7, 2, 0]]


def test_int4_pack_layout_by_hand():
    # element i at bits 4 * (i % 8) of word i // 8, stored as q + 8: 0..7 -> 0x76543210, 8..15 -> 0xFEDCBA98
    q = torch.arange(-8, 8, dtype=torch.int8).view(1, 16)
    packed = kernels_int.int4_pack(q)
    assert packed.tolist() == [[0x76543210, 0xFEDCBA98 - 2**32]]
    assert torch.equal(kernels_int.int4_unpack(packed, 16), q)
    odd = kernels_int.int4_pack(torch.tensor([[1, -1, 3]], dtype=torch.int8))   # 3 values: one word, zero bits after
    assert odd.tolist() == [[9 | 7 << 4 | 11 << 8]]
    back = kernels_int.int4_dequant(odd, torch.tensor([[0.5]], dtype=torch.bfloat16), 3, 4)
    assert back.tolist() == [[0.5, -0.5, 1.5]]


# NF4 levels as published with QLoRA (Dettmers et al. 2023, appendix E), rounded to 4 decimals
NF4_PUBLISHED = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


def test_nf4_codes_count_the_midpoints_below():
    levels = kernels_int.nf4_levels()
    assert np.allclose(levels.numpy(), NF4_PUBLISHED, atol=5e-5)
    mids = ((levels[1:] + levels[:-1]) / 2).numpy()                  # float32, as bitsandbytes bounds them
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=g).to(torch.bfloat16)
    codes, absmax = kernels_int.nf4_codes(w)
    v = np.clip(w.float().numpy() / w.float().abs().amax(-1, keepdim=True).numpy(), -1, 1).reshape(-1)
    assert absmax.tolist() == w.float().abs().amax(-1).tolist()
    assert codes.tolist() == np.searchsorted(mids, v, side="left").tolist()   # midpoints strictly below v


def test_nf4_error_bound_by_hand():
    # the widest gap of the published levels is -0.6962 - (-1) = 0.3038: half of it times the block absmax,
    # plus the bf16 rounding 2**-7 of the bound and of |x|
    x = torch.tensor([1.0, -0.5, 0.25, 0.0, 2.0, 0.0, 0.0, 0.0])     # bf16-exact, two blocks of 4
    bound = kernels_int.nf4_error_bound(x, 4)
    half_gap = float((kernels_int.nf4_levels()[1:] - kernels_int.nf4_levels()[:-1]).max()) / 2
    assert half_gap == pytest.approx(0.3038 / 2, abs=1e-4)
    expected = [1.0 * half_gap * (1 + 2**-7) + abs(v) * 2**-7 for v in (1.0, -0.5, 0.25, 0.0)]
    expected += [2.0 * half_gap * (1 + 2**-7) + abs(v) * 2**-7 for v in (2.0, 0.0, 0.0, 0.0)]
    assert bound.tolist() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- NVFP4
@pytest.mark.parametrize("amax, gs", [
    (1.0, 2048.0),            # 1344 <= 1 * 2048 < 2688; 2048 / 6 = 341.3 -> e4m3 352 < 448
    (0.65625, 2048.0),        # 1344 / 0.65625 = 2048 exactly: 2**11 itself (frexp mantissa 0.5)
    (6.0, 256.0),             # 6 * 256 = 1536
    (1.26953125, 1024.0),     # 1.2695 * 2048 / 6 = 433.3 rounds to 448 in e4m3: halved
    (0.0, 1.0),
    (1e-40, 2.0**127),        # k clamped to the float32 exponent range
])
def test_nvfp4_global_scale_by_hand(amax, gs):
    assert kernels_nvfp4.global_scale(torch.tensor(amax)).tolist() == [gs]


def test_nvfp4_block_by_hand():
    # amax 6: global scale 256, group scale 6 / 6 * 256 = 256 (e4m3-exact), effective scale 1: codes = the grid
    w = torch.tensor([GRID16 + [x / 2 for x in GRID16]])             # second group: amax 3 -> scale 128
    packed, scale, gs = kernels_nvfp4.nvfp4_quant(w)
    assert gs.tolist() == [256.0] and scale.float().tolist() == [[256.0, 128.0]]
    assert packed.tolist() == [GRID16_BYTES * 2]
    assert torch.equal(kernels_nvfp4.nvfp4_dequant(packed, scale, gs, 32), w.abs() * torch.sign(w) + 0.0)
    # bound: max(s / 4, |w| / 4) + 6 * 2**-8 / 256, with s = 1 and 0.5
    floor = 6 * 2.0**-8 / 256
    expected = [max(1 / 4, abs(v) / 4) + floor for v in GRID16] + [max(0.5 / 4, abs(v) / 8) + floor for v in GRID16]
    assert kernels_nvfp4.nvfp4_error_bound(w).tolist() == [expected]


def test_nvfp4_odd_width_and_batch():
    w = torch.zeros(2, 1, 3)
    w[1, 0] = torch.tensor([6.0, -1.0, 0.5])
    packed, scale, gs = kernels_nvfp4.nvfp4_quant(w)
    assert packed.shape == (2, 1, 2) and scale.shape == (2, 1, 1) and gs.shape == (2, 1)
    assert packed[1, 0].tolist() == [7 | 10 << 4, 1]                 # 6 -> 7, -1 -> 8 + 2, 0.5 -> 1
    assert gs[:, 0].tolist() == [1.0, 256.0]
    assert torch.equal(kernels_nvfp4.nvfp4_dequant(packed, scale, gs, 3), w)


# ---------------------------------------------------------------- FP8 and MXFP4
def test_fp8_f32_scale_rounds_up_to_20_bits():
    amax = torch.tensor([448.0, 1.0, 0.0, 1e-45])
    s = kernels_fp.fp8_f32_scale(amax)
    m, e = math.frexp(1 / 448)                                       # 1/448 = 0.5714285714 * 2**-8
    up = math.ceil(m * 2**20) / 2**20 * 2.0**e                       # 20 significant bits, rounded up
    assert s.tolist() == [1.0, up, 1.0, torch.finfo(torch.float32).tiny]
    assert s[1].item() >= 1 / 448 and (448 * s[1]).item() >= 1.0


@pytest.mark.parametrize("ue8m0", [True, False])
def test_fp8_block_by_hand(ue8m0):
    # tile [[500, 3], [-7, 1]]: UE8M0 e = 1 (448 < 500 <= 896), values / 2 = [[250, 1.5], [-3.5, 0.5]],
    # 250 -> 256 in e4m3 (step 16 in [128, 256)); F32 scale 500 / 448 rounded up to 20 bits
    x = torch.tensor([[500.0, 3.0, 448.0], [-7.0, 1.0, 0.0], [2.0, 0.0, -1.0]])   # 3x3: partial tiles of 2
    q, scale = kernels_fp.fp8_block_quant(x, 2, ue8m0)
    assert scale.shape == (2, 2)
    if ue8m0:
        assert scale.dtype == torch.float8_e8m0fnu
        # tile (1, 0) amax 2: 448 * 2**-8 = 1.75 < 2 <= 3.5 -> e = -7; tile (1, 1) amax 1 <= 1.75 -> e = -8
        assert (scale.view(torch.uint8).int() - 127).tolist() == [[1, 0], [-7, -8]]
        assert q.float()[:2, :2].tolist() == [[256.0, 1.5], [-3.5, 0.5]]
        assert kernels_fp.fp8_block_dequant(q, scale, 2)[:2, :2].tolist() == [[512.0, 3.0], [-7.0, 1.0]]
        assert q.float()[2].tolist() == [2.0 * 2**7, 0.0, -1.0 * 2**8]
    else:
        assert scale[0, 1].item() == 1.0                             # amax 448: scale 1
        assert q.float()[:2, 2].tolist() == [448.0, 0.0]
        back = kernels_fp.fp8_block_dequant(q, scale, 2)
        # tile (1, 1) amax 1: s = 1/448 rounded up to 20 bits, -1 / s = -447.99.. -> e4m3 -448 -> -448 * s
        m, e = math.frexp(1 / 448)
        s = math.ceil(m * 2**20) / 2**20 * 2.0**e
        assert back[:, 2].tolist() == [448.0, 0.0, -448 * s]


def test_mxfp4_by_hand():
    # 32 values with amax 6: e = 0 (6 <= 6 * 2**0), codes are the grid itself; 2 more columns (K = 34):
    # amax 3 -> e = -1 (3 <= 6 * 2**-1), 3 * 2 = 6 -> code 7, -1 * 2 = -2 -> code 12
    x = torch.tensor([GRID16 * 2 + [3.0, -1.0]])
    packed, scale = kernels_fp.mxfp4_quant(x)
    mx_bytes = [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]     # MXFP4 keeps the sign of -0 (code 8)
    assert packed.view(torch.uint8).tolist() == [mx_bytes * 2 + [7 | 12 << 4]]
    assert (scale.view(torch.uint8).int() - 127).tolist() == [[0, -1]]
    assert torch.equal(kernels_fp.mxfp4_dequant(packed, scale, 34), x + 0.0)
    odd = kernels_fp.mxfp4_quant(torch.tensor([[6.0, 1.0, -0.5]]))[0]          # odd K: last high nibble 0
    assert odd.view(torch.uint8).tolist() == [[7 | 2 << 4, 9]]


def test_e2m1_fast_codes_break_ties_on_float32_bits():
    # ties go to the even code (0.75 -> 1.0, 1.25 -> 1.0, 2.5 -> 2.0); a float32 just above a tie must
    # round up although bf16 truncation would land on the tie (round-to-odd keeps the difference)
    up = lambda v: float(np.nextafter(np.float32(v), np.float32(10)))      # noqa: E731
    v = torch.tensor([0.75, up(0.75), 1.25, up(1.25), 2.5, up(2.5), 5.0, up(5.0), -1.25, -up(1.25), 0.1])
    assert kernels_fp.e2m1_codes_fast(v).tolist() == [2, 2, 2, 3, 4, 5, 6, 7, 10, 11, 0]
    assert kernels_fp.e2m1_codes_fast(v.to(torch.bfloat16)).tolist()[:5] == [2, 2, 2, 2, 4]


def test_fp8_rows_by_hand():
    # one UE8M0 scale per 32 along the row: amax 896 -> e = 1; amax 1 -> e = -8 (1 <= 448 * 2**-8 = 1.75)
    x = torch.zeros(1, 40)
    x[0, 0], x[0, 1], x[0, 33] = 896.0, -3.0, 1.0
    q, scale = kernels_fp.fp8_rows_quant(x)
    assert (scale.view(torch.uint8).int() - 127).tolist() == [[1, -8]]
    assert q.float()[0, [0, 1, 33]].tolist() == [448.0, -1.5, 256.0]
    assert torch.equal(kernels_fp.fp8_rows_dequant(q, scale), x)
