"""KV-cache layouts per architecture, against the per-token arithmetic in facts/deepseek-arch.md §1-§2."""

from __future__ import annotations

import pytest

from mv4deploy.model.kv import Access, CacheFormat, cache_formats, kv_layout
from mv4deploy.model.spec import Arch
from mv4deploy.model.source import resolve_model


def _kv(preset, fmt=None):
    return kv_layout(resolve_model(preset).spec, fmt)


def test_v32_fp8_is_61_times_656_plus_132():
    assert _kv("deepseek-v3.2", "fp8").bytes_per_token == 61 * (656 + 132) == 48_068


def test_v3_mla_latent():
    assert _kv("deepseek-v3", "bf16").bytes_per_token == 61 * 576 * 2 == 70_272
    assert _kv("deepseek-v3", "fp8").bytes_per_token == 61 * 656


@pytest.mark.parametrize("preset,fp8,bf16,layers", [
    # CSA: (584 + 132)/4 per layer, HCA: 584/128 -> Flash 21 x 179 + 20 x 4.5625 = 3,850.25
    ("deepseek-v4-flash", 21 * 179 + 20 * 584 / 128, 21 * (1024 + 132) / 4 + 20 * 1024 / 128, 43),
    ("deepseek-v4-pro", 30 * 179 + 31 * 584 / 128, 30 * (1024 + 132) / 4 + 31 * 1024 / 128, 61),
])
def test_v4_pools(preset, fp8, bf16, layers):
    kv = _kv(preset, "fp8")
    assert kv.bytes_per_token == pytest.approx(fp8)
    assert _kv(preset, "bf16").bytes_per_token == pytest.approx(bf16)
    assert kv.window_bytes_per_sequence == layers * 128 * 584         # window of 128 entries, every layer
    pools = {p.name: p for p in kv.pools}
    assert pools["csa_entries"].access is Access.TOPK and pools["hca_entries"].access is Access.DENSE


def test_v4_flash_at_one_million_tokens():
    kv = _kv("deepseek-v4-flash")
    # 1M x 3,850.25 B + window + compressor state (21 x 80 KiB + 20 x 512 KiB)
    assert kv.fixed_bytes_per_sequence == 21 * 81_920 + 20 * 524_288
    assert kv.bytes(1_048_576) == pytest.approx(1_048_576 * 3850.25 + 43 * 128 * 584 + kv.fixed_bytes_per_sequence,
                                                rel=1e-6)


def test_topk_read_is_bounded_by_index_topk():
    kv = _kv("deepseek-v4-flash")
    csa = next(p for p in kv.pools if p.name == "csa_entries")
    # at 128K context, CSA has 32,768 entries per layer but one step reads only index_topk = 512
    assert csa.read_bytes_per_step(131_072) == 21 * 512 * 584
    assert csa.bytes(131_072) == 21 * 32_768 * 584


def test_distillate_gqa():
    assert _kv("deepseek-r1-distill-qwen-7b").bytes_per_token == 28 * 2 * 4 * 128 * 2 == 57_344
    assert _kv("deepseek-r1-distill-llama-8b").bytes_per_token == 32 * 2 * 8 * 128 * 2 == 131_072


def test_fp32_cache_exists_only_for_gqa():
    """onnxruntime's CPU GroupQueryAttention keeps an fp32 cache (the phone export); MLA and V4 entries have
    a BF16 and an FP8 layout only, so asking for fp32 there is refused, not a KeyError."""
    assert _kv("deepseek-r1-distill-qwen-7b", "f32").bytes_per_token == 28 * 2 * 4 * 128 * 4   # K+V, 4 kv heads
    assert cache_formats(Arch.QWEN2) == frozenset(CacheFormat)
    for arch in (Arch.DEEPSEEK_V3, Arch.DEEPSEEK_V32, Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41):
        assert cache_formats(arch) == {CacheFormat.BF16, CacheFormat.FP8}
    with pytest.raises(ValueError, match="no f32"):
        _kv("tiny-deepseek-v4", "f32")
