"""Summary statistics of a validation run, as ``llama-perplexity --kl-divergence`` reports them.

The uncertainty of a mean is llama.cpp's: sqrt((E[x^2] - E[x]^2) / (n - 1)), the standard error of the
mean, reported as 0 for n <= 10 (too few values to say). Two means from the same positions (ln PPL(Q) and
ln PPL(base)) are correlated; their covariance (E[ab] - E[a]E[b]) / (n - 1) enters the uncertainty of
their difference, and the uncertainties of PPL, PPL ratio and RMS Δp are propagated to first order
(d exp(x) = exp(x) dx, d sqrt(x) = dx / (2 sqrt(x))). Percentiles interpolate linearly between sorted
values at fraction * (n - 1), as llama.cpp does (the median of an even count is the mean of the middle two).

Same-top-1 also gets a Wilson score interval: its one-sided bounds at ``confidence`` (z = Phi^-1(confidence)),
the bound a CI gate compares with (vLLM's accuracy gate does the same). Positions of one text are not
independent trials, so treat the interval as a guide to how many tokens a gate needs, not an exact
coverage guarantee.

Keys are snake_case and always present (None where a value is undefined, e.g. a correlation when
nothing varies). Δp values are fractions (0.01 = 1 percentage point); display code multiplies by 100.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from mv4deploy.validate.metrics import PositionStats
from mv4deploy.validate.table import DELTA_P_QUANTILES, KLD_QUANTILES

MIN_COUNT_FOR_UNCERTAINTY = 11   # llama.cpp: an uncertainty needs count > 10
MIN_COUNT_FOR_COVARIANCE = 10    # llama.cpp: a covariance needs count >= 10



def mean_and_uncertainty(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error (llama.cpp's ``mean_and_uncertainty``); error 0 when n <= 10."""
    x = values.to(torch.float64)
    n = x.numel()
    if n == 0:
        return math.nan, 0.0
    mean = float(x.mean())
    variance = float(((x - mean) ** 2).mean())   # = E[x^2] - E[x]^2, without the cancellation
    if n < MIN_COUNT_FOR_UNCERTAINTY or not variance > 0:
        return mean, 0.0
    return mean, math.sqrt(variance / (n - 1))


def covariance_of_means(a: Tensor, b: Tensor) -> float:
    """Covariance of mean(a) and mean(b) over the same positions; 0 when n < 10."""
    x, y = a.to(torch.float64), b.to(torch.float64)
    n = x.numel()
    if n < MIN_COUNT_FOR_COVARIANCE:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean()) / (n - 1)


def percentile(sorted_values: Tensor, fraction: float) -> float:
    """Linear interpolation between sorted values at ``fraction * (n - 1)``."""
    n = sorted_values.numel()
    if n == 0:
        return math.nan
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    position = fraction * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    weight = position - low
    return float((1 - weight) * sorted_values[low] + weight * sorted_values[high])


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper), each at ``confidence``, clamped to [0, 1]."""
    if trials < 1:
        raise ValueError(f"Wilson interval needs at least one trial, got {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(confidence)
    p = successes / trials
    shrink = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # exact ends: all failures -> lower bound 0, all successes -> upper bound 1 (no rounding residue)
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return low, high


def summarize(ps: PositionStats, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Every statistic of a run, keyed in snake_case, in display order."""
    if ps.count == 0:
        raise ValueError("no scored positions to summarize")
    finite = torch.isfinite(ps.kld) & torch.isfinite(ps.nll_q) & torch.isfinite(ps.nll_base)
    out: dict[str, float | int | None] = {"tokens_scored": ps.count,
                                          "nonfinite_positions": int((~finite).sum())}
    out.update(_perplexity(ps.nll_q, ps.nll_base))
    out.update(_distribution("kld", ps.kld, KLD_QUANTILES))
    out.update(_distribution("delta_p", ps.delta_p, DELTA_P_QUANTILES))
    out.update(_rms("delta_p_rms", ps.delta_p))
    out.update(_same_top1(int(ps.same_top1.sum()), ps.count, confidence))
    return out


def _perplexity(nll_q: Tensor, nll_base: Tensor) -> dict[str, float | None]:
    log_q, unc_q = mean_and_uncertainty(nll_q)
    log_base, unc_base = mean_and_uncertainty(nll_base)
    cov = covariance_of_means(nll_q, nll_base)
    ppl_q, ppl_base = math.exp(log_q), math.exp(log_base)
    ppl_q_unc, ppl_base_unc = ppl_q * unc_q, ppl_base * unc_base
    ln_ratio = log_q - log_base
    ln_ratio_unc = math.sqrt(max(0.0, unc_q ** 2 + unc_base ** 2 - 2 * cov))
    ratio = math.exp(ln_ratio)
    return {
        "ppl_q": ppl_q, "ppl_q_unc": ppl_q_unc,
        "ppl_base": ppl_base, "ppl_base_unc": ppl_base_unc,
        "ln_ppl_cor": cov / (unc_q * unc_base) if unc_q > 0 and unc_base > 0 else None,
        "ln_ppl_ratio": ln_ratio, "ln_ppl_ratio_unc": ln_ratio_unc,
        "ppl_ratio": ratio, "ppl_ratio_unc": ratio * ln_ratio_unc,
        "ppl_diff": ppl_q - ppl_base,
        "ppl_diff_unc": math.sqrt(max(0.0, ppl_q_unc ** 2 + ppl_base_unc ** 2 - 2 * ppl_q * ppl_base * cov)),
    }


def _distribution(prefix: str, values: Tensor, quantiles) -> dict[str, float]:
    mean, unc = mean_and_uncertainty(values)
    ordered = torch.sort(values.to(torch.float64)).values
    out = {f"{prefix}_mean": mean, f"{prefix}_mean_unc": unc}
    out.update({f"{prefix}_{name}": percentile(ordered, fraction) for name, fraction in quantiles})
    return out


def _rms(key: str, values: Tensor) -> dict[str, float]:
    mean_square, mean_square_unc = mean_and_uncertainty(values.to(torch.float64) ** 2)
    rms = math.sqrt(mean_square)
    return {key: rms, f"{key}_unc": 0.5 / rms * mean_square_unc if rms > 0 else 0.0}


def _same_top1(same: int, n: int, confidence: float) -> dict[str, float]:
    rate = same / n
    low, high = wilson_interval(same, n, confidence)
    return {"same_top1": rate, "same_top1_unc": math.sqrt(rate * (1 - rate) / (n - 1)) if n > 1 else 0.0,
            "same_top1_wilson_low": low, "same_top1_wilson_high": high, "wilson_confidence": confidence}


PERPLEXITY_KEYS = ("ppl_q", "ppl_q_unc", "ppl_base", "ppl_base_unc", "ln_ppl_cor", "ln_ppl_ratio",
                   "ln_ppl_ratio_unc", "ppl_ratio", "ppl_ratio_unc", "ppl_diff", "ppl_diff_unc")
SAME_TOP1_KEYS = ("same_top1", "same_top1_unc", "same_top1_wilson_low", "same_top1_wilson_high",
                  "wilson_confidence")


def summary_keys() -> frozenset[str]:
    """Every key ``summarize`` returns (what a gate may name); a test holds it against ``summarize``."""
    distributions = [f"{prefix}_{name}" for prefix, quantiles in (("kld", KLD_QUANTILES),
                                                                  ("delta_p", DELTA_P_QUANTILES))
                     for name in ("mean", "mean_unc", *(q for q, _ in quantiles))]
    return frozenset(("tokens_scored", "nonfinite_positions", *PERPLEXITY_KEYS, *distributions,
                      "delta_p_rms", "delta_p_rms_unc", *SAME_TOP1_KEYS))
