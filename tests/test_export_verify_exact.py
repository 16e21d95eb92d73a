"""export.verify on two hand-made logits sources whose every answer is known: the next token is a fixed
successor of the previous one (0 -> 1 -> 2 -> 3 -> 4 -> 0), and the candidate differs only after token 3
(it predicts 0 instead of 4). Greedy runs, agreeing prefixes, the statistics on the scored positions
(KL divergence from numpy), the target's gate and the report's fields are all worked by hand. Found by
mutation testing (docs/ci.md, "Mutation testing")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _support.progress import recorder
import mv4deploy.export.verify as verify_module
from mv4deploy.export.targets import Tolerance
from mv4deploy.export.verify import (GREEDY_METRIC, compare_greedy, greedy, reference_source, tolerance_gate,
                                     verify)
from mv4deploy.validate.evaltext import Chunking, EvalTokens
from mv4deploy.validate.gate import Limit

V = 5
REFERENCE = {t: (t + 1) % V for t in range(V)}
CANDIDATE = {**REFERENCE, 3: 0}


class Successor:
    """Logits [V]: 2.0 at the successor of the previous token, 0 elsewhere."""

    kind, path, tokenizer = "fake", Path("."), None

    def __init__(self, successor):
        self.successor, self.fed = successor, []

    def _row(self, token: int) -> torch.Tensor:
        row = torch.zeros(V)
        row[self.successor[int(token)]] = 2.0
        return row

    def last_logits(self, tokens, keep):
        return torch.stack([self._row(t) for t in tokens[-keep:]])

    def begin(self, prompt):
        self.fed = [int(t) for t in prompt]
        return self._row(prompt[-1])

    def advance(self, token):
        self.fed.append(token)
        return self._row(token)


# three chunks of 8: positions 4, 5, 6 are scored (they predict tokens 5, 6, 7); their inputs are
# (4, 0, 1), (2, 3, 4) and (0, 1, 0): one position of the nine follows a 3
TOKENS = EvalTokens(torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], [3, 4, 0, 1, 2, 3, 4, 0], [4, 4, 4, 4, 0, 1, 0, 1]]),
                    Chunking(8), "eval.txt", "abc123", 30, None)


def tolerance(prefix_min: float) -> Tolerance:
    return Tolerance(chunk_tokens=8, max_chunks=3, greedy_prompts=3, prompt_tokens=3, greedy_tokens=4,
                     kld_mean_max=0.5, top1_min=0.5, greedy_prefix_mean_min=prefix_min)


def test_greedy_runs_new_tokens_by_argmax():
    source = Successor(REFERENCE)
    assert greedy(source, torch.tensor([0, 1, 2]), 4) == [3, 4, 0, 1]
    assert source.fed == [0, 1, 2, 3, 4, 0]                  # the prompt, then each token but the last
    assert greedy(Successor(CANDIDATE), torch.tensor([0, 1, 2]), 4) == [3, 0, 1, 2]
    assert greedy(source, torch.tensor([4]), 1) == [0]


def test_compare_greedy_by_hand():
    # prompts [0 1 2], [3 4 0], [4 4 4]; reference 3 4 0 1 / 1 2 3 4 / 0 1 2 3;
    # candidate 3 0 1 2 / 1 2 3 0 / 0 1 2 3: prefixes 1, 3 and 4 (all four)
    progress, bars = recorder()
    gen = compare_greedy(Successor(REFERENCE), Successor(CANDIDATE), TOKENS, tolerance(2.0), progress)
    assert [(d, total, sum(steps)) for d, total, steps in bars] == [("validating: greedy runs", 3, 3)]
    assert gen == {"prompts": 3, "prompt_tokens": 3, "new_tokens": 4, "agreeing_prefix": [1, 3, 4],
                   "agreeing_prefix_mean": 8 / 3, "identical": 1,
                   "samples": [{"prompt": [0, 1, 2], "reference": [3, 4, 0, 1], "export": [3, 0, 1, 2]},
                               {"prompt": [3, 4, 0], "reference": [1, 2, 3, 4], "export": [1, 2, 3, 0]},
                               {"prompt": [4, 4, 4], "reference": [0, 1, 2, 3], "export": [0, 1, 2, 3]}]}


def test_tolerance_is_read_as_a_gate():
    gate = tolerance_gate(tolerance(2.5), "exporters/x.yaml")
    assert gate.source == "exporters/x.yaml" and gate.confidence == 0.95
    assert gate.limits == (Limit("kld_mean_max", "kld_mean", "max", 0.5),
                           Limit("top1_min", "same_top1_wilson_low", "min", 0.5),
                           Limit("greedy_prefix_mean_min", GREEDY_METRIC, "min", 2.5))


def _kl(p_logits, q_logits) -> float:
    p, q = np.exp(p_logits) / np.exp(p_logits).sum(), np.exp(q_logits) / np.exp(q_logits).sum()
    return float((p * np.log(p / q)).sum())


def test_verify_reports_statistics_greedy_and_the_gate(monkeypatch):
    clock = iter([100.0, 101.23456])
    monkeypatch.setattr(verify_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    result = verify(Successor(REFERENCE), Successor(CANDIDATE), TOKENS, tolerance(3.0), "exporters/x.yaml")
    # the one differing position: softmax of 2 at token 4 against softmax of 2 at token 0
    kl = _kl(np.array([0, 0, 0, 0, 2.0]), np.array([2.0, 0, 0, 0, 0]))
    stats = result["stats"]
    assert stats["tokens_scored"] == 9 and stats["same_top1"] == pytest.approx(8 / 9, rel=1e-15)
    assert stats["kld_mean"] == pytest.approx(kl / 9, rel=1e-12) and stats["kld_max"] == pytest.approx(kl, rel=1e-12)
    assert result["eval"] == {"text": "eval.txt", "sha256": "abc123", "chunks": 3, "chunk_tokens": 8, "bos_id": None}
    assert result["greedy"]["agreeing_prefix"] == [1, 3, 4]
    # the mean prefix 8/3 misses 3.0; KLD and top-1 pass: p = (1, 1, 1, 1, e^2) / (4 + e^2) against the same
    # with e^2 first: KL = 2 (0.6488 - 0.0878) = 1.122, a mean of 0.125 over 9 positions; 8 of 9 same top-1
    assert result["passed"] is False and result["gate"]["passed"] is False
    assert result["failures"] == ["greedy_prefix_mean 2.66667 < greedy_prefix_mean_min 3"]
    assert [c["measured"] for c in result["gate"]["checks"]][::2] == [stats["kld_mean"], 8 / 3]
    assert result["gate"]["source"] == "exporters/x.yaml"
    assert result["seconds"] == 1.23                                     # 101.23456 - 100, to 2 decimals


def test_verify_passes_with_no_progress_given():
    result = verify(Successor(REFERENCE), Successor(CANDIDATE), TOKENS, tolerance(8 / 3))
    assert result["passed"] is True and result["failures"] == [] and result["gate"]["source"] == "validation"
    assert 0 <= result["seconds"] < 60


def test_reference_source_is_the_transformers_model():
    model = torch.nn.Identity()
    source = reference_source(model, SimpleNamespace(folder=Path("/m"), tokenizer="tok"))
    assert (source.kind, source.path, source.model, source.tokenizer, source.device) == \
        ("transformers", Path("/m"), model, "tok", "cpu")
