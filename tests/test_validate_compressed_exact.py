"""The compressed reference against a numpy implementation of its definition (top-k head, tail log-mass,
systematic tail samples at (i + u) / m of the tail's CDF with u drawn from the caller's generator, the k3
estimator), to float64 precision; plus its argument checks and edge cases (zero-mass tail, a head entry
of probability 0, an almost certain reference). Found by mutation testing (docs/ci.md)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from mv4deploy.validate.compressed import compress, kl_divergence_compressed, position_stats_compressed
from mv4deploy.validate.metrics import log_probs


def _pair(seed: int, positions: int = 5, vocab: int = 12):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(positions, vocab, generator=g, dtype=torch.float64) * 2
    cand = base + 0.5 * torch.randn(positions, vocab, generator=g, dtype=torch.float64)
    return log_probs(base), log_probs(cand), torch.randint(0, vocab, (positions,), generator=g)


def _reference(lp: np.ndarray, lq: np.ndarray, k: int, m: int, seed: int):
    """numpy, row by row: (head ids, sample ids, KLD estimate) from the definition."""
    f32 = lambda a: np.float64(np.float32(a))                  # stored and compared as float32
    u = torch.rand(lp.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    heads, samples, klds = [], [], []
    for s in range(lp.shape[0]):
        order = sorted(range(lp.shape[1]), key=lambda v: (-lp[s, v], v))      # descending, ties to lower id
        head, rest = order[:k], order[k:]
        tail_p = scipy.special.logsumexp(lp[s, rest])
        cdf = np.cumsum(np.exp(lp[s, rest] - tail_p))
        cdf = cdf / cdf[-1]
        picks = [rest[min(int(np.searchsorted(cdf, (i + u[s, 0]) / m)), len(rest) - 1)] for i in range(m)]
        hp, hq = f32(lp[s, head]), f32(lq[s, head])
        tp, tq = f32(tail_p), f32(scipy.special.logsumexp(lq[s, rest]))
        log_r = (f32(lq[s, picks]) - tq) - (f32(lp[s, picks]) - tp)
        kld = np.sum(np.exp(hp) * (hp - hq)) + np.exp(tp) * (tp - tq) + np.exp(tp) * np.mean(np.expm1(log_r) - log_r)
        heads.append(head), samples.append(picks), klds.append(kld)
    return np.array(heads), np.array(samples), np.array(klds)


def test_compress_and_kld_match_the_numpy_definition():
    lp, lq, t = _pair(4)
    ref = compress(lp, t, k=4, samples=6, generator=torch.Generator().manual_seed(9))
    heads, picks, klds = _reference(lp.numpy(), lq.numpy(), k=4, m=6, seed=9)
    assert ref.ids.tolist() == heads.tolist()
    assert ref.sample_ids.tolist() == picks.tolist()
    assert ref.sample_ids.dtype == torch.int64 and ref.ids.dtype == torch.int64
    assert np.allclose(kl_divergence_compressed(ref, lq).numpy(), klds, rtol=1e-12, atol=0)


def test_float32_log_probs_compress_too():
    lp, lq, t = _pair(5)
    ref = compress(lp.float(), t, k=4, samples=6, generator=torch.Generator().manual_seed(9))
    _, picks, _ = _reference(lp.float().double().numpy(), lq.numpy(), k=4, m=6, seed=9)
    assert ref.sample_ids.tolist() == picks.tolist()


def test_samples_come_from_the_given_generator_only():
    lp, _, t = _pair(6)
    torch.manual_seed(1)
    a = compress(lp, t, k=3, samples=5, generator=torch.Generator().manual_seed(2)).sample_ids
    torch.manual_seed(12345)                           # the global generator must not matter
    b = compress(lp, t, k=3, samples=5, generator=torch.Generator().manual_seed(2)).sample_ids
    assert torch.equal(a, b)


def test_ties_keep_the_lower_id_first():
    lp = log_probs(torch.zeros(2, 4096, dtype=torch.float64))          # every token equally likely
    ref = compress(lp, torch.zeros(2, dtype=torch.int64), k=8, samples=0, generator=torch.Generator())
    assert ref.ids.tolist() == [list(range(8))] * 2


def test_argument_checks():
    lp, _, t = _pair(7)
    g = torch.Generator()
    one = compress(lp, t, k=1, samples=0, generator=g)                   # k = 1 is a valid head
    assert one.ids[:, 0].tolist() == lp.argmax(-1).tolist() and one.sample_ids.dtype == torch.int64
    with pytest.raises(ValueError, match=r"^need k >= 1 and samples >= 0, got k=5, samples=-1$"):
        compress(lp, t, k=5, samples=-1, generator=g)
    with pytest.raises(ValueError, match=r"^need k >= 1 and samples >= 0, got k=0, samples=3$"):
        compress(lp, t, k=0, samples=3, generator=g)
    ref = compress(lp, t, k=3, samples=2, generator=g)
    with pytest.raises(ValueError, match=r"^candidate has 4 positions, the reference 5$"):
        kl_divergence_compressed(ref, lp[:4])


def test_int32_targets():
    lp, lq, t = _pair(8)
    ref = compress(lp, t.to(torch.int32), k=3, samples=2, generator=torch.Generator())
    assert torch.equal(ref.target_logp.double(), lp.gather(1, t[:, None]).squeeze(1).float().double())
    ps = position_stats_compressed(ref, lq, t.to(torch.int32))
    assert torch.equal(ps.nll_q, -lq.gather(1, t[:, None]).squeeze(1).float().double())


def test_zero_mass_tail_is_sampled_evenly():
    # 4 head tokens carry all the mass, the 4 others have probability 0: the tail CDF is uniform,
    # and 4 systematic points (i + u) / 4 land one in each quarter: tokens 4, 5, 6, 7
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0] + [-float("inf")] * 4], dtype=torch.float64)
    ref = compress(log_probs(logits), torch.tensor([0]), k=4, samples=4, generator=torch.Generator().manual_seed(0))
    assert sorted(ref.sample_ids[0].tolist()) == [4, 5, 6, 7]
    assert ref.tail_logmass[0] == -float("inf")


def test_head_entry_of_zero_probability_contributes_nothing():
    lp = log_probs(torch.tensor([[2.0, 1.0, -float("inf")]], dtype=torch.float64))
    lq = log_probs(torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))
    ref = compress(lp, torch.tensor([0]), k=3, samples=0, generator=torch.Generator())
    p, q = lp.float().double()[0, :2], lq.float().double()[0, :2]
    expected = float((p.exp() * (p - q)).sum())                        # token 2: 0 * ln(0 / q) = 0
    assert float(kl_divergence_compressed(ref, lq)[0]) == pytest.approx(expected, rel=1e-12)


def test_almost_certain_reference_still_samples_its_tail():
    # the tail holds exp(-400) of the mass: sampling in exp(rest - tail) stays finite, exp(rest + tail) underflows
    logits = torch.cat([torch.tensor([[400.0]]), torch.zeros(1, 7)], dim=1).double()
    lp = log_probs(logits)
    ref = compress(lp, torch.tensor([0]), k=1, samples=7, generator=torch.Generator().manual_seed(0))
    assert sorted(ref.sample_ids[0].tolist()) == [1, 2, 3, 4, 5, 6, 7]     # a flat tail, 7 points: one each
