"""``mv4deploy validate`` as a user runs it: exit codes, --json keys, the gate naming failures, the report."""

from __future__ import annotations

import pytest

from conftest import run_cli
from validate_fixtures import build_tiny_models

GATE = "confidence: 0.95\nkld_mean_max: 0.01\nkld_p99_max: 0.1\ntop1_min: 0.8\nppl_ratio_max: 1.02\n"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "validate-models")


@pytest.fixture
def gate(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(GATE)
    return path


def _common(tiny, *extra):
    return ("validate", "--reference", tiny.ref, "--eval", tiny.eval_text, "--chunk", "128", "--max-chunks", "3",
            *extra)


def test_self_validation_passes_with_zero_kld_and_writes_the_report(tiny, gate, tmp_path):
    report = tmp_path / "report.md"
    r = run_cli(*_common(tiny, "--candidate", tiny.copy, "--gate", gate, "--report", report, "--json"))
    assert r.code == 0, r.stderr
    data = r.json()
    for key in ("kld_mean", "kld_p99", "kld_max", "same_top1", "same_top1_wilson_low", "ppl_ratio", "delta_p_rms",
                "tokens_scored"):
        assert key in data
    assert data["kld_mean"] == 0.0 and data["same_top1"] == 1.0 and data["tokens_scored"] == 3 * 63
    assert data["gate"]["passed"] is True and data["gate"]["failed"] == []
    assert data["reference"]["kind"] == "transformers"
    text = report.read_text()
    assert "**PASS**" in text and "| Mean KLD | 0.000000 ± 0.000000 |" in text
    assert "![KLD histogram](report-kld.png)" in text
    assert (tmp_path / "report-kld.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["plot"] == str(tmp_path / "report-kld.png")     # the plot a report draws beside itself


def test_damaged_candidate_fails_the_gate_naming_the_metrics(tiny, gate, tmp_path):
    plot = tmp_path / "kld.png"
    r = run_cli(*_common(tiny, "--candidate", tiny.damaged, "--gate", gate, "--plot", plot))
    assert r.code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gate failed" in errors[0]
    assert "scoring chunks" not in r.stderr           # stderr is no terminal here: no progress bar drawn
    for metric in ("kld_mean", "kld_p99", "ppl_ratio", "same_top1_wilson_low"):
        assert metric in errors[0]
    assert "Mean KLD" in r.stdout and "FAIL" in r.stdout
    assert plot.stat().st_size > 1000


def test_golden_round_trip_through_the_cli(tiny, gate, tmp_path):
    golden = tmp_path / "golden-ref.safetensors"
    made = run_cli(*_common(tiny, "--golden-out", golden, "--json"))
    assert made.code == 0, made.stderr
    assert made.json()["kld_mean"] is None and golden.is_file()
    assert made.json()["plot"] is None                 # the key is there even when no plot was asked for
    r = run_cli("validate", "--golden", golden, "--candidate", tiny.fp8, "--gate", gate, "--json")
    assert r.code == 0, r.stderr
    data = r.json()
    assert data["reference"]["kind"] == "golden (transformers)" and 0 < data["kld_mean"] < 0.01
    assert data["tokens_scored"] == 3 * 63


@pytest.mark.parametrize("case", ["bad_gate", "missing_eval", "other_tokenizer", "report_without_candidate"])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, case):
    bad_gate = tmp_path / "bad.yaml"
    bad_gate.write_text("kld_avg_max: 0.1\n")
    args = {
        "bad_gate": _common(tiny, "--candidate", tiny.copy, "--gate", bad_gate),
        "missing_eval": ("validate", "--reference", tiny.ref, "--candidate", tiny.copy, "--eval", tmp_path / "no.txt"),
        "other_tokenizer": _common(tiny, "--candidate", tiny.other_tokenizer),
        "report_without_candidate": _common(tiny, "--golden-out", tmp_path / "g.st", "--report", tmp_path / "r.md"),
    }[case]
    r = run_cli(*args, "--json")
    assert r.code == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1
    expected = {"bad_gate": "kld_avg_max", "missing_eval": "no.txt", "other_tokenizer": "tokenizer",
                "report_without_candidate": "--report"}[case]
    assert expected in r.stderr
