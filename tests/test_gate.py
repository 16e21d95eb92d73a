"""Gate files: parsing (every mistake is a one-line InputError) and checking limits against a summary."""

from __future__ import annotations

import math

import pytest
import torch

from mv4deploy.core.errors import InputError
from mv4deploy.validate.gate import check_gate, load_gate
from mv4deploy.validate.metrics import PositionStats
from mv4deploy.validate.stats import summarize, summary_keys

KEYS = summary_keys()


def _gate(tmp_path, text: str):
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return load_gate(path, KEYS)


def _summary(same: int, n: int, kld: float = 0.001, confidence: float = 0.95) -> dict:
    flags = torch.zeros(n, dtype=torch.bool)
    flags[:same] = True
    values = torch.full((n,), kld, dtype=torch.float64)
    nll = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    return summarize(PositionStats(values, nll, nll * 1.001, flags), confidence)


def test_named_limits_and_generic_statistics(tmp_path):
    gate = _gate(tmp_path, "confidence: 0.9\nkld_mean_max: 0.01\nkld_p99_max: 0.1\ntop1_min: 0.9\n"
                           "ppl_ratio_max: 1.02\ndelta_p_rms_max: 0.05\n")
    assert gate.confidence == 0.9
    assert [(l.metric, l.bound) for l in gate.limits] == [
        ("kld_mean", "max"), ("kld_p99", "max"), ("same_top1_wilson_low", "min"), ("ppl_ratio", "max"),
        ("delta_p_rms", "max")]


def test_top1_min_is_checked_against_the_wilson_lower_bound(tmp_path):
    gate = _gate(tmp_path, "top1_min: 0.9\n")
    # 93 of 100 agree: the rate clears 0.9 but its 95 % Wilson lower bound (0.873) does not
    small = _summary(93, 100)
    assert small["same_top1"] > 0.9 > small["same_top1_wilson_low"]
    result = check_gate(gate, small)
    assert not result.passed and [c.limit.metric for c in result.failures] == ["same_top1_wilson_low"]
    assert "same_top1_wilson_low 0.87" in result.failures[0].describe()
    # the same rate over 10x the tokens is confidently above 0.9
    assert check_gate(gate, _summary(930, 1000)).passed


def test_failures_are_named_and_nan_fails(tmp_path):
    gate = _gate(tmp_path, "kld_mean_max: 0.01\nppl_ratio_max: 1.5\n")
    result = check_gate(gate, _summary(10, 10, kld=0.05))
    assert [c.limit.key for c in result.failures] == ["kld_mean_max"]
    assert result.failures[0].describe() == "kld_mean 0.05 > kld_mean_max 0.01"
    assert result.to_json()["failed"] == ["kld_mean"]
    nan = {**_summary(10, 10), "kld_mean": math.nan}
    assert not check_gate(gate, nan).passed
    assert check_gate(gate, _summary(10, 10, kld=0.01)).passed   # limits are inclusive


@pytest.mark.parametrize("text,field", [
    ("kld_mean_max: [1, 2]\n", "kld_mean_max"),
    ("kld_mean_max: .nan\n", "kld_mean_max"),
    ("kld_mean_max: true\n", "kld_mean_max"),
    ("kld_avg_max: 0.1\n", "kld_avg_max"),
    ("kld_mean: 0.1\n", "kld_mean"),
    ("top1_min: 95\n", "top1_min"),
    ("confidence: 1.5\nkld_mean_max: 0.1\n", "confidence"),
    ("confidence: 0.9\n", None),
    ("- kld_mean_max: 0.1\n", None),
    ("kld_mean_max: 0.1\n  bad: [\n", None),
])
def test_bad_gate_files(tmp_path, text, field):
    with pytest.raises(InputError) as err:
        _gate(tmp_path, text)
    assert err.value.field == field
    assert "\n" not in err.value.one_line()


def test_missing_gate_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_gate(tmp_path / "absent.yaml", KEYS)
