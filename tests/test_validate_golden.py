"""Golden files: exact round trip, compact layout, and every way a file can be wrong -> InputError."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import save_file

from mv4deploy.core.errors import InputError
from mv4deploy.validate.golden import (FORMAT, HEADER_KEY, Golden, GoldenHeader, read_golden, write_golden)
from mv4deploy.validate.compressed import compress
from mv4deploy.validate.metrics import log_probs

CHUNKS, N, K, M, V = 2, 16, 5, 3, 40
S = CHUNKS * (N - 1 - N // 2)   # 7 scored positions per chunk


def _golden(vocab: int = V) -> Golden:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (CHUNKS, N), generator=g)
    logp = log_probs(torch.randn(S, vocab, generator=g) * 3)
    targets = torch.cat([tokens[c, N // 2 + 1:] for c in range(CHUNKS)])
    header = GoldenHeader(model="tiny", model_kind="transformers", tokenizer_sha256="ab" * 32, eval_name="eval.txt",
                          eval_sha256="cd" * 32, eval_tokens=CHUNKS * N + 5, chunk_tokens=N, chunks=CHUNKS, scored_per_chunk=N - 1 - N // 2,
                          topk=K, tail_samples=M, sample_seed=0, vocab_size=vocab, bos_id=None)
    return Golden(header, tokens, compress(logp, targets, K, M, torch.Generator().manual_seed(0)))


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "golden-tiny.safetensors"
    g = _golden()
    write_golden(path, g)
    back = read_golden(path)
    assert back.header == g.header
    assert torch.equal(back.tokens, g.tokens)
    for name in ("ids", "logp", "tail_logmass", "target_logp", "sample_ids", "sample_logp"):
        stored = getattr(back.reference, name)
        assert torch.equal(stored, getattr(g.reference, name).to(stored.dtype))
    assert not list(tmp_path.glob("*.tmp"))


def test_layout_is_compact_and_ids_narrow_for_small_vocabularies(tmp_path):
    from safetensors import safe_open
    small, large = tmp_path / "small.safetensors", tmp_path / "large.safetensors"
    write_golden(small, _golden())
    write_golden(large, _golden(vocab=40_000))
    with safe_open(str(small), "pt") as f:
        assert f.get_slice("topk_ids").get_dtype() == "I16"
        header = json.loads(f.metadata()[HEADER_KEY])
    with safe_open(str(large), "pt") as f:
        assert f.get_slice("topk_ids").get_dtype() == "I32"
    assert header["format"] == FORMAT and header["eval_sha256"] == "cd" * 32 and header["chunk_tokens"] == N
    # payload: tokens 2*16*4 + ids 14*(5+3)*2 + logprobs 14*(5+3)*4 + 2 * 14*4 = 128 + 224 + 448 + 112 = 912
    assert small.stat().st_size < 912 + 1500


def _write_raw(path, tensors, header):
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(header)} if header is not None else None)


def _parts():
    g = _golden()
    tensors = {"tokens": g.tokens.int(), "topk_ids": g.reference.ids.short(), "topk_logprobs": g.reference.logp,
               "tail_logmass": g.reference.tail_logmass, "target_logprob": g.reference.target_logp,
               "sample_ids": g.reference.sample_ids.short(), "sample_logprobs": g.reference.sample_logp}
    return tensors, asdict(g.header)


@pytest.mark.parametrize("mutate,field", [
    (lambda t, h: h.update(format="llama.cpp-kld"), "format"),
    (lambda t, h: h.pop("eval_sha256"), HEADER_KEY),
    (lambda t, h: h.update(extra=1), HEADER_KEY),
    (lambda t, h: h.update(chunks=0), "chunks"),
    (lambda t, h: h.update(scored_per_chunk=8), "scored_per_chunk"),
    (lambda t, h: t.update(topk_logprobs=t["topk_logprobs"][:-1]), "topk_logprobs"),
    (lambda t, h: t.update(topk_logprobs=t["topk_logprobs"].double()), "topk_logprobs"),
    (lambda t, h: t.pop("tail_logmass"), "tail_logmass"),
    (lambda t, h: t.update(stray=torch.zeros(1)), "tensors"),
    (lambda t, h: t["topk_ids"].__setitem__((0, 0), V + 3), "topk_ids"),
    (lambda t, h: t["sample_ids"].__setitem__((0, 0), -1), "sample_ids"),
    (lambda t, h: h.update(tail_samples=4), "sample_ids"),
    (lambda t, h: h.update(sample_seed=-1), "sample_seed"),
])
def test_inconsistent_files_are_bad_input(tmp_path, mutate, field):
    tensors, header = _parts()
    mutate(tensors, header)
    path = tmp_path / "bad.safetensors"
    _write_raw(path, tensors, header)
    with pytest.raises(InputError) as err:
        read_golden(path)
    assert err.value.field == field and err.value.source == str(path)


def test_missing_header_truncated_and_foreign_files_are_bad_input(tmp_path):
    tensors, _ = _parts()
    plain = tmp_path / "plain.safetensors"
    _write_raw(plain, tensors, None)
    with pytest.raises(InputError, match="not a golden file"):
        read_golden(plain)
    good = tmp_path / "good.safetensors"
    write_golden(good, _golden())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        read_golden(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError):
        read_golden(text)
    with pytest.raises(InputError, match="not found"):
        read_golden(tmp_path / "absent.safetensors")


def test_eval_tokens_come_back_from_the_header(tmp_path):
    path = tmp_path / "g.safetensors"
    g = _golden()
    write_golden(path, replace(g, header=replace(g.header, bos_id=3)))
    et = read_golden(path).eval_tokens()
    assert et.chunks == CHUNKS and et.chunking.chunk_tokens == N and et.bos_id == 3 and et.positions == S
    assert et.total_tokens == CHUNKS * N + 5
