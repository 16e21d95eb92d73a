"""A reference distribution compressed for golden files, and the statistics of a candidate against it.

Per scored position the reference keeps: its k most likely tokens with their log-probs (the head), ln of
the mass on every other token (the tail), and m tokens drawn from the tail in proportion to their
probability, with their log-probs. The candidate is scored against that:

    KLD = Σ_head P ln(P/Q)                  exact
        + P_T ln(P_T / Q_T)                 exact: the tail as one outcome (P_T, Q_T: tail masses)
        + P_T · KL(π || ρ)                  estimated from the m samples

where π = P/P_T and ρ = Q/Q_T are the two distributions inside the tail. The first two terms alone are
a lower bound of the KLD (log-sum inequality); on small, flat vocabularies they miss a lot (tiny-v4, V =
2048, k = 128: -17 % of the mean KLD), because the tail holds a fifth of the mass. The third term is
estimated with r = ρ/π at the sampled tokens: E_π[(r - 1) - ln r] = KL(π || ρ) because E_π[r] = 1, and
(r - 1) - ln r >= 0 is second order in ln r, so few samples suffice (the "k3" estimator). The samples are
systematic (m evenly spaced points of the tail's CDF with one random start per position), which keeps the
estimate unbiased and its variance below independent draws; the seed is stored, so files are reproducible.

All stored log-probs are float32; the candidate's are rounded to float32 the same way before comparing,
so a candidate identical to the reference scores KLD = 0 and Δp = 0 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from mv4deploy.validate.metrics import NEG_INF, PositionStats, check_targets


@dataclass(frozen=True)
class CompressedRef:
    """The reference at S positions. Head ids are in descending probability (ties to the lower id, so
    ``ids[:, 0]`` is exactly ``argmax``); ``tail_logmass`` is -inf when k covers the vocabulary, and then
    there are no samples (m = 0)."""

    ids: Tensor           # [S, k] int64
    logp: Tensor          # [S, k] float32
    tail_logmass: Tensor  # [S] float32
    target_logp: Tensor   # [S] float32: ln P(token that came next)
    sample_ids: Tensor    # [S, m] int64: tail tokens drawn ∝ P
    sample_logp: Tensor   # [S, m] float32: their ln P (not renormalized)

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, start: int, stop: int) -> "CompressedRef":
        return CompressedRef(*(getattr(self, f.name)[start:stop] for f in fields(self)))

    @staticmethod
    def concat(parts: list["CompressedRef"]) -> "CompressedRef":
        return CompressedRef(*(torch.cat([getattr(p, f.name).cpu() for p in parts]) for f in fields(CompressedRef)))


def compress(logp_base: Tensor, targets: Tensor, k: int, samples: int, generator: torch.Generator) -> CompressedRef:
    """Compress full log-probs ``[S, V]``: top ``min(k, V)`` tokens, tail mass, ``samples`` tail draws.
    ``generator`` (CPU) picks each position's random start; pass one generator through every chunk."""
    check_targets(targets, logp_base)
    if k < 1 or samples < 0:
        raise ValueError(f"need k >= 1 and samples >= 0, got k={k}, samples={samples}")
    k = min(k, logp_base.shape[-1])
    ordered, order = torch.sort(logp_base, dim=-1, descending=True, stable=True)
    rest, rest_ids = ordered[:, k:], order[:, k:]
    s = logp_base.shape[0]
    if rest.shape[-1]:
        tail = torch.logsumexp(rest, dim=-1)
    else:
        tail = torch.full((s,), NEG_INF, dtype=logp_base.dtype, device=logp_base.device)
    picks = _systematic(rest, tail, samples, generator) if rest.shape[-1] and samples else None
    index = targets.view(-1, 1).to(device=logp_base.device, dtype=torch.int64)
    empty = torch.zeros((s, 0), dtype=torch.int64)
    return CompressedRef(
        ids=order[:, :k].cpu(), logp=ordered[:, :k].float().cpu(), tail_logmass=tail.float().cpu(),
        target_logp=logp_base.gather(1, index).squeeze(1).float().cpu(),
        sample_ids=rest_ids.gather(1, picks).cpu() if picks is not None else empty,
        sample_logp=rest.gather(1, picks).float().cpu() if picks is not None else empty.float())


def _systematic(rest: Tensor, tail: Tensor, m: int, generator: torch.Generator) -> Tensor:
    """Column indices ``[S, m]`` into ``rest``: m evenly spaced points of each row's CDF, random start."""
    probs = torch.where(torch.isfinite(tail)[:, None], (rest - tail[:, None]).exp(),
                        torch.ones_like(rest))        # a tail of zero mass: any tokens (its weight is 0)
    cdf = torch.cumsum(probs / probs.sum(-1, keepdim=True), dim=-1)
    start = torch.rand(rest.shape[0], 1, generator=generator, dtype=torch.float64)
    points = ((torch.arange(m, dtype=torch.float64) + start) / m).to(device=rest.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf.contiguous(), points.contiguous()).clamp(max=rest.shape[-1] - 1)


def candidate_like(ref: CompressedRef, logp_q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The candidate at the reference's head ids ``[S, k]``, ln of its mass outside them ``[S]``, and at the
    sampled ids ``[S, m]``: float64 values rounded through float32 exactly as the reference's were."""
    ids = ref.ids.to(device=logp_q.device)
    outside = torch.ones_like(logp_q, dtype=torch.bool).scatter_(1, ids, False)
    tail = torch.logsumexp(logp_q.masked_fill(~outside, NEG_INF), dim=-1)
    sampled = logp_q.gather(1, ref.sample_ids.to(device=logp_q.device))
    return tuple(t.float().double() for t in (logp_q.gather(1, ids), tail, sampled))


def kl_divergence_compressed(ref: CompressedRef, logp_q: Tensor) -> Tensor:
    """KL(P_base || Q) per position, nats: exact head and tail-mass terms plus the sampled within-tail term."""
    if logp_q.shape[0] != ref.count:
        raise ValueError(f"candidate has {logp_q.shape[0]} positions, the reference {ref.count}")
    head_q, tail_q, sample_q = candidate_like(ref, logp_q)
    device = logp_q.device
    head_p = ref.logp.to(device=device, dtype=torch.float64)
    tail_p = ref.tail_logmass.to(device=device, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    head = torch.where(head_p > NEG_INF, head_p.exp() * (head_p - head_q), zero).sum(dim=-1)
    has_tail = tail_p > NEG_INF
    tail = torch.where(has_tail, tail_p.exp() * (tail_p - tail_q), zero)
    if ref.sample_ids.shape[1] == 0:
        return head + tail
    # ln r = ln ρ - ln π at each sampled tail token; (r - 1) - ln r computed as expm1 to keep small values exact
    log_r = (sample_q - tail_q[:, None]) - (ref.sample_logp.to(device=device, dtype=torch.float64) - tail_p[:, None])
    within = (torch.expm1(log_r) - log_r).mean(dim=-1)
    return head + tail + torch.where(has_tail, tail_p.exp() * within, zero)


def position_stats_compressed(ref: CompressedRef, logp_q: Tensor, targets: Tensor) -> PositionStats:
    """``metrics.position_stats`` against a compressed reference; nll, Δp and top-1 are exact."""
    check_targets(targets, logp_q)
    index = targets.view(-1, 1).to(device=logp_q.device, dtype=torch.int64)
    return PositionStats(
        kld=kl_divergence_compressed(ref, logp_q).cpu(),
        nll_base=-ref.target_logp.double(),
        nll_q=-logp_q.gather(1, index).squeeze(1).float().double().cpu(),
        same_top1=ref.ids[:, 0] == logp_q.argmax(dim=-1).cpu(),
    )
