"""The validate pipeline on tiny trained Qwen2 models: chunking, both routes (full and golden), the
tokenizer check and the request rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mv4deploy.core.errors import InputError
from mv4deploy.validate.run import ValidateRequest, validate
from validate_fixtures import build_tiny_models

CHUNK = 128


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "validate-models")


def _run(tiny, candidate, **kw):
    kw.setdefault("max_chunks", 4)
    return validate(ValidateRequest(reference=tiny.ref, candidate=candidate, eval_path=tiny.eval_text,
                                    chunk_tokens=CHUNK, **kw))


def test_identical_weights_give_zero_kld_and_full_top1(tiny):
    r = _run(tiny, tiny.copy)
    s = r.summary
    assert s["tokens_scored"] == 4 * (CHUNK - 1 - CHUNK // 2) == 252
    assert s["kld_mean"] == 0.0 and s["kld_max"] == 0.0 and s["same_top1"] == 1.0
    assert s["ppl_ratio"] == 1.0 and s["delta_p_rms"] == 0.0
    assert r.candidate.tokenizer_sha256 == r.reference.tokenizer_sha256


def test_only_the_second_half_of_each_chunk_is_scored(tiny):
    """Recompute chunk 1's KLD by hand: full forward of both models, rows N/2 .. N-2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny.ref))
    ids = tok(tiny.eval_text.read_text(), add_special_tokens=False, verbose=False)["input_ids"]
    chunk = torch.tensor(ids[CHUNK:2 * CHUNK]).view(1, -1)
    if tok.bos_token_id is not None and tok("a")["input_ids"][0] == tok.bos_token_id:
        chunk[0, 0] = tok.bos_token_id   # llama.cpp's rule: a tokenizer that adds BOS gets it at each chunk start
    logps = []
    for folder in (tiny.ref, tiny.fp8):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            logps.append(torch.log_softmax(model(chunk).logits[0].double(), -1)[CHUNK // 2: CHUNK - 1])
    expected = F.kl_div(logps[1], logps[0], reduction="none", log_target=True).sum(-1)
    r = _run(tiny, tiny.fp8, max_chunks=2)
    per = CHUNK - 1 - CHUNK // 2
    torch.testing.assert_close(r.positions.kld[per:], expected, rtol=1e-4, atol=1e-7)
    nll = -logps[0].gather(1, chunk[0, CHUNK // 2 + 1:].view(-1, 1)).squeeze(1)
    torch.testing.assert_close(r.positions.nll_base[per:], nll, rtol=1e-5, atol=1e-6)


def test_damage_shows_in_every_statistic(tiny):
    fp8 = _run(tiny, tiny.fp8).summary
    bad = _run(tiny, tiny.damaged).summary
    assert 0 < fp8["kld_mean"] < 0.01 < 0.1 < bad["kld_mean"]
    assert fp8["same_top1"] > 0.85 > 0.7 > bad["same_top1"]
    assert bad["ppl_ratio"] > 1.05 and bad["delta_p_rms"] > 5 * fp8["delta_p_rms"]
    assert bad["kld_p99"] > bad["kld_median"] and bad["kld_max"] >= bad["kld_p99_9"]


def test_golden_route_matches_full_route(tiny, tmp_path):
    golden = tmp_path / "golden-ref.safetensors"
    full = _run(tiny, tiny.fp8, max_chunks=8, golden_out=golden).summary
    g = validate(ValidateRequest(golden=golden, candidate=tiny.fp8)).summary
    # defaults k = 128, 64 tail samples: the golden route's mean KLD within 2 % of the exact one
    assert g["kld_mean"] == pytest.approx(full["kld_mean"], rel=0.02)
    bound = validate(ValidateRequest(reference=tiny.ref, eval_path=tiny.eval_text, chunk_tokens=CHUNK, max_chunks=8,
                                     golden_out=golden, tail_samples=0))
    assert bound.summary is None
    lower = validate(ValidateRequest(golden=golden, candidate=tiny.fp8)).summary
    assert lower["kld_mean"] <= full["kld_mean"] * (1 + 1e-6)       # without samples: a lower bound
    assert g["same_top1"] == full["same_top1"] and g["tokens_scored"] == full["tokens_scored"]
    assert g["ppl_ratio"] == pytest.approx(full["ppl_ratio"], rel=1e-6)
    assert g["delta_p_rms"] == pytest.approx(full["delta_p_rms"], rel=1e-4)
    same = validate(ValidateRequest(golden=golden, candidate=tiny.copy)).summary
    assert same["kld_mean"] == 0.0 and same["kld_max"] == 0.0 and same["same_top1"] == 1.0


def test_golden_only_run_writes_the_file_and_no_statistics(tiny, tmp_path):
    golden = tmp_path / "g.safetensors"
    r = validate(ValidateRequest(reference=tiny.ref, eval_path=tiny.eval_text, chunk_tokens=CHUNK, max_chunks=2,
                                 golden_out=golden, topk=8))
    assert golden.is_file() and r.summary is None and r.candidate is None
    data = r.to_json()
    assert data["kld_mean"] is None and data["chunks"] == 2 and data["golden_out"] == str(golden)


def test_a_different_tokenizer_is_refused(tiny):
    with pytest.raises(InputError, match="tokenizer.*differs from the reference"):
        _run(tiny, tiny.other_tokenizer)


def test_golden_refuses_a_different_eval_text(tiny, tmp_path):
    golden = tmp_path / "g.safetensors"
    _run(tiny, tiny.copy, max_chunks=1, golden_out=golden)
    other = tmp_path / "other.txt"
    other.write_text(tiny.eval_text.read_text() + "\n# changed\n")
    with pytest.raises(InputError, match="differs from the eval text"):
        validate(ValidateRequest(golden=golden, candidate=tiny.copy, eval_path=other))


def test_eval_text_shorter_than_a_chunk_is_bad_input(tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    with pytest.raises(InputError, match="shorter than one chunk"):
        validate(ValidateRequest(reference=tiny.ref, candidate=tiny.copy, eval_path=short, chunk_tokens=CHUNK))


@pytest.mark.parametrize("kw,option", [
    ({"reference": Path("r"), "golden": Path("g"), "candidate": Path("c")}, "--golden"),
    ({"candidate": Path("c"), "eval_path": Path("e")}, "--reference"),
    ({"golden": Path("g")}, "--candidate"),
    ({"reference": Path("r"), "candidate": Path("c")}, "--eval"),
    ({"reference": Path("r"), "eval_path": Path("e")}, "--candidate"),
    ({"golden": Path("g"), "candidate": Path("c"), "golden_out": Path("o")}, "--golden-out"),
    ({"reference": Path("r"), "eval_path": Path("e"), "golden_out": Path("o"), "gate": Path("x")}, "--gate"),
    ({"golden": Path("g"), "candidate": Path("c"), "topk": 0}, "--topk"),
])
def test_request_rules(kw, option):
    with pytest.raises(InputError) as err:
        validate(ValidateRequest(**kw))
    assert err.value.field == option


@pytest.mark.gpu
def test_cuda_gives_the_cpu_statistics(tiny):
    cpu = _run(tiny, tiny.fp8).summary
    gpu = _run(tiny, tiny.fp8, device="cuda").summary
    assert gpu["tokens_scored"] == cpu["tokens_scored"]
    assert gpu["kld_mean"] == pytest.approx(cpu["kld_mean"], rel=1e-2)
    assert abs(gpu["same_top1"] - cpu["same_top1"]) <= 2 / cpu["tokens_scored"]
