"""Per-position comparison of a candidate's next-token distribution with a reference's.

Pure tensor functions of natural-log probabilities laid out ``[S, V]``: S scored positions, V the width
of the logits. The divergence is KL(P_base || Q) in nats, base = the reference, Q = the candidate, as
``llama-perplexity --kl-divergence`` defines it. Everything is computed in float64: a mean KLD of 1e-5
(what FP8 weights typically cost) must not drown in float32 rounding of log-probs near -20.

The golden route (a reference compressed to its top-k tokens, the rest of its mass, and a sample of
that rest) lives in ``compressed.py`` and produces the same ``PositionStats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEG_INF = float("-inf")


@dataclass(frozen=True)
class PositionStats:
    """What validation keeps for each scored position (1-D float64 / bool tensors of length S)."""

    kld: Tensor        # KL(P_base || Q) at each position, nats
    nll_base: Tensor   # -ln P_base(token that came next)
    nll_q: Tensor      # -ln Q(token that came next)
    same_top1: Tensor  # argmax P_base == argmax Q

    @property
    def count(self) -> int:
        return int(self.kld.numel())

    @property
    def delta_p(self) -> Tensor:
        """Q(next token) - P_base(next token): llama.cpp's Δp, a probability difference in [-1, 1]."""
        return torch.exp(-self.nll_q) - torch.exp(-self.nll_base)

    @staticmethod
    def concat(parts: list["PositionStats"]) -> "PositionStats":
        if not parts:
            empty = torch.zeros(0, dtype=torch.float64)
            return PositionStats(empty, empty, empty, torch.zeros(0, dtype=torch.bool))
        return PositionStats(*(torch.cat([getattr(p, f).cpu() for p in parts])
                               for f in ("kld", "nll_base", "nll_q", "same_top1")))


def log_probs(logits: Tensor) -> Tensor:
    """Logits ``[S, V]`` of any float dtype -> float64 natural log-probabilities."""
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def kl_divergence(logp_base: Tensor, logp_q: Tensor) -> Tensor:
    """KL(P_base || Q) per row, nats. Tokens P_base gives zero probability contribute nothing;
    a token P_base can emit but Q gives zero probability makes the row infinite, as it should."""
    _check_pair(logp_base, logp_q)
    p = logp_base.exp()
    terms = torch.where(p > 0, p * (logp_base - logp_q), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(dim=-1)


def position_stats(logp_base: Tensor, logp_q: Tensor, targets: Tensor) -> PositionStats:
    """Full-vocabulary statistics at S positions; ``targets[s]`` is the token that followed position s."""
    _check_pair(logp_base, logp_q)
    check_targets(targets, logp_base)
    index = targets.view(-1, 1).to(device=logp_base.device, dtype=torch.int64)
    return PositionStats(
        kld=kl_divergence(logp_base, logp_q),
        nll_base=-logp_base.gather(1, index).squeeze(1),
        nll_q=-logp_q.gather(1, index).squeeze(1),
        same_top1=logp_base.argmax(dim=-1) == logp_q.argmax(dim=-1),
    )


def _check_pair(logp_base: Tensor, logp_q: Tensor) -> None:
    if logp_base.dim() != 2 or logp_base.shape != logp_q.shape:
        raise ValueError(f"log-probs must both be [S, V]; got {tuple(logp_base.shape)} and {tuple(logp_q.shape)}")


def check_targets(targets: Tensor, logp: Tensor) -> None:
    if targets.dim() != 1 or targets.shape[0] != logp.shape[0]:
        raise ValueError(f"targets must be [S] with S = {logp.shape[0]}; got {tuple(targets.shape)}")
