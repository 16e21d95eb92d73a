"""Property tests over the whole format registry: layouts, round-trip bounds, idempotence, edge values.

Every format in ``FORMATS`` is covered the day it is registered (the tests loop over the registry).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mv4deploy.formats.dtypes import tensor_nbytes
from mv4deploy.formats import FORMATS, get_format
from mv4deploy.formats.kernels import TORCH_DTYPES, NonFiniteError

NAME = "layers.0.ffn.experts.3.w1.weight"
ALL = sorted(FORMATS)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def weights(draw, min_ndim: int = 2):
    """A weight tensor: odd and aligned shapes, magnitudes from 2**-40 to 2**40, with zero blocks,
    outliers and constant runs mixed in."""
    ndim = draw(st.integers(min_value=max(min_ndim, 2), max_value=3))
    shape = [draw(st.integers(1, 3))] if ndim == 3 else []
    shape += [draw(st.sampled_from([1, 2, 31, 32, 33, 64, 127, 128, 130])),
              draw(st.sampled_from([1, 2, 7, 31, 32, 33, 63, 64, 96, 128, 129, 256]))]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(*shape, generator=gen) * 2.0 ** draw(st.integers(-40, 40))
    pattern = draw(st.sampled_from(["normal", "zero-rows", "outlier", "constant", "tiny-block"]))
    if pattern == "zero-rows":
        w[..., : max(1, shape[-2] // 2), :] = 0
    elif pattern == "outlier":
        w.view(-1)[draw(st.integers(0, w.numel() - 1))] *= 1000
    elif pattern == "constant":
        w.fill_(float(w.view(-1)[0]))
    elif pattern == "tiny-block":
        w[..., :, : min(32, shape[-1])] *= 2.0**-60
    dtype = draw(st.sampled_from([torch.bfloat16, torch.float32]))
    return w.to(dtype)


def _raw(t: torch.Tensor) -> torch.Tensor:
    """Bytes of a tensor, for bit-exact comparisons of any dtype (incl. float8 and NaN payloads)."""
    return t.contiguous().view(-1).view(torch.uint8)


def _same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(_raw(a[k]), _raw(b[k])) for k in a)


@pytest.mark.parametrize("fmt_name", ALL)
@SETTINGS
@given(w=weights())
def test_layout_matches_stored_and_nbytes(fmt_name, w):
    fmt = get_format(fmt_name)
    before = w.clone()
    out = fmt.quantize(NAME, w)
    assert torch.equal(w, before), "quantize modified its input"
    stored = fmt.stored(NAME, tuple(w.shape))
    assert list(out) == [t.name for t in stored]
    for t in stored:
        assert out[t.name].dtype == TORCH_DTYPES[t.dtype], t.name
        assert tuple(out[t.name].shape) == t.shape, t.name
        assert out[t.name].is_contiguous(), t.name  # safetensors writers need contiguous tensors
    packed = sum(v.numel() * v.element_size() for v in out.values())
    assert fmt.nbytes(tuple(w.shape)) == packed == sum(tensor_nbytes(t.dtype, t.shape) for t in stored)


@pytest.mark.parametrize("fmt_name", ALL)
@SETTINGS
@given(w=weights())
def test_round_trip_within_documented_bound(fmt_name, w):
    fmt = get_format(fmt_name)
    back = fmt.dequantize(NAME, fmt.quantize(NAME, w), torch.float32, shape=tuple(w.shape))
    assert back.shape == w.shape
    err = (back - w.float()).abs()
    bound = fmt.error_bound(w)
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3e}"


@pytest.mark.parametrize("fmt_name", [n for n in ALL if FORMATS[n].requantizes_exactly])
@SETTINGS
@given(w=weights())
def test_quantize_of_dequantized_is_identical(fmt_name, w):
    fmt = get_format(fmt_name)
    q = fmt.quantize(NAME, w)
    again = fmt.quantize(NAME, fmt.dequantize(NAME, q, torch.float32, shape=tuple(w.shape)))
    assert _same_bits(q, again)


@pytest.mark.parametrize("fmt_name", ALL)
def test_all_zero_weight_gets_valid_scales(fmt_name):
    fmt = get_format(fmt_name)
    w = torch.zeros(130, 257, dtype=torch.bfloat16)
    q = fmt.quantize(NAME, w)
    for name, t in q.items():
        if t.dtype == torch.float8_e8m0fnu:
            assert int(t.view(torch.uint8).max()) < 255, name  # 255 is E8M0's NaN
        elif t.is_floating_point():
            assert bool(torch.isfinite(t.float()).all()), name
    assert torch.equal(fmt.dequantize(NAME, q, shape=(130, 257)), torch.zeros(130, 257))


@pytest.mark.parametrize("fmt_name", ALL)
@pytest.mark.parametrize("magnitude", [torch.finfo(torch.bfloat16).max, torch.finfo(torch.bfloat16).tiny])
def test_extreme_magnitudes(fmt_name, magnitude):
    """±bf16 max and ±smallest normal: finite results, no sign flips, within the bound."""
    fmt = get_format(fmt_name)
    w = torch.tensor([[magnitude, -magnitude] * 32, [-magnitude / 2, magnitude / 3] * 32], dtype=torch.bfloat16)
    back = fmt.dequantize(NAME, fmt.quantize(NAME, w), shape=tuple(w.shape))
    assert bool(torch.isfinite(back).all())
    assert bool(((back - w.float()).abs() <= fmt.error_bound(w)).all())
    assert bool((back * w.float() >= 0).all())


@pytest.mark.parametrize("fmt_name", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_is_refused_naming_the_tensor(fmt_name, bad):
    fmt = get_format(fmt_name)
    w = torch.ones(4, 64)
    w[2, 5] = bad
    if fmt.lossless:  # bf16/f32 store the value as it is
        back = fmt.dequantize(NAME, fmt.quantize(NAME, w))
        assert torch.equal(back.isnan(), w.isnan()) and bool(((back == w) | back.isnan()).all())
        return
    with pytest.raises(NonFiniteError) as info:
        fmt.quantize(NAME, w)
    assert NAME in str(info.value) and "1 of 256" in str(info.value)
    allowed = fmt.dequantize(NAME, fmt.quantize(NAME, w, allow_nonfinite=True))
    assert allowed[2, 5] == 0 and bool(torch.isfinite(allowed).all())


@pytest.mark.parametrize("fmt_name", [n for n in ALL if FORMATS[n].min_ndim >= 2])
def test_one_dimensional_weight_is_refused(fmt_name):
    with pytest.raises(ValueError, match="needs at least 2 dims"):
        get_format(fmt_name).quantize("norm.weight", torch.ones(64))


def test_formats_module_imports_no_torch():
    code = ("import sys, mv4deploy.formats as f; f.get_format('nf4').nbytes((64, 64)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nbytes_examples_by_hand():
    # V4-Flash routed expert w1 [2048, 4096] as MXFP4: 2048*2048 B payload + 2048*128 B scales.
    assert get_format("mxfp4").nbytes((2048, 4096)) == 2048 * 2048 + 2048 * 128
    # FP8 128x128 with F32 scales on [576, 7168]: 576*7168 + 5*56*4.
    assert get_format("fp8-e4m3-block128").nbytes((576, 7168)) == 576 * 7168 + 5 * 56 * 4
    # INT4 g128 on [4096, 2048]: 4096*256 int32 words + 4096*16 bf16 scales + 2 int64 shape entries.
    assert get_format("int4-g128").nbytes((4096, 2048)) == 4096 * 256 * 4 + 4096 * 16 * 2 + 16
    # NF4 on [64, 64]: 2048 B codes + 64 F32 absmax + 16 F32 quant_map + the JSON state.
    json_len = len(b'{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 64]}')
    assert get_format("nf4").nbytes((64, 64)) == 2048 + 64 * 4 + 16 * 4 + json_len
    # Engram row of 256: 256 B + 8 UE8M0 scales = 264 B.
    assert get_format("fp8-rows-ue8m0").nbytes((1, 256)) == 264
