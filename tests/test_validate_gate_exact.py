"""validate.gate at its edges: limits read exactly as written, the confidence's open interval, the ranges
a top-1 rate and a non-negative statistic allow (and the statistics that may be negative), inclusive
bounds on both sides, infinities failing either way, each failure described, and every refusal's
reason. Found by mutation testing (docs/ci.md, "Mutation testing")."""

from __future__ import annotations

import math

import pytest

from mv4deploy.core.errors import InputError
from mv4deploy.validate.gate import Check, Gate, Limit, check_gate, load_gate, make_gate
from mv4deploy.validate.stats import summary_keys

KEYS = summary_keys()


def test_limits_are_read_as_written(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("kld_mean_max: 0.01\ntop1_min: 0.9\ndelta_p_p1_min: -0.5\n")
    assert load_gate(path, KEYS) == Gate(str(path), 0.95, (
        Limit("kld_mean_max", "kld_mean", "max", 0.01), Limit("top1_min", "same_top1_wilson_low", "min", 0.9),
        Limit("delta_p_p1_min", "delta_p_p1", "min", -0.5)))


@pytest.mark.parametrize("raw", [
    {"delta_p_p1_min": -0.5}, {"ln_ppl_ratio_min": -0.1},           # these statistics may be negative
    {"kld_mean_max": 0}, {"top1_min": 0}, {"top1_min": 1}, {"same_top1_max": 1.0},   # the ends of the ranges
    {"confidence": 0.5, "kld_mean_max": 0.1},
])
def test_limits_at_the_edges_are_accepted(raw):
    gate = make_gate(raw, "g.yaml", KEYS)
    assert gate.limits[-1].value == list(raw.values())[-1]
    assert gate.confidence == raw.get("confidence", 0.95)


@pytest.mark.parametrize("raw, field, reason", [
    ({"confidence": 0, "kld_mean_max": 0.1}, "confidence", "must be in (0, 1), e.g. 0.95"),
    ({"confidence": 1, "kld_mean_max": 0.1}, "confidence", "must be in (0, 1), e.g. 0.95"),
    ({"confidence": 0.9}, None, "no limits: add e.g. 'kld_mean_max: 0.01'"),
    ({"top1_min": -0.01}, "top1_min", "a top-1 rate is a fraction in [0, 1]"),
    ({"top1_min": 1.01}, "top1_min", "a top-1 rate is a fraction in [0, 1]"),
    ({"same_top1_min": 1.5}, "same_top1_min", "a top-1 rate is a fraction in [0, 1]"),
    ({"kld_mean_max": -0.1}, "kld_mean_max",
     "kld_mean is never negative: a limit below 0 can never pass (or always does)"),
    ({"ppl_ratio_min": -1}, "ppl_ratio_min",
     "ppl_ratio is never negative: a limit below 0 can never pass (or always does)"),
    ({"kld_avg_max": 0.1}, "kld_avg_max",
     "unknown limit; use kld_mean_max, kld_p99_max, top1_min, ppl_ratio_max, or <statistic>_max / <statistic>_min "
     "for any statistic of the --json output"),
])
def test_refusals_name_the_field_and_say_why(raw, field, reason):
    with pytest.raises(InputError) as err:
        make_gate(raw, "g.yaml", KEYS)
    assert (err.value.source, err.value.field, err.value.reason) == ("g.yaml", field, reason)
    assert err.value.value == (raw.get(field) if field else None)              # the value as written


@pytest.mark.parametrize("text, value", [("{}\n", {}), ("", None), ("- kld_mean_max: 0.1\n", [{"kld_mean_max": 0.1}])])
def test_a_gate_file_that_is_not_a_mapping_of_limits(tmp_path, text, value):
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_gate(path, KEYS)
    assert err.value.source == str(path) and err.value.field is None and err.value.value == value
    assert err.value.reason == "a gate is a mapping of limits, e.g. 'kld_mean_max: 0.01'"


def test_bounds_are_inclusive_and_infinities_fail_either_way():
    gate = make_gate({"kld_mean_max": 0.01, "top1_min": 0.9}, "g", KEYS)
    assert check_gate(gate, {"kld_mean": 0.01, "same_top1_wilson_low": 0.9}).passed
    below = check_gate(gate, {"kld_mean": 0.0100001, "same_top1_wilson_low": 0.8999999})
    assert [c.passed for c in below.checks] == [False, False]
    assert not check_gate(gate, {"kld_mean": -math.inf, "same_top1_wilson_low": 0.95}).passed
    assert not check_gate(gate, {"kld_mean": 0.0, "same_top1_wilson_low": math.inf}).passed
    assert not check_gate(gate, {"kld_mean": 0.0}).passed                     # a statistic the summary lacks


def test_each_check_is_described_and_reported():
    gate = make_gate({"kld_mean_max": 0.01, "top1_min": 0.9, "kld_p99_max": 1e-5, "ln_ppl_ratio_min": -0.25}, "g.yaml",
                     KEYS)
    result = check_gate(gate, {"kld_mean": 0.123456789, "same_top1_wilson_low": 0.95, "ln_ppl_ratio": -0.5})
    assert [c.describe() for c in result.checks] == [
        "kld_mean 0.123457 > kld_mean_max 0.01", "same_top1_wilson_low 0.95 >= top1_min 0.9",
        "kld_p99 n/a > kld_p99_max 1e-05", "ln_ppl_ratio -0.5 < ln_ppl_ratio_min -0.25"]
    assert Check(gate.limits[0], 0.005, True).describe() == "kld_mean 0.005 <= kld_mean_max 0.01"
    assert not result.passed and [c.limit.key for c in result.failures] == ["kld_mean_max", "kld_p99_max",
                                                                            "ln_ppl_ratio_min"]
    assert result.to_json() == {
        "source": "g.yaml", "passed": False, "confidence": 0.95,
        "checks": [{"limit": "kld_mean_max", "metric": "kld_mean", "bound": "max", "value": 0.01,
                    "measured": 0.123456789, "passed": False},
                   {"limit": "top1_min", "metric": "same_top1_wilson_low", "bound": "min", "value": 0.9,
                    "measured": 0.95, "passed": True},
                   {"limit": "kld_p99_max", "metric": "kld_p99", "bound": "max", "value": 1e-5,
                    "measured": None, "passed": False},
                   {"limit": "ln_ppl_ratio_min", "metric": "ln_ppl_ratio", "bound": "min", "value": -0.25,
                    "measured": -0.5, "passed": False}],
        "failed": ["kld_mean", "kld_p99", "ln_ppl_ratio"]}
    assert check_gate(make_gate({"kld_mean_max": 0.2}, "g", KEYS), {"kld_mean": 0.1}).to_json()["passed"] is True
