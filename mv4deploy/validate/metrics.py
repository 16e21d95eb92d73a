"""Per-position comparison of a candidate's next-token distribution with a reference's.

Pure tensor functions of natural-log probabilities laid out ``[S, V]``: S scored positions, V the width
of the logits. The divergence is KL(P_base || Q) in nats, base = the reference, Q = the candidate, as
``llama-perplexity --kl-divergence`` defines it. Everything is computed in float64: a mean KLD of 1e-5
(what FP8 weights typically cost) must not drown in float32 rounding of log-probs near -20.

Two routes produce the same ``PositionStats``:
- full: both distributions over the whole vocabulary (``position_stats``);
- golden: the reference compressed to its top-k tokens plus the log of the mass left over
  (``TopK``), so a candidate can be checked without the reference model (``position_stats_topk``).
  The tail is treated as one outcome, which by the log-sum inequality gives a lower bound of the true
  KLD; the bound is tight when the tail holds little mass or the candidate scales it uniformly.
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
    _check_targets(targets, logp_base)
    index = targets.view(-1, 1).to(device=logp_base.device, dtype=torch.int64)
    return PositionStats(
        kld=kl_divergence(logp_base, logp_q),
        nll_base=-logp_base.gather(1, index).squeeze(1),
        nll_q=-logp_q.gather(1, index).squeeze(1),
        same_top1=logp_base.argmax(dim=-1) == logp_q.argmax(dim=-1),
    )


@dataclass(frozen=True)
class TopK:
    """The reference at S positions, compressed: its k most likely tokens in descending order (ties go to
    the lower id, so ``ids[:, 0]`` is exactly ``argmax``), their log-probs, ln of the mass outside them
    (-inf when k covers the vocabulary), and the log-prob of the token that came next. The log-probs are
    float32, the precision a golden file stores."""

    ids: Tensor           # [S, k] int64
    logp: Tensor          # [S, k] float32
    tail_logmass: Tensor  # [S] float32
    target_logp: Tensor   # [S] float32

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def concat(parts: list["TopK"]) -> "TopK":
        return TopK(*(torch.cat([getattr(p, f).cpu() for p in parts])
                      for f in ("ids", "logp", "tail_logmass", "target_logp")))


def top_k(logp_base: Tensor, targets: Tensor, k: int) -> TopK:
    """Compress full log-probs ``[S, V]`` to a ``TopK`` of ``min(k, V)`` tokens per position."""
    _check_targets(targets, logp_base)
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    k = min(k, logp_base.shape[-1])
    ordered, order = torch.sort(logp_base, dim=-1, descending=True, stable=True)
    rest = ordered[:, k:]
    tail = torch.logsumexp(rest, dim=-1) if rest.shape[-1] else torch.full_like(ordered[:, 0], NEG_INF)
    index = targets.view(-1, 1).to(device=logp_base.device, dtype=torch.int64)
    return TopK(ids=order[:, :k].cpu(), logp=ordered[:, :k].float().cpu(), tail_logmass=tail.float().cpu(),
                target_logp=logp_base.gather(1, index).squeeze(1).float().cpu())


def compress_like(ref: TopK, logp_q: Tensor) -> tuple[Tensor, Tensor]:
    """The candidate's log-probs at the reference's top-k ids ``[S, k]`` and ln of its mass on all other
    ids ``[S]``, rounded to float32 exactly as the reference's were: an identical model then compares
    equal bit for bit, and the divergence is exactly 0."""
    ids = ref.ids.to(device=logp_q.device)
    head = logp_q.gather(1, ids)
    outside = torch.ones_like(logp_q, dtype=torch.bool).scatter_(1, ids, False)
    tail = torch.logsumexp(logp_q.masked_fill(~outside, NEG_INF), dim=-1)
    return head.float().double(), tail.float().double()


def kl_divergence_topk(ref: TopK, logp_q: Tensor) -> Tensor:
    """KL(P_base || Q) per row over the partition {each top-k token, everything else}, nats."""
    if logp_q.shape[0] != ref.count:
        raise ValueError(f"candidate has {logp_q.shape[0]} positions, the reference {ref.count}")
    head_q, tail_q = compress_like(ref, logp_q)
    head_p = ref.logp.to(device=logp_q.device, dtype=torch.float64)
    tail_p = ref.tail_logmass.to(device=logp_q.device, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=logp_q.device)
    head = torch.where(head_p > NEG_INF, head_p.exp() * (head_p - head_q), zero).sum(dim=-1)
    tail = torch.where(tail_p > NEG_INF, tail_p.exp() * (tail_p - tail_q), zero)
    return head + tail


def position_stats_topk(ref: TopK, logp_q: Tensor, targets: Tensor) -> PositionStats:
    """``position_stats`` against a compressed reference. The candidate's log-prob of the next token is
    rounded to float32 like the reference's, so Δp of an identical model is exactly 0."""
    _check_targets(targets, logp_q)
    index = targets.view(-1, 1).to(device=logp_q.device, dtype=torch.int64)
    return PositionStats(
        kld=kl_divergence_topk(ref, logp_q).cpu(),
        nll_base=-ref.target_logp.double(),
        nll_q=-logp_q.gather(1, index).squeeze(1).float().double().cpu(),
        same_top1=ref.ids[:, 0] == logp_q.argmax(dim=-1).cpu(),
    )


def _check_pair(logp_base: Tensor, logp_q: Tensor) -> None:
    if logp_base.dim() != 2 or logp_base.shape != logp_q.shape:
        raise ValueError(f"log-probs must both be [S, V]; got {tuple(logp_base.shape)} and {tuple(logp_q.shape)}")


def _check_targets(targets: Tensor, logp: Tensor) -> None:
    if targets.dim() != 1 or targets.shape[0] != logp.shape[0]:
        raise ValueError(f"targets must be [S] with S = {logp.shape[0]}; got {tuple(targets.shape)}")
