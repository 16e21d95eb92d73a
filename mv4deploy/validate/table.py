"""How the statistics are labelled and printed, shared by the terminal table and the Markdown report.

Pure Python (no torch): ``cli/tables.py`` imports it, and the planner's commands must never import torch.
Labels are llama.cpp's, so numbers can be compared line by line with ``llama-perplexity --kl-divergence``.
"""

from __future__ import annotations

from dataclasses import dataclass

# (key suffix, fraction): the percentiles llama.cpp prints, largest first.
KLD_QUANTILES = (("max", 1.0), ("p99_9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90),
                 ("median", 0.5), ("p10", 0.10), ("p5", 0.05), ("p1", 0.01), ("p0_1", 0.001), ("min", 0.0))
DELTA_P_QUANTILES = (("max", 1.0), ("p99_9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90),
                     ("p75", 0.75), ("median", 0.5), ("p25", 0.25), ("p10", 0.10), ("p5", 0.05), ("p1", 0.01),
                     ("p0_1", 0.001), ("min", 0.0))


@dataclass(frozen=True)
class StatRow:
    """One printed line: the label llama.cpp uses, the value's key, its ± key, and whether it is a percent."""

    label: str
    key: str
    unc_key: str | None = None
    percent: bool = False


def _quantile_rows(prefix: str, label: str, quantiles, percent: bool) -> list[StatRow]:
    names = {"max": "Maximum", "median": "Median", "min": "Minimum"}
    return [StatRow(f"{names.get(n) or f'{100 * f:.1f}%'} {label}", f"{prefix}_{n}", percent=percent)
            for n, f in quantiles]


STAT_SECTIONS: tuple[tuple[str, tuple[StatRow, ...]], ...] = (
    ("Perplexity", (
        StatRow("Mean PPL(Q)", "ppl_q", "ppl_q_unc"),
        StatRow("Mean PPL(base)", "ppl_base", "ppl_base_unc"),
        StatRow("Cor(ln(PPL(Q)), ln(PPL(base)))", "ln_ppl_cor", percent=True),
        StatRow("Mean ln(PPL(Q)/PPL(base))", "ln_ppl_ratio", "ln_ppl_ratio_unc"),
        StatRow("Mean PPL(Q)/PPL(base)", "ppl_ratio", "ppl_ratio_unc"),
        StatRow("Mean PPL(Q)-PPL(base)", "ppl_diff", "ppl_diff_unc"),
    )),
    ("KL divergence", (StatRow("Mean KLD", "kld_mean", "kld_mean_unc"),
                       *_quantile_rows("kld", "KLD", KLD_QUANTILES, percent=False))),
    ("Token probability", (
        StatRow("Mean Δp", "delta_p_mean", "delta_p_mean_unc", percent=True),
        *_quantile_rows("delta_p", "Δp", DELTA_P_QUANTILES, percent=True),
        StatRow("RMS Δp", "delta_p_rms", "delta_p_rms_unc", percent=True),
        StatRow("Same top p", "same_top1", "same_top1_unc", percent=True),
        StatRow("Same top p, Wilson lower bound", "same_top1_wilson_low", percent=True),
        StatRow("Same top p, Wilson upper bound", "same_top1_wilson_high", percent=True),
    )),
)


def format_row(row: StatRow, summary: dict) -> str:
    """``12.345678 ± 0.000123`` (or ``98.765 ± 0.123 %``); ``n/a`` for an undefined value."""
    value = summary.get(row.key)
    if value is None:
        return "n/a"
    scale, digits, unit = (100.0, 3, " %") if row.percent else (1.0, 6, "")
    text = f"{scale * value:.{digits}f}"
    if row.unc_key is not None:
        text += f" ± {scale * summary[row.unc_key]:.{digits}f}"
    return text + unit
