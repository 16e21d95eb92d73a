"""Differential tests: our formats against the libraries that implement the same layouts
(transformers' FineGrainedFP8, compressed-tensors' pack-quantized W4A16, bitsandbytes NF4) and
against tiny, obviously correct references written here (an e2m1 lookup table, DeepSeek's formula)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mv4deploy.formats import get_format

NAME = "layers.3.attn.wq_a.weight"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weight(*shape, seed=0, dtype=torch.bfloat16):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)


# ---------------------------------------------------------------- FP8 block
@pytest.fixture(scope="module")
def hf_fp8():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize, Fp8Quantize
    quantizer = SimpleNamespace(quantization_config={"weight_block_size": [128, 128]})
    return Fp8Dequantize(quantizer), Fp8Quantize

@pytest.mark.parametrize("fmt_name", ["fp8-e4m3-block128", "fp8-e4m3-block128-ue8m0", "fp8-e4m3-block32-ue8m0"])
@pytest.mark.parametrize("shape", [(256, 384), (4, 128, 256)])
def test_fp8_dequant_matches_transformers_bit_for_bit(hf_fp8, fmt_name, shape):
    fmt, dequant = get_format(fmt_name), hf_fp8[0]
    q = fmt.quantize(NAME, _weight(*shape))
    payload, scale = q.values()
    ours = fmt.dequantize(NAME, q, torch.float32)
    theirs = dequant._dequantize_one(payload, scale, output_dtype=torch.float32)
    assert torch.equal(ours, theirs)
    assert torch.equal(fmt.dequantize(NAME, q, torch.bfloat16),
                       dequant._dequantize_one(payload, scale, output_dtype=torch.bfloat16))


@pytest.mark.parametrize("fmt_name", ["fp8-e4m3-block128", "fp8-e4m3-block128-ue8m0", "fp8-e4m3-block32-ue8m0"])
def test_fp8_dequant_matches_deepseek_formula_on_partial_tiles(fmt_name):
    """DeepSeek (README_WEIGHTS / fp8_cast_bf16): scale_inv repeated over its 128x128 tile, the
    tiles that hang over the edge cut off, then weight * scale. transformers refuses such shapes."""
    fmt = get_format(fmt_name)
    q = fmt.quantize(NAME, _weight(300, 200))
    payload, scale = q.values()
    b = fmt.block
    s = scale.float().repeat_interleave(b, 0).repeat_interleave(b, 1)[:300, :200]
    assert torch.equal(fmt.dequantize(NAME, q), payload.float() * s)
    assert tuple(scale.shape) == (-(-300 // b), -(-200 // b))


def test_fp8_ue8m0_quant_agrees_with_transformers_quantizer(hf_fp8):
    """transformers' Fp8Quantize(scale_fmt=ue8m0) gives the same payload and scales (blocks away
    from the canonicalisation edge, which random weights do not hit)."""
    _, quant_cls = hf_fp8
    cfg = SimpleNamespace(weight_block_size=[128, 128], scale_fmt="ue8m0")
    op = quant_cls(SimpleNamespace(quantization_config=cfg))
    w = _weight(256, 512)
    theirs = op._quantize_one("x.weight", w)
    ours = get_format("fp8-e4m3-block128-ue8m0").quantize("x.weight", w)
    assert torch.equal(ours["x.weight"].view(torch.uint8), theirs["x.weight"].view(torch.uint8))
    assert torch.equal(ours["x.scale"].view(torch.uint8), theirs["x.weight_scale_inv"].view(torch.uint8))


def test_fp8_scale_exponent_is_canonical_at_the_rounding_edge():
    """A tile whose max (230 * 2**-4) rounds to 224 * 2**-4 gets the lower exponent, so the round
    trip is a fixed point; transformers' ceil(log2(amax / 448)) would keep 2**-4 and lose that."""
    w = torch.zeros(128, 128)
    w[0, 0], w[5, 7] = 230 / 16, -1.0
    q = get_format("fp8-e4m3-block128-ue8m0").quantize("x.weight", w)
    assert int(q["x.scale"].view(torch.uint8)) - 127 == -5
    assert float(q["x.weight"][0, 0].float()) == 448.0   # 460 clamps to 448: 28.0 vs 28.75, half a step


# ---------------------------------------------------------------- MXFP4
def _lut_decode(packed: torch.Tensor, scale: torch.Tensor, cols: int) -> torch.Tensor:
    """Decode nibble by nibble through the 16-entry e2m1 table (bit 3 = sign), in plain Python."""
    table = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    out = []
    for row, srow in zip(packed.view(torch.uint8).tolist(), scale.view(torch.uint8).tolist()):
        vals = [table[byte & 0xF] if i % 2 == 0 else table[byte >> 4] for byte in row for i in (0, 1)][:cols]
        out.append([v * 2.0 ** (srow[k // 32] - 127) for k, v in enumerate(vals)])
    return torch.tensor(out)


@pytest.mark.parametrize("cols", [64, 96, 33])
def test_mxfp4_matches_lookup_table_reference(cols):
    fmt = get_format("mxfp4")
    q = fmt.quantize(NAME, _weight(5, cols, seed=cols))
    payload, scale = q.values()
    assert torch.equal(fmt.dequantize(NAME, q, shape=(5, cols)), _lut_decode(payload, scale, cols))


def test_mxfp4_dequant_matches_transformers(hf_fp8):
    fmt = get_format("mxfp4")
    q = fmt.quantize(NAME, _weight(3, 64, 256))
    payload, scale = q.values()
    theirs = hf_fp8[0]._dequantize_one(payload, scale, output_dtype=torch.float32)
    assert torch.equal(fmt.dequantize(NAME, q), theirs)


def test_e2m1_rounding_and_packing_match_compressed_tensors():
    """Same nearest-value rounding (ties included) and the same low-nibble-first packing as
    compressed-tensors' cast_to_fp4 / pack_fp4_to_uint8."""
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4
    from mv4deploy.formats.kernels import e2m1_codes, round_e2m1
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.2, 0.8, 2.6, 4.9, 5.1, 6.0])
    v = torch.cat([ties, -ties, torch.empty(4000).uniform_(-6, 6, generator=torch.Generator().manual_seed(1))])
    theirs = cast_to_fp4(v.clone())
    assert torch.equal(round_e2m1(v), theirs)
    codes = e2m1_codes(v).reshape(-1, 2)
    ours_packed = (codes[:, 0] | (codes[:, 1] << 4)).reshape(1, -1)
    assert torch.equal(ours_packed, pack_fp4_to_uint8(theirs.reshape(1, -1)))


# ---------------------------------------------------------------- INT4 (compressed-tensors W4A16)
@pytest.mark.parametrize("fmt_name,group", [("int4-g128", 128), ("int4-g32", 32)])
@pytest.mark.parametrize("cols", [256, 260])
def test_int4_packing_is_compressed_tensors_pack_to_int32(fmt_name, group, cols):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from mv4deploy.formats.kernels_int import int4_quant
    q, _ = int4_quant(_weight(64, cols), group)
    base = NAME[: -len(".weight")]
    ours = get_format(fmt_name).quantize(NAME, _weight(64, cols))
    assert torch.equal(ours[base + ".weight_packed"], pack_to_int32(q, 4))
    assert torch.equal(unpack_from_int32(ours[base + ".weight_packed"], 4, torch.Size((64, cols))), q)


@pytest.mark.parametrize("fmt_name,group", [("int4-g128", 128), ("int4-g32", 32)])
def test_int4_decompresses_through_compressed_tensors(fmt_name, group):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
    fmt, w = get_format(fmt_name), _weight(96, 512)
    stored = fmt.quantize(NAME, w)
    base = NAME[: -len(".weight")] + "."
    local = {k[len(base):]: v for k, v in stored.items()}
    theirs = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    assert theirs.dtype == torch.bfloat16
    assert torch.equal(theirs, fmt.dequantize(NAME, stored, torch.bfloat16))
    bf16_rounding = theirs.float().abs() * 2.0**-8
    assert bool(((theirs.float() - w.float()).abs() <= fmt.error_bound(w) + bf16_rounding).all())


# ---------------------------------------------------------------- NF4 (bitsandbytes)
@pytest.mark.parametrize("shape", [(128, 256), (3, 64, 96), (7, 33)])
def test_nf4_matches_bitsandbytes(shape):
    import bitsandbytes.functional as bnb
    w = _weight(*shape)
    ours = get_format("nf4").quantize(NAME, w)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    theirs = {NAME: packed, **{f"{NAME}.{k}": v for k, v in state.as_dict(packed=True).items()}}
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert json.loads(bytes(ours[NAME + ".quant_state.bitsandbytes__nf4"].tolist()))["shape"] == list(shape)
    # Read back the way transformers does (QuantState.from_dict on the stored tensors), flat:
    qs = bnb.QuantState.from_dict({k[len(NAME) + 1:]: v for k, v in ours.items() if k != NAME}, torch.device("cpu"))
    flat = bnb.dequantize_4bit(packed.reshape(-1, 1), qs.__class__(absmax=qs.absmax, shape=torch.Size([w.numel()]),
                               code=qs.code, blocksize=qs.blocksize, quant_type="nf4", dtype=qs.dtype))
    assert torch.equal(get_format("nf4").dequantize(NAME, ours, torch.bfloat16), flat.reshape(shape))
    if shape[-1] % 64 == 0:  # bitsandbytes' own 2-D CPU dequant agrees where its kernel is right
        assert torch.equal(get_format("nf4").dequantize(NAME, ours, torch.bfloat16), bnb.dequantize_4bit(packed, qs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_e2m1_table_agrees_with_the_reference_rounding(dtype):
    """The 64K bf16 table (float32 narrowed by round-to-odd first) rounds exactly like bucketize
    over the midpoints, including values a hair either side of each tie."""
    from mv4deploy.formats.kernels import e2m1_codes
    from mv4deploy.formats.kernels_fp import e2m1_codes_fast
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    near = torch.cat([ties, torch.nextafter(ties, torch.zeros(7)), torch.nextafter(ties, torch.full((7,), 9.0))])
    v = torch.cat([near, -near, torch.empty(20000).uniform_(-6, 6, generator=torch.Generator().manual_seed(3)),
                   torch.tensor([0.0, -0.0, 6.0, -6.0, 1e-30])]).to(dtype)
    assert torch.equal(e2m1_codes_fast(v), e2m1_codes(v.float()))


def test_nf4_table_codes_equal_bitsandbytes_bucketize_on_a_million_values():
    """The 16-bit-prefix table must agree with bitsandbytes' bucketize everywhere, midpoints included:
    every bf16 value of every magnitude, in blocks whose absmax varies (so w / absmax covers [-1, 1] finely)."""
    import bitsandbytes.functional as bnb
    from mv4deploy.formats.kernels_int import nf4_quant
    every_bf16 = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    finite = every_bf16[torch.isfinite(every_bf16)]
    w = torch.cat([finite, (torch.randn(1 << 20) * torch.rand(1 << 20) ** 4).to(torch.bfloat16)])
    packed, absmax, _, _ = nf4_quant(w, 64, b"{}")
    theirs, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed, theirs) and torch.equal(absmax, state.absmax)



@pytest.mark.parametrize("shape", [(64, 256), (33, 48)])
def test_nvfp4_decompresses_through_compressed_tensors_to_our_dequant(shape):
    """compressed-tensors' own NVFP4PackedCompressor.decompress reads our stored tensors into the same
    weight as our dequant (bit for bit in float32), within the documented bound of the original."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    w = _weight(*shape)
    fmt = get_format("nvfp4")
    stored = fmt.quantize(NAME, w)
    local = {k.rsplit(".", 1)[1]: v for k, v in stored.items()}
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    theirs = NVFP4PackedCompressor.decompress(local, scheme)["weight"]
    ours = fmt.dequantize(NAME, stored, torch.float32)
    assert torch.equal(theirs.float(), ours.to(theirs.dtype).float())
    assert bool(((ours - w.float()).abs() <= fmt.error_bound(w)).all())
    assert stored["layers.3.attn.wq_a.weight_global_scale"].shape == (1,)


@pytest.mark.parametrize("shape", [(64, 256), (35, 48)])
def test_nvfp4_codes_equal_compressed_tensors_quantize_and_pack(shape):
    """Our e2m1 codes are compressed-tensors' ``quantize_and_pack_fp4`` with the same scales, byte for byte,
    ties, negative zeros and clamped values included."""
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    w = _weight(*shape, dtype=torch.float32) * torch.logspace(-3, 3, shape[-1])
    w.view(-1)[::7] = 0.0
    w.view(-1)[1::11] *= -0.0
    stored = get_format("nvfp4").quantize(NAME, w)
    scale, gs = stored["layers.3.attn.wq_a.weight_scale"], stored["layers.3.attn.wq_a.weight_global_scale"]
    theirs = quantize_and_pack_fp4(w, scale.float(), gs, group_size=16)
    assert torch.equal(stored["layers.3.attn.wq_a.weight_packed"], theirs)
