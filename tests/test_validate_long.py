"""``validate --contexts``: the same targets scored at several context lengths, and a gate on the growth.

The damaged candidate is tiny-v4 with only its heavily compressed attention (HCA, layer 2) changed: a query
sees its first HCA entry at position 127, so chunks of 128 tokens score it exactly like the reference, and
the damage shows only once context is long. The short-chunk gate must pass and the long-context one fail.
"""

from __future__ import annotations

import json

import pytest

from _support.damage import HCA_COMPRESSOR, scale_tensors
from conftest import REPO, run_cli
from mv4deploy.core.errors import InputError
from mv4deploy.validate.contexts import make_windows, parse_contexts

MODELS = REPO / "tests" / "fixtures" / "models"
EVAL = REPO / "tests" / "fixtures" / "eval.txt"
GATE = REPO / "tests" / "gates" / "tiny-v4-long-context.yaml"


def test_context_lengths_parse_with_k_suffix_sorted_and_unique():
    assert parse_contexts("2k,8k,32k") == (2048, 8192, 32768)
    assert parse_contexts("1024, 128,1k") == (128, 1024)
    for bad in ("2m", "7", "0", "1k,x"):
        with pytest.raises(InputError, match="--contexts"):
            parse_contexts(bad)


def test_every_length_scores_the_same_targets():
    import torch
    ids = torch.arange(10_000)
    cw = make_windows(ids, (128, 1024), windows=3, bos_id=0)
    assert cw.ends == (1024, 2048, 3072) and cw.scored == 64
    for end in cw.ends:
        short, long = cw.window(128, end), cw.window(1024, end)
        assert short[0] == 0 and long[0] == 0                       # BOS replaces the first token
        assert torch.equal(short[-64:], long[-64:]) and int(long[-1]) == end - 1
    with pytest.raises(InputError, match="fewer than the longest context"):
        make_windows(torch.arange(1000), (128, 1024), 2, None)


@pytest.fixture(scope="module")
def hca_damaged(tmp_path_factory):
    dst = tmp_path_factory.mktemp("long") / "tiny-v4-hca"
    assert scale_tensors(MODELS / "tiny-v4", dst, HCA_COMPRESSOR, -4.0) == ["layers.2.attn.compressor.wkv.weight"]
    return dst


def test_damage_in_long_range_attention_passes_short_gate_and_fails_long(hca_damaged):
    r = run_cli("validate", "--reference", MODELS / "tiny-v4", "--candidate", hca_damaged, "--eval", EVAL,
                "--chunk", "128", "--max-chunks", "8", "--contexts", "128,512,2048", "--context-windows", "2",
                "--gate", GATE, "--json", timeout=600)
    assert r.code == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["kld_max"] == 0 and data["same_top1"] == 1.0          # short chunks: not a single bit differs
    rows = {row["context_tokens"]: row for row in data["contexts"]["per_length"]}
    assert rows[128]["kld_mean"] == 0 and rows[128]["tokens_scored"] == 2 * 64
    assert 0 < rows[512]["kld_mean"] < rows[2048]["kld_mean"]           # grows with context
    assert data["context_kld_mean_growth"] == rows[2048]["kld_mean"] > 0.003
    failed = set(data["gate"]["failed"])
    assert failed >= {"context_kld_mean_growth"} and not failed & {"kld_mean", "kld_p99", "same_top1_wilson_low"}
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "context_kld_mean_growth" in errors[0] and "kld_mean " not in errors[0]


def test_a_context_limit_without_contexts_is_exit_2():
    r = run_cli("validate", "--reference", MODELS / "tiny-v4", "--candidate", MODELS / "tiny-v4", "--eval", EVAL,
                "--gate", GATE)
    assert r.code == 2 and "context_kld_mean_growth_max" in r.stderr and "--contexts" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_context_longer_than_the_text_is_exit_2():
    r = run_cli("validate", "--reference", MODELS / "tiny-v4", "--candidate", MODELS / "tiny-v4", "--eval", EVAL,
                "--max-chunks", "1", "--contexts", "128,64k")
    assert r.code == 2 and "65536" in r.stderr and "fewer than the longest context" in r.stderr
