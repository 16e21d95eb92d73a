"""Validation statistics against independent computations: torch's kl_div, scipy, numpy and a
two-position example worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mv4deploy.validate.metrics import PositionStats, kl_divergence, log_probs, position_stats
from mv4deploy.validate.stats import (covariance_of_means, mean_and_uncertainty, percentile, summarize,
                                      wilson_interval)


def _random_logp(seed: int, positions: int = 64, vocab: int = 50, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(positions, vocab, generator=g, dtype=torch.float64) * scale
    noisy = base + 0.3 * torch.randn(positions, vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(0, vocab, (positions,), generator=g)
    return log_probs(base), log_probs(noisy), targets


def test_kld_matches_torch_kl_div_and_scipy_entropy():
    lp, lq, _ = _random_logp(0)
    ours = kl_divergence(lp, lq)
    # F.kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q)
    theirs = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    scipy_kld = scipy.stats.entropy(lp.exp().numpy(), lq.exp().numpy(), axis=1)   # natural log
    np.testing.assert_allclose(ours.numpy(), scipy_kld, rtol=1e-10)
    assert (ours > 0).all()


def test_kld_of_identical_distributions_is_exactly_zero_and_top1_is_one():
    lp, _, targets = _random_logp(1)
    ps = position_stats(lp, lp.clone(), targets)
    assert torch.equal(ps.kld, torch.zeros_like(ps.kld))
    summary = summarize(ps)
    assert summary["kld_mean"] == 0 and summary["kld_max"] == 0
    assert summary["same_top1"] == 1.0 and summary["delta_p_rms"] == 0.0
    assert summary["ppl_ratio"] == 1.0 and summary["ppl_diff"] == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 40), scale=st.floats(0.1, 20.0))
def test_kld_is_non_negative_for_any_pair_of_distributions(seed, vocab, scale):
    g = torch.Generator().manual_seed(seed)
    lp = log_probs(torch.randn(8, vocab, generator=g, dtype=torch.float64) * scale)
    lq = log_probs(torch.randn(8, vocab, generator=g, dtype=torch.float64) * scale)
    assert (kl_divergence(lp, lq) >= -1e-12).all()


def test_kld_handles_zero_probabilities():
    lp = torch.log(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    lq = torch.log(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    assert kl_divergence(lp, lq).item() == pytest.approx(math.log(2))          # 1 * ln(1 / 0.5)
    assert kl_divergence(lq, lp).item() == math.inf                             # Q covers what P cannot


def test_hand_computed_two_token_example():
    # Position 0: P = (0.6, 0.4), Q = (0.3, 0.7), next token 1.
    #   KL = 0.6 ln(0.6/0.3) + 0.4 ln(0.4/0.7) = 0.415888308 - 0.223846315 = 0.192041993
    # Position 1: P = (0.9, 0.1), Q = (0.8, 0.2), next token 0.
    #   KL = 0.9 ln(0.9/0.8) + 0.1 ln(0.1/0.2) = 0.106004732 - 0.069314718 = 0.036690014
    p = torch.tensor([[0.6, 0.4], [0.9, 0.1]], dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7], [0.8, 0.2]], dtype=torch.float64)
    ps = position_stats(p.log(), q.log(), torch.tensor([1, 0]))
    torch.testing.assert_close(ps.kld, torch.tensor([0.192041993, 0.036690014], dtype=torch.float64),
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(ps.delta_p, torch.tensor([0.7 - 0.4, 0.8 - 0.9], dtype=torch.float64))
    assert ps.same_top1.tolist() == [False, True]   # argmax 0 vs 1; 0 vs 0
    s = summarize(ps)
    assert s["kld_mean"] == pytest.approx(0.114366004, abs=1e-9)
    assert s["kld_max"] == pytest.approx(0.192041993, abs=1e-9)
    assert s["kld_median"] == pytest.approx(0.114366004, abs=1e-9)   # mean of the middle two
    # PPL(Q) = exp(-(ln 0.7 + ln 0.8)/2) = 1/sqrt(0.56); PPL(base) = 1/sqrt(0.4 * 0.9) = 1/0.6
    assert s["ppl_q"] == pytest.approx(1.336306210, abs=1e-9)
    assert s["ppl_base"] == pytest.approx(1.666666667, abs=1e-9)
    assert s["ppl_ratio"] == pytest.approx(0.801783726, abs=1e-9)   # sqrt(0.36 / 0.56)
    assert s["ppl_diff"] == pytest.approx(1.336306210 - 1.666666667, abs=1e-9)
    assert s["delta_p_rms"] == pytest.approx(0.223606798, abs=1e-9)   # sqrt((0.3^2 + 0.1^2) / 2)
    assert s["delta_p_mean"] == pytest.approx(0.1)
    assert s["same_top1"] == 0.5 and s["tokens_scored"] == 2
    assert s["kld_mean_unc"] == 0.0   # llama.cpp gives no uncertainty for n <= 10


def test_uncertainties_match_scipy_standard_errors():
    lp, lq, targets = _random_logp(2, positions=500)
    ps = position_stats(lp, lq, targets)
    s = summarize(ps)
    kld = ps.kld.numpy()
    assert s["kld_mean_unc"] == pytest.approx(scipy.stats.sem(kld), rel=1e-9)
    nll_q, nll_b = ps.nll_q.numpy(), ps.nll_base.numpy()
    # sqrt(u_q^2 + u_b^2 - 2 cov) is the standard error of the mean of the per-position difference
    assert s["ln_ppl_ratio_unc"] == pytest.approx(scipy.stats.sem(nll_q - nll_b), rel=1e-9)
    assert s["ln_ppl_cor"] == pytest.approx(np.corrcoef(nll_q, nll_b)[0, 1], rel=1e-9)
    assert s["ppl_q_unc"] == pytest.approx(math.exp(nll_q.mean()) * scipy.stats.sem(nll_q), rel=1e-9)
    ppl_q, ppl_b = math.exp(nll_q.mean()), math.exp(nll_b.mean())
    assert s["ppl_base_unc"] == pytest.approx(ppl_b * scipy.stats.sem(nll_b), rel=1e-9)
    assert s["ppl_diff"] == pytest.approx(ppl_q - ppl_b, rel=1e-12)
    # delta method on PPL(Q) - PPL(base) = exp(mean nll_q) - exp(mean nll_b), with numpy's covariance of the
    # two per-position series divided by n as the covariance of their means
    cov_of_means = np.cov(nll_q, nll_b)[0, 1] / len(nll_q)
    variance = (ppl_q * scipy.stats.sem(nll_q)) ** 2 + (ppl_b * scipy.stats.sem(nll_b)) ** 2 \
        - 2 * ppl_q * ppl_b * cov_of_means
    assert s["ppl_diff_unc"] == pytest.approx(math.sqrt(variance), rel=1e-9)
    dp = ps.delta_p.numpy()
    assert s["delta_p_rms"] == pytest.approx(math.sqrt((dp ** 2).mean()), rel=1e-12)
    assert s["delta_p_rms_unc"] == pytest.approx(scipy.stats.sem(dp ** 2) / (2 * math.sqrt((dp ** 2).mean())),
                                                 rel=1e-9)
    top = ps.same_top1.numpy().mean()
    assert s["same_top1_unc"] == pytest.approx(math.sqrt(top * (1 - top) / (len(dp) - 1)), rel=1e-12)


def test_mean_covariance_and_percentiles_against_numpy():
    g = np.random.default_rng(3)
    a, b = g.normal(size=257), g.normal(size=257)
    mean, unc = mean_and_uncertainty(torch.from_numpy(a))
    assert mean == pytest.approx(a.mean()) and unc == pytest.approx(scipy.stats.sem(a), rel=1e-12)
    assert covariance_of_means(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        np.cov(a, b)[0, 1] / len(a), rel=1e-12)
    ordered = torch.sort(torch.from_numpy(a)).values
    for q in (0.0, 0.001, 0.01, 0.1, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0):
        assert percentile(ordered, q) == pytest.approx(np.percentile(a, 100 * q), rel=1e-12, abs=1e-15)
    assert mean_and_uncertainty(torch.ones(5))[1] == 0.0


@pytest.mark.parametrize("successes,trials", [(0, 10), (7, 10), (10, 10), (950, 1000), (254, 254)])
def test_wilson_bounds_match_scipy(successes, trials):
    low, high = wilson_interval(successes, trials, confidence=0.95)
    # one-sided bounds at 95 % are the ends of the two-sided 90 % interval
    ci = scipy.stats.binomtest(successes, trials).proportion_ci(confidence_level=0.90, method="wilson")
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
    assert 0.0 <= low <= successes / trials <= high <= 1.0


def test_concat_keeps_positions_in_order():
    lp, lq, targets = _random_logp(6, positions=10)
    whole = position_stats(lp, lq, targets)
    parts = PositionStats.concat([position_stats(lp[:4], lq[:4], targets[:4]),
                                  position_stats(lp[4:], lq[4:], targets[4:])])
    assert torch.equal(whole.kld, parts.kld) and torch.equal(whole.same_top1, parts.same_top1)


def test_summary_keys_are_stable():
    lp, lq, targets = _random_logp(7, positions=40)
    s = summarize(position_stats(lp, lq, targets))
    for key in ("kld_mean", "kld_p99", "kld_max", "same_top1", "same_top1_wilson_low", "ppl_ratio",
                "delta_p_rms", "tokens_scored", "kld_p99_9", "kld_p0_1", "kld_min", "delta_p_p75",
                "ln_ppl_cor", "ppl_diff_unc"):
        assert key in s
    assert s["kld_min"] <= s["kld_p1"] <= s["kld_median"] <= s["kld_p99"] <= s["kld_max"]


def test_summary_keys_name_exactly_what_summarize_returns():
    from mv4deploy.validate.stats import summary_keys
    lp, lq, targets = _random_logp(3, positions=12)
    assert set(summarize(position_stats(lp, lq, targets))) == summary_keys()
