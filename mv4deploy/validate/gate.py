"""Accuracy gates: per-metric limits in YAML, checked against a validation summary.

A gate file is a flat mapping. ``confidence`` (default 0.95) is the one-sided confidence of the Wilson
lower bound; every other key is a limit named ``<statistic>_max`` or ``<statistic>_min`` for any key of
the summary (``kld_mean_max``, ``kld_p99_max``, ``ppl_ratio_max``, ``delta_p_rms_max``, ...), plus
``top1_min``, which is compared with the Wilson lower bound of the same-top-1 rate: the gate passes only
if we are ``confidence`` sure the rate is at least ``top1_min`` given how many tokens were scored (the
opt-in CI gate of vLLM's lm-eval baselines)::

    confidence: 0.95
    kld_mean_max: 0.01
    kld_p99_max: 0.1
    top1_min: 0.90            # Wilson lower bound of same_top1 at 95 %
    ppl_ratio_max: 1.02

A limit passes when the value is finite and on the right side (inclusive). A NaN or infinite statistic
fails every limit on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core.schema import Section, finite, load_yaml

DEFAULT_CONFIDENCE = 0.95
ALIASES = {"top1_min": "same_top1_wilson_low"}   # limit key -> the statistic it bounds
SUFFIXES = {"_max": "max", "_min": "min"}
# Statistics that are >= 0 by construction (KL divergence, perplexities, RMS, counts, uncertainties): a
# negative limit on one is a typo, not a gate. (Δp percentiles and ln ratios can be negative.)
NON_NEGATIVE = ("kld", "ppl_q", "ppl_base", "ppl_ratio", "delta_p_rms", "tokens_scored", "nonfinite_positions",
                "same_top1")


@dataclass(frozen=True)
class Limit:
    key: str        # as written in the gate file
    metric: str     # the summary key it bounds
    bound: str      # "max" | "min"
    value: float


@dataclass(frozen=True)
class Gate:
    source: str
    confidence: float
    limits: tuple[Limit, ...]


@dataclass(frozen=True)
class Check:
    limit: Limit
    measured: float | None
    passed: bool

    def describe(self) -> str:
        shown = "n/a" if self.measured is None else f"{self.measured:.6g}"
        ops = {("max", True): "<=", ("min", True): ">=", ("max", False): ">", ("min", False): "<"}
        op = ops[(self.limit.bound, self.passed)]
        return f"{self.limit.metric} {shown} {op} {self.limit.key} {self.limit.value:g}"


@dataclass(frozen=True)
class GateResult:
    source: str
    confidence: float
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_json(self) -> dict:
        return {"source": self.source, "passed": self.passed, "confidence": self.confidence,
                "checks": [{"limit": c.limit.key, "metric": c.limit.metric, "bound": c.limit.bound,
                            "value": c.limit.value, "measured": c.measured, "passed": c.passed}
                           for c in self.checks],
                "failed": [c.limit.metric for c in self.failures]}


def load_gate(path: Path, known_metrics: frozenset[str]) -> Gate:
    """Parse a gate YAML; ``known_metrics`` are the summary keys a limit may name."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, None, raw, "a gate is a mapping of limits, e.g. 'kld_mean_max: 0.01'")
    return make_gate(raw, path, known_metrics)


def make_gate(raw: dict, source: str | Path, known_metrics: frozenset[str]) -> Gate:
    """A gate from a mapping of limits (and an optional ``confidence``), read by the gate file's rules:
    an export target's tolerance is one too, so ``top1_min`` means the same in both."""
    path = Path(source)
    top = Section(raw, str(path))
    confidence = top.get("confidence", finite, required=False, default=DEFAULT_CONFIDENCE)
    if not 0 < confidence < 1:
        raise InputError(path, "confidence", confidence, "must be in (0, 1), e.g. 0.95")
    limits = tuple(_limit(top, key, known_metrics) for key in top.unread())
    if not limits:
        raise InputError(path, None, None, "no limits: add e.g. 'kld_mean_max: 0.01'")
    return Gate(str(source), confidence, limits)


def check_gate(gate: Gate, summary: dict) -> GateResult:
    checks = []
    for limit in gate.limits:
        measured = summary.get(limit.metric)
        ok = measured is not None and math.isfinite(measured) and (
            measured <= limit.value if limit.bound == "max" else measured >= limit.value)
        checks.append(Check(limit, measured, ok))
    return GateResult(gate.source, gate.confidence, tuple(checks))


COMMON_LIMITS = "kld_mean_max, kld_p99_max, top1_min, ppl_ratio_max"


def _limit(top: Section, key: object, known: frozenset[str]) -> Limit:
    parsed = _parse_key(str(key))
    if parsed is None or parsed[0] not in known:
        raise InputError(top.source, str(key), top.data[key], f"unknown limit; use {COMMON_LIMITS}, or "
                                                              "<statistic>_max / <statistic>_min for any statistic "
                                                              "of the --json output")
    metric, bound = parsed
    number = top.get(key, finite)
    if metric.startswith("same_top1") and not 0 <= number <= 1:
        raise InputError(top.source, str(key), top.data[key], "a top-1 rate is a fraction in [0, 1]")
    if number < 0 and metric.startswith(NON_NEGATIVE):
        raise InputError(top.source, str(key), top.data[key], f"{metric} is never negative: a limit below 0 "
                                                              "can never pass (or always does)")
    return Limit(str(key), metric, bound, number)


def _parse_key(key: str) -> tuple[str, str] | None:
    if key in ALIASES:
        return ALIASES[key], SUFFIXES[key[-4:]]
    for suffix, bound in SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], bound
    return None
