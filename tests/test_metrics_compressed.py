"""The compressed reference of golden files: exact where it claims to be, a lower bound without samples,
and an unbiased tail estimate with them."""

from __future__ import annotations

import pytest
import torch

from mv4deploy.validate.compressed import (CompressedRef, compress, kl_divergence_compressed,
                                           position_stats_compressed)
from mv4deploy.validate.metrics import kl_divergence, log_probs, position_stats


def _pair(seed: int, positions: int = 64, vocab: int = 200, scale: float = 2.0, noise: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(positions, vocab, generator=g, dtype=torch.float64) * scale
    cand = base + noise * torch.randn(positions, vocab, generator=g, dtype=torch.float64)
    return log_probs(base), log_probs(cand), torch.randint(0, vocab, (positions,), generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_head_covering_the_vocabulary_is_the_full_kld():
    lp, lq, t = _pair(0, vocab=30)
    ref = compress(lp, t, k=30, samples=16, generator=_gen())
    assert torch.isinf(ref.tail_logmass).all() and ref.sample_ids.shape == (64, 0)
    full, golden = position_stats(lp, lq, t), position_stats_compressed(ref, lq, t)
    torch.testing.assert_close(golden.kld, full.kld, rtol=1e-5, atol=1e-7)   # float32 log-probs
    assert torch.equal(golden.same_top1, full.same_top1)
    torch.testing.assert_close(golden.nll_base, full.nll_base, rtol=1e-6, atol=1e-7)


def test_without_samples_the_tail_bucket_is_a_lower_bound():
    lp, lq, t = _pair(1)
    full = kl_divergence(lp, lq)
    bound = kl_divergence_compressed(compress(lp, t, k=16, samples=0, generator=_gen()), lq)
    assert (bound <= full + 1e-6).all() and bound.mean() < 0.9 * full.mean()   # a flat tail: much is missed


def test_tail_samples_recover_the_missing_divergence():
    lp, lq, t = _pair(2, positions=400)
    full = kl_divergence(lp, lq).mean().item()
    bound = kl_divergence_compressed(compress(lp, t, k=16, samples=0, generator=_gen()), lq).mean().item()
    estimates = [kl_divergence_compressed(compress(lp, t, k=16, samples=32, generator=_gen(s)), lq).mean().item()
                 for s in range(8)]
    assert bound < 0.8 * full
    assert all(e == pytest.approx(full, rel=0.05) for e in estimates)
    # unbiased: the average over seeds is closer still
    assert sum(estimates) / len(estimates) == pytest.approx(full, rel=0.015)


def test_identical_candidate_scores_exactly_zero_with_samples():
    lp, _, t = _pair(3)
    ref = compress(lp, t, k=8, samples=16, generator=_gen())
    same = position_stats_compressed(ref, lp.clone(), t)
    assert torch.equal(same.kld, torch.zeros_like(same.kld))
    assert torch.equal(same.delta_p, torch.zeros_like(same.delta_p)) and bool(same.same_top1.all())


def test_samples_come_from_the_tail_in_proportion_to_probability():
    # one position, vocab 6: head = the top 2; tail probabilities 0.5, 0.3, 0.15, 0.05 of its mass
    tail = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64) * 0.2
    probs = torch.cat([torch.tensor([0.5, 0.3], dtype=torch.float64), tail]).view(1, -1)
    ref = compress(probs.log(), torch.tensor([0]), k=2, samples=20, generator=_gen())
    counts = torch.bincount(ref.sample_ids[0], minlength=6).tolist()
    assert counts == [0, 0, 10, 6, 3, 1]   # systematic sampling: 20 x (0.5, 0.3, 0.15, 0.05)
    torch.testing.assert_close(ref.sample_logp[0].double(), probs.log()[0, ref.sample_ids[0]], rtol=1e-6, atol=0)
    assert ref.tail_logmass.item() == pytest.approx(torch.log(torch.tensor(0.2)).item(), rel=1e-6)


def test_first_head_id_is_argmax_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    ref = compress(log_probs(logits), torch.tensor([0, 1]), k=2, samples=2, generator=_gen())
    assert ref.ids[:, 0].tolist() == log_probs(logits).argmax(-1).tolist() == [1, 0]


def test_rows_and_concat_round_trip():
    lp, _, t = _pair(4, positions=10)
    ref = compress(lp, t, k=4, samples=3, generator=_gen())
    again = CompressedRef.concat([ref.rows(0, 4), ref.rows(4, 10)])
    assert all(torch.equal(getattr(ref, f), getattr(again, f)) for f in ("ids", "logp", "sample_ids", "sample_logp"))
