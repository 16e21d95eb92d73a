"""INT4 / NF4 kernel corners found by mutation testing (docs/ci.md, "Mutation testing"): GPTQ's own scales
on batched weights and past the int4 range, scratch buffers sized exactly, NF4 blocks other than 64 and
work split into strips, the NF4 error bound's inputs. Expected values are worked by hand in comments, with
bitsandbytes' own ``quantize_4bit`` as the outside reference for NF4 bytes; each test runs in well under a
second."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from mv4deploy.formats import kernels_int


def test_int4_given_scales_on_a_batched_weight_clamp_to_the_int4_range():
    # [E=2, R=3, K=8], group 4, GPTQ scales [2, 3, 2]: group 0 scale 0.125, group 1 scale 0.25 * (r + 1).
    # group 0: [1, -1, 0.25, -2] / 0.125 = [8, -8, 2, -16] -> clamped to [-8, 7]: [7, -8, 2, -8]
    # group 1: [0.5, 0, -0.5, 0.125] / 0.25 = [2, 0, -2, 0.5 -> 0 (half to even)];
    #          / 0.5 = [1, 0, -1, 0.25 -> 0]; / 0.75 = [0.67 -> 1, 0, -1, 0.17 -> 0]
    x = torch.tensor([1.0, -1.0, 0.25, -2.0, 0.5, 0.0, -0.5, 0.125]).repeat(2, 3, 1)
    given = torch.tensor([[0.125, 0.25 * (r + 1)] for r in range(3)]).repeat(2, 1, 1).to(torch.bfloat16)
    q, s = kernels_int.int4_quant(x, 4, given)
    rows = [[7, -8, 2, -8, 2, 0, -2, 0], [7, -8, 2, -8, 1, 0, -1, 0], [7, -8, 2, -8, 1, 0, -1, 0]]
    assert q.tolist() == [rows, rows] and torch.equal(s, given)


def test_int4_pack_scratch_is_sized_exactly():
    # the pair buffer is int16 [codes / 2]; a wrong size makes torch resize an out= tensor, with a warning.
    # 3 values [1, -1, 3] -> codes 9, 7, 11 at bits 0, 4, 8 of one word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = kernels_int.int4_pack(torch.tensor([[1, -1, 3]] * 5, dtype=torch.int8))
    assert packed.tolist() == [[9 | 7 << 4 | 11 << 8]] * 5


def bnb_quantize(x: torch.Tensor, block: int):
    import bitsandbytes.functional as bnb
    q, state = bnb.quantize_4bit(x.reshape(-1).contiguous(), blocksize=block, quant_type="nf4",
                                 compress_statistics=False)
    return q.reshape(-1, 1), state.absmax


@pytest.mark.parametrize("n, block", [(140_000, 64), (1000, 32), (200, 128)])
def test_nf4_strips_blocks_and_tails_are_bitsandbytes_bytes(n, block):
    # 140 000 values: two strips of whole blocks (2**17, then 8 896) and a tail of 32; block 32: strips of
    # 2**17 // 32 * 32; block 128: one whole block and a tail of 72, which bitsandbytes codes as one block.
    # Under warnings-as-errors: every scratch slice has exactly the size its pass writes.
    x = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed, absmax, _, _ = kernels_int.nf4_quant(x, block, b"{}")
    ref_packed, ref_absmax = bnb_quantize(x, block)
    assert torch.equal(packed, ref_packed) and torch.equal(absmax, ref_absmax)
    tail = x[n - n % block:].float().abs().max() if n % block else None
    assert absmax.numel() == -(-n // block) and (tail is None or absmax[-1] == tail)


def test_nf4_dequant_gives_the_asked_dtype():
    # absmax 1: 1.0 is level 15, 0.0 level 7; -0.5 lies below the midpoint of levels 2 and 3
    # ((-0.5251 - 0.3949) / 2 = -0.46): level 2; 0.25 below that of 10 and 11 (0.2920): level 10.
    # bitsandbytes dequantizes in bf16; the float32 asked for holds those bf16 values
    x = torch.tensor([1.0, -0.5, 0.0, 0.25] * 16, dtype=torch.bfloat16)
    packed, absmax, levels, _ = kernels_int.nf4_quant(x, 64, b"{}")
    back = kernels_int.nf4_dequant(packed, absmax, levels, (64,), 64, torch.float32)
    assert back.dtype == torch.float32
    assert back[:4].tolist() == levels[[15, 2, 7, 10]].to(torch.bfloat16).float().tolist()


def test_nf4_error_bound_counts_the_bf16_rounding_and_not_the_smallest_normal():
    # block 0: x[0] = 1 + 2**-10 is not bf16 (8 bits): it rounds to 1.0, adding |x - bf16(x)| = 2**-10;
    # block 1: absmax exactly 2**-126 (float32's smallest normal): 1 / absmax = 2**126 is finite, so
    # bitsandbytes codes it (1.0 -> code 15 -> back to 2**-126 exactly) and nothing is flushed
    tiny = 2.0**-126
    x = torch.tensor([1 + 2.0**-10, -0.5, 0.25, 0.0, tiny, 0.0, 0.0, 0.0])
    levels = kernels_int.nf4_levels()
    half_gap = float((levels[1:] - levels[:-1]).max()) / 2                  # 0.3038 / 2, published levels
    expected = [half_gap * (1 + 2**-7) + abs(v) * 2**-7 for v in (1.0, -0.5, 0.25, 0.0)]
    expected[0] += 2.0**-10
    expected += [tiny * half_gap * (1 + 2**-7) + v * 2**-7 for v in (tiny, 0.0, 0.0, 0.0)]
    # abs=0: pytest.approx's default absolute tolerance (1e-12) would swallow anything near 2**-126
    assert kernels_int.nf4_error_bound(x, 4).tolist() == pytest.approx(expected, rel=1e-5, abs=0)
    block = torch.zeros(64)
    block[0] = tiny
    packed, absmax, lv, _ = kernels_int.nf4_quant(block, 64, b"{}")
    assert kernels_int.nf4_dequant(packed, absmax, lv, (64,), 64)[0].item() == tiny


def test_bitsandbytes_import_warnings_are_silenced(monkeypatch):
    logger = logging.getLogger("bitsandbytes")
    monkeypatch.setattr(logger, "level", logging.NOTSET)         # whatever an earlier import set, undone after
    kernels_int._bnb()
    assert logger.level == logging.ERROR
