"""validate.stats and validate.metrics at their edges, against hand-worked values and numpy/scipy
(second implementations written differently): the count thresholds llama.cpp uses (uncertainty from 11
values, covariance from 10), percentiles at 0 and 1 next to an infinite KLD, the Wilson bound as the root
of its quadratic, the non-finite count, the uncertainties of the PPL difference, and float32 inputs that
must still be summarized in float64. Found by mutation testing (docs/ci.md, "Mutation testing")."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import scipy.special
import torch

from mv4deploy.validate.metrics import PositionStats, kl_divergence, log_probs, position_stats
from mv4deploy.validate.stats import (covariance_of_means, mean_and_uncertainty, percentile, summarize,
                                      wilson_interval)

Z95 = NormalDist().inv_cdf(0.95)   # one-sided 95 %: 1.6448536269514722


# ---------------------------------------------------------------- mean, covariance, percentile
def test_mean_and_uncertainty_thresholds_by_hand():
    assert mean_and_uncertainty(torch.tensor([3.0])) == (3.0, 0.0)          # one value: a mean, no error
    mean, unc = mean_and_uncertainty(torch.zeros(0))
    assert math.isnan(mean) and unc == 0.0
    # 0..10: 11 values (the first count llama.cpp gives an error for), mean 5,
    # E[(x - 5)^2] = (25+16+9+4+1+0+1+4+9+16+25) / 11 = 110 / 11 = 10, error sqrt(10 / (11 - 1)) = 1
    assert mean_and_uncertainty(torch.arange(11.0)) == (5.0, 1.0)
    assert mean_and_uncertainty(torch.arange(10.0)) == (4.5, 0.0)           # 10 values: too few


def test_covariance_thresholds_by_hand():
    a = torch.arange(10.0)                  # 10 values: the first count with a covariance
    # cov(a, 2a) = 2 * E[(a - 4.5)^2] = 2 * 8.25 = 16.5 (population), over n - 1 = 9: 1.8333...
    assert covariance_of_means(a, 2 * a) == pytest.approx(16.5 / 9, rel=1e-15)
    assert covariance_of_means(a[:9], 2 * a[:9]) == 0.0


def test_float32_inputs_are_summarized_in_float64():
    g = np.random.default_rng(3)
    a32 = (1000 + g.standard_normal(64)).astype(np.float32)   # a large mean: float32 arithmetic loses ~1e-5
    b32 = (a32 + 0.1 * g.standard_normal(64)).astype(np.float32)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    mean, unc = mean_and_uncertainty(torch.from_numpy(a32))
    assert mean == pytest.approx(a64.mean(), rel=1e-13)
    assert unc == pytest.approx(a64.std() / math.sqrt(63), rel=1e-10)
    expected_cov = np.cov(a64, b64, bias=True)[0, 1] / 63
    assert covariance_of_means(torch.from_numpy(a32), torch.from_numpy(b64)) == pytest.approx(expected_cov, rel=1e-10)
    assert covariance_of_means(torch.from_numpy(a64), torch.from_numpy(b32)) == pytest.approx(expected_cov, rel=1e-10)


def test_percentile_ends_next_to_an_infinite_kld():
    # fraction 0 and 1 must return the end values themselves: interpolating would compute 0 * inf = nan
    assert percentile(torch.tensor([1.0, math.inf], dtype=torch.float64), 0.0) == 1.0
    assert percentile(torch.tensor([0.0, math.inf], dtype=torch.float64), 1.0) == math.inf
    assert percentile(torch.tensor([0.0, math.inf], dtype=torch.float64), 1.5) == math.inf
    assert percentile(torch.tensor([2.5], dtype=torch.float64), 0.5) == 2.5        # one value: itself
    assert math.isnan(percentile(torch.zeros(0, dtype=torch.float64), 0.5))


# ---------------------------------------------------------------- Wilson
def _wilson_by_quadratic(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The Wilson bounds are the roots p of (p_hat - p)^2 = z^2 p (1 - p) / n, i.e.
    (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0."""
    p_hat, k = successes / trials, z * z / trials
    roots = np.sort(np.roots([1 + k, -(2 * p_hat + k), p_hat**2]).real)
    return float(roots[0]), float(roots[1])


@pytest.mark.parametrize("successes, trials", [(1, 1), (1, 10), (2, 2), (1, 2), (7, 9), (950, 1000)])
def test_wilson_matches_the_quadratic(successes, trials):
    low, high = wilson_interval(successes, trials, 0.95)
    ref_low, ref_high = _wilson_by_quadratic(successes, trials, Z95)
    assert low == pytest.approx(ref_low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(min(1.0, ref_high), rel=1e-9)


def test_wilson_exact_ends_and_errors():
    # all successes: lower bound n / (n + z^2); one trial: 1 / (1 + 2.7055434540954143) = 0.26987...
    assert wilson_interval(1, 1, 0.95) == (pytest.approx(1 / (1 + Z95**2), rel=1e-14), 1.0)
    # zero successes of 3: the formula leaves +2.8e-17 behind; the bound is 0 exactly
    assert wilson_interval(0, 3, 0.95)[0] == 0.0
    with pytest.raises(ValueError, match=r"^Wilson interval needs at least one trial, got 0$"):
        wilson_interval(0, 0, 0.95)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^confidence must be in \(0, 1\), got {bad}$"):
            wilson_interval(1, 2, bad)


# ---------------------------------------------------------------- summarize
def _stats(kld, nll_base, nll_q, same, dtype=torch.float64) -> PositionStats:
    return PositionStats(torch.tensor(kld, dtype=dtype), torch.tensor(nll_base, dtype=dtype),
                         torch.tensor(nll_q, dtype=dtype), torch.tensor(same, dtype=torch.bool))


def test_summarize_counts_each_kind_of_non_finite_position():
    inf = math.inf
    # position 0: KLD infinite; 1: candidate NLL infinite; 2: base NLL infinite; 3: all finite -> 3 non-finite
    out = summarize(_stats([inf, 0.1, 0.2, 0.3], [1.0, 1.0, inf, 1.0], [1.0, inf, 1.0, 1.0], [1, 1, 0, 1]))
    assert out["nonfinite_positions"] == 3 and out["tokens_scored"] == 4


def test_summarize_edge_counts():
    with pytest.raises(ValueError, match="^no scored positions to summarize$"):
        summarize(PositionStats.concat([]))
    one = summarize(_stats([0.5], [2.0], [2.0], [1]))       # one position: no errors, no division by n - 1 = 0
    assert one["same_top1_unc"] == 0.0 and one["tokens_scored"] == 1 and one["delta_p_rms"] == 0.0
    assert one["delta_p_rms_unc"] == 0.0                    # RMS 0: no error propagated through 1 / rms
    # two positions, one agreeing: rate 1/2, error sqrt(0.5 * 0.5 / (2 - 1)) = 0.5
    two = summarize(_stats([0.5, 0.5], [2.0, 2.0], [2.0, 2.0], [1, 0]))
    assert two["same_top1"] == 0.5 and two["same_top1_unc"] == 0.5


def test_correlation_is_none_when_either_side_is_constant():
    varying = [2.0 + 0.1 * i for i in range(12)]
    flat = [2.0] * 12
    kld, same = [0.0] * 12, [1] * 12
    assert summarize(_stats(kld, flat, varying, same))["ln_ppl_cor"] is None    # base constant
    assert summarize(_stats(kld, varying, flat, same))["ln_ppl_cor"] is None    # candidate constant


def test_perplexity_difference_and_its_error_against_numpy():
    g = np.random.default_rng(7)
    base = 2.0 + 0.3 * g.standard_normal(40)
    q = base + 0.02 + 0.05 * g.standard_normal(40)
    out = summarize(_stats([0.01] * 40, base.tolist(), q.tolist(), [1] * 40))
    n = 40
    ppl_q, ppl_b = math.exp(q.mean()), math.exp(base.mean())
    unc_q, unc_b = q.std() / math.sqrt(n - 1), base.std() / math.sqrt(n - 1)       # numpy std: ddof 0
    cov = np.cov(q, base, bias=True)[0, 1] / (n - 1)
    assert out["ppl_diff"] == pytest.approx(ppl_q - ppl_b, rel=1e-12)
    assert out["ppl_base_unc"] == pytest.approx(ppl_b * unc_b, rel=1e-12)
    # d(ppl_q - ppl_b) = ppl_q dq - ppl_b db: variance ppl_q^2 uq^2 + ppl_b^2 ub^2 - 2 ppl_q ppl_b cov
    diff_unc = math.sqrt(ppl_q**2 * unc_q**2 + ppl_b**2 * unc_b**2 - 2 * ppl_q * ppl_b * cov)
    assert diff_unc < 1                                      # well below the max(1.0, ...) a slip would give
    assert out["ppl_diff_unc"] == pytest.approx(diff_unc, rel=1e-9)
    assert out["ln_ppl_cor"] == pytest.approx(np.corrcoef(q, base)[0, 1], rel=1e-12)


def test_float32_position_stats_give_float64_percentiles_and_rms():
    g = np.random.default_rng(11)
    kld = g.exponential(1e-3, 50).astype(np.float32)
    nll_b = (1 + g.random(50)).astype(np.float32)
    nll_q = (nll_b + 0.01 * g.standard_normal(50)).astype(np.float32)
    out = summarize(_stats(kld.tolist(), nll_b.tolist(), nll_q.tolist(), [1] * 50, dtype=torch.float32))
    # numpy's "linear" percentile is llama.cpp's definition: position fraction * (n - 1)
    assert out["kld_p99"] == pytest.approx(np.percentile(kld.astype(np.float64), 99), rel=1e-13)
    assert out["kld_median"] == pytest.approx(np.percentile(kld.astype(np.float64), 50), rel=1e-13)
    dp = np.exp(-nll_q.astype(np.float32)).astype(np.float64) - np.exp(-nll_b.astype(np.float32)).astype(np.float64)
    assert out["delta_p_rms"] == pytest.approx(math.sqrt(np.mean(dp**2)), rel=1e-5)   # Δp itself is float32
    dp32 = (torch.exp(-torch.from_numpy(nll_q)) - torch.exp(-torch.from_numpy(nll_b))).double().numpy()
    assert out["delta_p_rms"] == pytest.approx(math.sqrt(np.mean(dp32**2)), rel=1e-13)


# ---------------------------------------------------------------- metrics
def test_concat_of_nothing_is_empty_and_typed():
    empty = PositionStats.concat([])
    for name in ("kld", "nll_base", "nll_q"):
        t = getattr(empty, name)
        assert t.shape == (0,) and t.dtype == torch.float64
    assert empty.same_top1.shape == (0,) and empty.same_top1.dtype == torch.bool
    assert empty.count == 0


def test_log_probs_are_float64_from_any_float_logits():
    logits = torch.tensor([[1.0, 2.0, 3.5], [0.0, -1.0, 4.0]], dtype=torch.float32)
    out = log_probs(logits)
    assert out.dtype == torch.float64
    x = logits.double().numpy()
    assert np.allclose(out.numpy(), x - scipy.special.logsumexp(x, axis=-1, keepdims=True), rtol=0, atol=1e-15)


def test_position_stats_accepts_int32_targets():
    lp = log_probs(torch.tensor([[1.0, 2.0, 0.5], [0.3, 0.1, 2.0]]))
    lq = log_probs(torch.tensor([[1.1, 1.9, 0.5], [2.5, 0.1, 2.0]]))
    ps = position_stats(lp, lq, torch.tensor([1, 2], dtype=torch.int32))
    assert torch.equal(ps.nll_base, -lp[[0, 1], [1, 2]])
    assert ps.same_top1.tolist() == [True, False]           # argmax 1 vs 1; 2 vs 0
    assert torch.allclose(ps.kld, kl_divergence(lp, lq))


def test_shape_errors_name_both_shapes():
    three_d = torch.zeros(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^log-probs must both be \[S, V\]; got \(2, 3, 4\) and \(2, 3, 4\)$"):
        kl_divergence(three_d, three_d)
    with pytest.raises(ValueError, match=r"^log-probs must both be \[S, V\]; got \(2, 3\) and \(2, 4\)$"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
    lp = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^targets must be \[S\] with S = 3; got \(3, 1\)$"):
        position_stats(lp, lp, torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^targets must be \[S\] with S = 3; got \(4,\)$"):
        position_stats(lp, lp, torch.zeros(4, dtype=torch.int64))
