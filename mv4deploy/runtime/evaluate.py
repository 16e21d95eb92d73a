"""Small held-out measurements on loaded models: perplexity, and candidate-vs-reference KLD / top-1.

Used by the fixture tests and ``scripts/make_fixtures.py measure``; the full statistics (percentiles,
Delta-p, golden files, gates) belong to ``mv4deploy.validate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def token_chunks(ids: torch.Tensor, chunk: int, max_chunks: int) -> list[torch.Tensor]:
    """Non-overlapping [1, chunk] windows from the start of a 1-D id tensor."""
    count = min(max_chunks, len(ids) // chunk)
    return [ids[i * chunk: (i + 1) * chunk].unsqueeze(0) for i in range(count)]


@torch.no_grad()
def heldout_nll(model, ids: torch.Tensor, chunk: int = 256, max_chunks: int = 8) -> tuple[float, int]:
    """(mean next-token negative log-likelihood in nats, tokens scored)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for window in token_chunks(ids, chunk, max_chunks):
        window = window.to(device)
        logits = model(input_ids=window, use_cache=False).logits.float()
        total += F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return total / count, count


@dataclass(frozen=True)
class Agreement:
    kld_mean: float       # mean KL(reference || candidate) per token, nats
    kld_max: float
    top1: float           # share of tokens where both pick the same argmax
    tokens: int
    ppl_reference: float
    ppl_candidate: float


@torch.no_grad()
def agreement(reference, candidate, ids: torch.Tensor, chunk: int = 256, max_chunks: int = 8) -> Agreement:
    """Compare two models position by position on the same held-out windows."""
    klds, same, nll_ref, nll_cand = [], 0, 0.0, 0.0
    for window in token_chunks(ids, chunk, max_chunks):
        ref = reference(input_ids=window, use_cache=False).logits.float()[0, :-1].log_softmax(-1)
        cand = candidate(input_ids=window, use_cache=False).logits.float()[0, :-1].log_softmax(-1)
        klds.append((ref.exp() * (ref - cand)).sum(-1))
        same += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        target = window[0, 1:]
        nll_ref -= ref.gather(-1, target[:, None]).sum().item()
        nll_cand -= cand.gather(-1, target[:, None]).sum().item()
    kld = torch.cat(klds)
    n = kld.numel()
    return Agreement(float(kld.mean()), float(kld.max()), same / n, n, math.exp(nll_ref / n), math.exp(nll_cand / n))
