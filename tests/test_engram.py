"""Engram unit tests: hashing, primes, tokenizer compression, gating, the causal conv, a hand-worked case."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mv4deploy.runtime.engram import (Engram, EngramConfig, EngramEmbedding, EngramHasher,  # noqa: E402
                                      ShortConv, canonical_text, compressed_token_map, engram_indices,
                                      hash_multipliers)


def config(**overrides) -> EngramConfig:
    base = dict(layer_ids=(1, 3), max_ngram_size=3, n_heads=2, head_dim=8, vocab_size=101, pad_token_id=2,
                compressed_vocab_size=50, hidden_size=16, hc_mult=4, eps=1e-6)
    return EngramConfig(**{**base, **overrides})


def hasher(cfg: EngramConfig, vocab: int = 60) -> EngramHasher:
    h = EngramHasher(cfg)
    h.set_token_map([i % cfg.compressed_vocab_size for i in range(vocab)])
    return h


def test_primes_are_distinct_and_match_v41():
    cfg = config()
    flat = [p for layer in cfg.primes for order in layer for p in order]
    assert len(flat) == len(set(flat)) == 2 * 2 * 2 and min(flat) >= cfg.vocab_size
    assert all(all(p % d for d in range(2, int(math.isqrt(p)) + 1)) for p in flat)
    v41 = config(layer_ids=(1, 14), max_ngram_size=4, n_heads=8, head_dim=256, vocab_size=16_000_000)
    assert v41.num_embeddings == (384_006_168, 384_016_682)      # the engram_num_embeddings V4.1 ships


def test_num_embeddings_contradiction_is_an_error():
    from types import SimpleNamespace
    hf = SimpleNamespace(engram_layer_ids=[1], engram_max_ngram_size=3, engram_n_heads=2, engram_head_dim=8,
                         engram_vocab_size=101, engram_pad_token_id=2, engram_compressed_vocab_size=50,
                         engram_num_embeddings=[999], hidden_size=16, hc_mult=4, rms_norm_eps=1e-6)
    with pytest.raises(ValueError, match="contradicts"):
        EngramConfig.from_hf(hf)


def test_multipliers_are_odd_bounded_and_per_layer_seeded():
    m = hash_multipliers((1, 3), 3, 50)
    bound = (np.iinfo(np.int64).max // 50) // 2
    assert m.dtype == torch.int64 and bool((m % 2 == 1).all()) and int(m.max()) < 2 * bound + 1
    expected = np.random.default_rng(10007 * 3).integers(0, bound, size=3, dtype=np.int64) * 2 + 1
    assert m[1].tolist() == expected.tolist()
    assert m[0].tolist() != m[1].tolist()


def test_hash_ids_are_deterministic_and_inside_each_heads_range():
    cfg = config()
    ids = torch.randint(0, 60, (3, 40), generator=torch.Generator().manual_seed(0))
    a, b = engram_indices(ids, hasher(cfg)), engram_indices(ids.clone(), hasher(cfg))
    assert a.shape == (3, 40, 2, cfg.hash_columns) and torch.equal(a, b)
    for layer, primes in enumerate(cfg.primes):
        sizes = [p for order in primes for p in order]
        starts = np.cumsum([0] + sizes[:-1])
        for col, (start, size) in enumerate(zip(starts, sizes)):
            column = a[:, :, layer, col]
            assert int(column.min()) >= start and int(column.max()) < start + size
        assert int(a[:, :, layer].max()) < cfg.num_embeddings[layer]
    assert not torch.equal(a[..., 0, :] - a[..., 0, :1], a[..., 1, :] - a[..., 1, :1])  # layers hash differently


def test_hand_computed_hash():
    """Position 2 of [5, 7, 9] (compressed = id here): 2-gram (9, 7), 3-gram (9, 7, 5), one head each."""
    cfg = config(layer_ids=(1,), n_heads=1, compressed_vocab_size=60)
    h = EngramHasher(cfg)
    h.set_token_map(list(range(60)))
    m0, m1, m2 = (int(x) for x in hash_multipliers((1,), 3, 60)[0])
    (p2,), (p3,) = cfg.primes[0]
    mix2 = (9 * m0) ^ (7 * m1)
    mix3 = mix2 ^ (5 * m2)
    got = engram_indices(torch.tensor([[5, 7, 9]]), h)[0, 2, 0].tolist()
    assert got == [mix2 % p2, p2 + mix3 % p3]
    pad = 2  # position 0: both look-backs are the pad id
    assert engram_indices(torch.tensor([[5]]), h)[0, 0, 0].tolist() == [((5 * m0) ^ (pad * m1)) % p2,
                                                                        p2 + ((5 * m0) ^ (pad * m1) ^ (pad * m2)) % p3]


def test_hash_depends_only_on_the_last_n_tokens():
    cfg = config()
    h = hasher(cfg)
    a = engram_indices(torch.tensor([[11, 12, 13, 14, 15]]), h)
    b = engram_indices(torch.tensor([[40, 41, 13, 14, 15]]), h)
    assert torch.equal(a[0, 4], b[0, 4]) and not torch.equal(a[0, 3], b[0, 3])


def test_compression_folds_accents_case_and_whitespace():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = {"Café": 0, "cafe": 1, "CAFE": 2, " cafe": 3, "café\n": 4, "tea": 5, "\n": 6, "  ": 7, "Ｃafe": 8}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="tea")))
    lookup, size = compressed_token_map(tok)
    assert lookup[0] == lookup[1] == lookup[2] == lookup[3] == lookup[4] == lookup[8]
    assert lookup[6] == lookup[7] != lookup[5]           # whitespace-only tokens share " ", apart from words
    assert size == 3
    assert canonical_text("  Héllo\t\tWORLD \n") == "hello world"


def test_token_map_must_match_the_configured_compressed_vocab():
    with pytest.raises(ValueError, match="compresses to 7 ids"):
        EngramHasher(config()).set_token_map(list(range(7)))
    with pytest.raises(RuntimeError, match="token"):
        EngramHasher(config())(torch.tensor([[1]]))


def test_gates_are_per_stream_and_hand_computed():
    cfg = config(layer_ids=(1,), hidden_size=2, hc_mult=1, n_heads=1, max_ngram_size=2, head_dim=2)
    engram = Engram(cfg, 1)
    hidden = torch.tensor([[[[1.0, 0.0]]]])                     # [B=1, L=1, hc=1, D=2]
    # rms(h) = rms(k) = sqrt(0.5); dot = 1 * 2 / sqrt(2) = sqrt(2); gate = sigmoid(2**0.25) = 0.766599
    gate = engram.gates(hidden, hidden.clone())
    assert gate.shape == (1, 1, 1) and gate.item() == pytest.approx(1 / (1 + math.exp(-(2 ** 0.25))), abs=1e-6)
    with torch.no_grad():                                       # rows -> key = [1, 0], value = [3, -1]
        engram.wkv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 0.0], [-1.0, 0.0]]))
    out = engram(hidden, torch.tensor([[[[1.0, 0.0]]]]))
    assert out[0, 0, 0].tolist() == pytest.approx([1 + 0.766599 * 3, -0.766599], abs=1e-5)
    wide = Engram(config(), 1)
    streams = torch.randn(2, 5, 4, 16)
    g = wide.gates(streams, torch.randn(2, 5, 4, 16))
    assert g.shape == (2, 5, 4) and bool(((g > 0) & (g < 1)).all()) and g.std() > 0


def test_short_conv_is_causal():
    cfg = config(kernel_size=4)
    conv = ShortConv(cfg)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(1, 20, 4, 16)
    y = conv(x)
    x2 = x.clone()
    x2[:, 12:] += torch.randn_like(x2[:, 12:])
    y2 = conv(x2)
    assert torch.equal(y[:, :12], y2[:, :12]) and not torch.equal(y[:, 12:], y2[:, 12:])
    x3 = x.clone()
    x3[:, 12 - 3 * 3 - 1] += 1.0                                # beyond (kernel - 1) * dilation: no effect
    assert torch.equal(conv(x3)[:, 12], y[:, 12])


def test_fp8_rows_decode_with_their_ue8m0_scales():
    table = EngramEmbedding(4, 64, scale_columns=2, dtype=torch.float8_e4m3fn)
    with torch.no_grad():
        table.weight.copy_(torch.full((4, 64), 1.5).to(torch.float8_e4m3fn))
        table.scale.copy_(torch.tensor([[1.0, 2.0]] * 4).to(torch.float8_e8m0fnu))
    rows, scales = table.gather(torch.tensor([[1, 3]]))
    decoded = EngramEmbedding.decode(rows, scales)
    assert decoded.shape == (1, 2, 64)
    assert decoded[0, 0, :32].unique().tolist() == [1.5] and decoded[0, 0, 32:].unique().tolist() == [3.0]
