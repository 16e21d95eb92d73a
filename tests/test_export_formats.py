"""The MatMulNBits format's torch side against onnxruntime's own kernel, bit for bit (differential test).

``quantize_matmul_4bits`` is what MatMulNBitsQuantizer (and so the onnxruntime-genai builder) calls; our
``kernels_mnb`` must produce the same packed codes, scales and zero points for any weight whose block
scales are normal float32 numbers. tests/test_export.py also checks it against a real cpu-int4 export.
"""

from __future__ import annotations

from math import ceil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mv4deploy.formats.onnx_layouts import get_layout
from mv4deploy.formats.kernels_mnb import mnb4_dequantize, mnb4_quantize

ort_kernels = pytest.importorskip("onnxruntime.capi._pybind_state")


def ort_quantize(w_nk: np.ndarray, block: int, symmetric: bool):
    """onnxruntime's kernel, called as MatMulNBitsQuantizer does: B = W^T [K, N], K padded to whole blocks."""
    n, k = w_nk.shape
    blocks = ceil(k / block)
    b = np.ascontiguousarray(np.pad(w_nk.T.astype(np.float32), ((0, blocks * block - k), (0, 0))))
    packed = np.zeros((n, blocks, block // 2), np.uint8)
    zero = np.zeros((n, (blocks + 1) // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    ort_kernels.quantize_matmul_4bits(packed, b, scales, zero, block, n, blocks * block, symmetric)
    return packed, scales, zero


@st.composite
def weights(draw):
    n = draw(st.integers(1, 24))
    k = draw(st.sampled_from([1, 2, 7, 31, 32, 33, 64, 100, 128, 129, 300]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    w = (rng.standard_normal((n, k)) * 2.0 ** draw(st.integers(-30, 30))).astype(np.float32)
    pattern = draw(st.sampled_from(["normal", "quarters", "zero-row", "signed-zeros", "one-hot"]))
    if pattern == "quarters":          # many exact halves after scaling: roundf's ties
        w = (np.round(w / np.abs(w).max() * 32) / 4).astype(np.float32)
    elif pattern == "zero-row":
        w[0] = 0
    elif pattern == "signed-zeros":    # a zero block's scale takes the sign of its first zero
        w[:] = np.where(rng.random(w.shape) < 0.5, -0.0, 0.0)
    elif pattern == "one-hot":
        w[:] = 0
        w[..., draw(st.integers(0, k - 1))] = rng.choice([-1.0, 1.0])
    return w


@settings(max_examples=60, deadline=None)
@given(w=weights(), config=st.sampled_from([(32, True), (128, True), (32, False), (128, False)]))
def test_torch_kernel_matches_onnxruntime_bit_for_bit(w, config):
    block, symmetric = config
    ours = [t.numpy() for t in mnb4_quantize(torch.from_numpy(w), block, symmetric)]
    theirs = ort_quantize(w, block, symmetric)
    assert np.array_equal(ours[0], theirs[0])
    assert np.array_equal(ours[1].view(np.uint32), theirs[1].view(np.uint32))     # bits: signed zeros too
    if not symmetric:
        assert np.array_equal(ours[2], theirs[2])


def test_dequantize_is_the_matmulnbits_formula_by_hand():
    # one block of 32: the extreme -2.0 lands on code 0, scale = -2 / -8 = 0.25; 1.0 -> 1/0.25 + 8 = 12;
    # 0.375 -> 1.5 + 8 = 9.5 -> roundf 10 (a tie, away from zero); 2.0 -> 16 -> clamped to 15 = 1.75
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([-2.0, 1.0, 0.375, 1.9])
    packed, scales = mnb4_quantize(w, 32, True)
    assert scales.tolist() == [[0.25]]
    assert packed[0, 0, :2].tolist() == [0 | (12 << 4), 10 | (16 - 1) << 4]
    back = mnb4_dequantize(packed, scales, None, 32)
    assert back[0, :4].tolist() == [-2.0, 1.0, 0.5, 1.75]


@pytest.mark.parametrize("name", ["mnb-int4-b32", "mnb-int4-b128-zp"])
def test_layout_and_quantize_agree(name):
    fmt = get_layout(name)
    w = torch.randn(5, 300)
    stored = fmt.stored("x.weight", (5, 300))
    out = fmt.quantize("x.weight", w)
    assert [tuple(t.shape) for t in out.values()] == [t.shape for t in stored]
    assert sum(t.numel() * t.element_size() for t in out.values()) == fmt.nbytes((5, 300))
