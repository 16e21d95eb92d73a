"""FP8 / MXFP4 kernel corners found by mutation testing (docs/ci.md, "Mutation testing"): float16 inputs,
the output dtype of dequantization, the default group of 32, and work split into many row strips. Every
expected value is built into the input (grid values times a power of two, so the scale and the codes are
known by construction) or worked by hand in a comment; each test runs in milliseconds."""

from __future__ import annotations

import warnings

import pytest
import torch

from mv4deploy.formats import kernels, kernels_fp

E4M3_SAMPLES = [448.0, -1.5, 0.0, 240.0, -0.015625, 3.25, -448.0, 96.0]   # e4m3-exact, |max| 448
E2M1_SAMPLES = [6.0, -0.5, 0.0, 1.5, -3.0, 4.0, -6.0, 2.0]                # e2m1-exact, |max| 6


def exps(scale: torch.Tensor) -> list:
    return (scale.view(torch.uint8).int() - 127).tolist()


@pytest.fixture
def one_row_strips(monkeypatch):
    """Strips as small as the alignment allows (one row, or one tile of rows), so that every strip
    boundary and offset is exercised on a small input."""
    real = kernels.row_strips
    monkeypatch.setattr(kernels_fp, "row_strips", lambda x, align=1, chunk_bytes=0: real(x, align, 1))


def test_float16_weights_are_scaled_in_float32():
    # amax 2**-14 (float16's smallest normal): 2**-14 <= 448 * 2**e first for e = -22 (448 * 2**-23 =
    # 1.75 * 2**-15 < 2**-14); x * 2**22 = [256, -128, 64]. 2**22 overflows float16, so the work is float32.
    # MXFP4: 2**-14 <= 6 * 2**e from e = -16 (6 * 2**-17 < 2**-14); x * 2**16 = [4, -2, 1]: codes 6, 8 + 4, 2
    x = torch.tensor([[2.0**-14, -(2.0**-15), 2.0**-16] + [0.0] * 29], dtype=torch.float16)
    for q, scale in (kernels_fp.fp8_rows_quant(x), kernels_fp.fp8_block_quant(x, 32, True)):
        assert exps(scale) == [[-22]]
        assert q.float()[0, :4].tolist() == [256.0, -128.0, 64.0, 0.0]
    packed, scale = kernels_fp.mxfp4_quant(x)
    assert exps(scale) == [[-16]] and packed.view(torch.uint8)[0, :2].tolist() == [6 | 12 << 4, 2]


def test_dequantize_returns_the_asked_dtype():
    # 896 = 448 * 2: e = 1, payload 448; 3 * 2**-8 in the same row group of 32: payload 1.5 * 2**-8
    x = torch.zeros(2, 32)
    x[0, 0], x[1, 1] = 896.0, 3.0 * 2**-8
    q, scale = kernels_fp.fp8_rows_quant(x)
    back = kernels_fp.fp8_rows_dequant(q, scale, dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.equal(back, x.to(torch.bfloat16))
    packed, scale = kernels_fp.mxfp4_quant(x[:, :31])            # odd K: 16 bytes a row
    back = kernels_fp.mxfp4_dequant(packed, scale, 31, dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16 and back.shape == (2, 31)
    # 896 <= 6 * 2**e from e = 8: 896 / 256 = 3.5, a tie between 3 and 4 -> 4 (even code 6) -> 1024;
    # 3 * 2**-8 <= 6 * 2**-9: exactly 6 -> 3 * 2**-8
    assert back[0, 0].item() == 1024.0 and back[1, 1].item() == 3.0 * 2**-8


def test_fp8_rows_group_is_32_by_default():
    # K = 40: groups [0, 32) and [32, 40). Column 32 opens the second group: amax 1 -> e = -8, payload 256
    x = torch.zeros(1, 40)
    x[0, 0], x[0, 32] = 896.0, 1.0
    q, scale = kernels_fp.fp8_rows_quant(x)
    assert exps(scale) == [[1, -8]] and q.float()[0, [0, 32]].tolist() == [448.0, 256.0]
    assert torch.equal(kernels_fp.fp8_rows_dequant(q, scale), x)


@pytest.mark.parametrize("ue8m0", [True, False])
def test_fp8_blocks_across_many_strips(one_row_strips, ue8m0):
    # 5 x 4 with 2 x 2 tiles, the last row of tiles partial: every tile (i, j) holds e4m3 values with
    # |max| 448 times 2**(i - j), so its scale is 2**(i - j) both ways (UE8M0 exponent; F32: 448 * 2**(i - j)
    # / 448, 20-bit exact) and the payload is the e4m3 values themselves
    t = torch.tensor([[i - j for j in range(2)] for i in range(3)])
    vals = torch.tensor([[448.0, -1.5, 0.0, 240.0], [-0.015625, 3.25, -448.0, 96.0]] * 2
                        + [[448.0, -1.5, -448.0, 96.0]])
    x = vals * torch.exp2(t.float()).repeat_interleave(2, 0).repeat_interleave(2, 1)[:5]
    q, scale = kernels_fp.fp8_block_quant(x, 2, ue8m0)
    assert (exps(scale) if ue8m0 else scale.log2().tolist()) == t.tolist()
    assert torch.equal(q.float(), vals)
    assert torch.equal(kernels_fp.fp8_block_dequant(q, scale, 2), x)


def test_rows_and_mxfp4_across_many_strips(one_row_strips):
    # row r: e4m3 (or e2m1) values with |max| 448 (6) times 2**r in each group of 32: exponent r, payload
    # the grid values, and the dequantized weight is x exactly
    r = torch.arange(5.0)[:, None]
    x8 = torch.tensor(E4M3_SAMPLES * 4).repeat(5, 1) * torch.exp2(r)
    q, scale = kernels_fp.fp8_rows_quant(x8)
    assert exps(scale) == [[e] for e in range(5)]
    assert torch.equal(kernels_fp.fp8_rows_dequant(q, scale), x8)
    x4 = torch.tensor(E2M1_SAMPLES * 4).repeat(5, 1) * torch.exp2(r)
    packed, scale = kernels_fp.mxfp4_quant(x4)
    assert exps(scale) == [[e] for e in range(5)]
    assert torch.equal(kernels_fp.mxfp4_dequant(packed, scale, 32), x4 + 0.0)


def test_mxfp4_scratch_is_sized_exactly():
    # the pair buffer is int16 [codes / 2]; a wrong size makes torch resize an out= tensor, with a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed, _ = kernels_fp.mxfp4_quant(torch.tensor([E2M1_SAMPLES * 4 + [1.0, -1.0]] * 3))
    # last group [1, -1]: 1 <= 6 * 2**e from e = -2, so 1 * 4 = 4 -> code 6 and -4 -> 8 + 6
    assert packed.view(torch.uint8)[0, -1].item() == 6 | 14 << 4
