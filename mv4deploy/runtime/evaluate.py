"""Held-out perplexity of one loaded model (the fixture tests and ``scripts/make_fixtures.py measure``).

Comparing a candidate with a reference (KLD, top-1, PPL ratio) is ``mv4deploy.validate``'s job:
``validate.run.compare_models`` scores two loaded models exactly as ``mv4deploy validate`` does.
"""

from __future__ import annotations

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
