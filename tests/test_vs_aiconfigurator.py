"""benchmarks/vs_aiconfigurator.py without AIConfigurator: its recorded outputs, its layout phrases, the
cli_estimate arguments it builds for our layout, and its fallback when our plan has no cluster section."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("vs_aic", REPO / "benchmarks" / "vs_aiconfigurator.py")
vs_aic = importlib.util.module_from_spec(SPEC)
sys.modules["vs_aic"] = vs_aic   # dataclasses look their module up there
SPEC.loader.exec_module(vs_aic)
NO_VENV = REPO / "no-such-venv"


def recorded(backend: str, gpus: int) -> dict:
    return json.loads(vs_aic.record_path("deepseek-v3", backend, gpus).read_text())


def test_recorded_runs_cover_every_backend_and_gpu_count_with_the_documented_workload():
    for backend in vs_aic.BACKENDS:
        for gpus in vs_aic.PROFILES:
            run = recorded(backend, gpus)
            assert run["workload"] == {"isl": 4000, "osl": 1000, "ttft_ms": 1000.0, "tpot_ms": 40.0}
            assert run["aiconfigurator_version"] == "0.12.0" and run["wall_s"] > 0
            assert run["agg"], f"{backend} {gpus}: AIC found an aggregated layout when it was recorded"


def test_layout_phrases_of_recorded_trtllm_rows():
    # 16 H200, agg: one tp8/ep8 worker uses 8 GPUs (the agg row's num_total_gpus), so 2 replicas
    assert vs_aic.layout(recorded("trtllm", 16)["agg"][0], 16) == "agg 2x tp8ep8 bs64"
    # disagg row: 1 prefill worker tp8 ep8 + 1 decode worker attention-DP 8, MoE ep4 x etp2 = 16 GPUs
    assert vs_aic.layout(recorded("trtllm", 16)["disagg"][0], 16) == "1x [1P tp8ep8 bs1 + 1D dp8ep4etp2 bs26]"
    # 32 H200 on vLLM: one 1P+2D replica of 24 GPUs; AIC ranks it by tokens/s over all 32 (198.1 * 24/32)
    row = recorded("vllm", 32)["disagg"][0]
    assert vs_aic.layout(row, 32) == "1x [1P tp4dp2etp8 bs1 + 2D dp8etp8 bs16] (24 of 32 GPUs)"
    assert vs_aic.metrics(row)["tok_s_gpu"] == pytest.approx(row["tokens/s/gpu"] * 24 / 32, rel=1e-4)


def test_estimate_kwargs_maps_our_cluster_fields_and_refuses_incomplete_ones():
    w = vs_aic.Workload()
    agg = vs_aic.estimate_kwargs({"mode": "agg", "tp": 8, "dp": 1, "ep": 8, "batch": 64}, "deepseek-v3", "trtllm", w)
    assert (agg["tp_size"], agg["attention_dp_size"], agg["moe_ep_size"], agg["batch_size"]) == (8, 1, 8, 64)
    part = {"tp": 1, "dp": 8, "ep": 8, "batch": 32, "workers": 1}
    dis = vs_aic.estimate_kwargs({"mode": "disagg", "prefill": {**part, "batch": 1, "workers": 2},
                                  "decode": part}, "deepseek-v3", "sglang", w)
    assert (dis["prefill_num_workers"], dis["prefill_batch_size"], dis["decode_attention_dp_size"]) == (2, 1, 8)
    assert vs_aic.estimate_kwargs({"mode": "agg", "tp": 8}, "deepseek-v3", "trtllm", w) is None
    assert vs_aic.estimate_kwargs({"layout": "tp8"}, "deepseek-v3", "trtllm", w) is None


def test_without_venv_the_table_comes_from_the_records(capsys, monkeypatch):
    monkeypatch.setattr(vs_aic, "ours", lambda profile, model, w: None)
    assert vs_aic.main(["--aic-venv", str(NO_VENV), "--gpus", "8,16"]) == 0
    out, err = capsys.readouterr()
    assert "recorded outputs" in err
    lines = [line.split() for line in out.splitlines()]
    assert ["8", "AIC", "disagg", "no", "layout", "meets", "the", "targets"] == lines[4][:8]
    assert sum("ours: not available" in line for line in out.splitlines()) == 2
    first = recorded("trtllm", 8)["agg"][0]
    assert f"{first['tokens/s/gpu_cluster']:.1f}" in out


@pytest.mark.parametrize("gpus", ["12", "8,x"])
def test_bad_gpu_list_exits_2(gpus, capsys):
    assert vs_aic.main(["--aic-venv", str(NO_VENV), "--gpus", gpus]) == 2
    assert "--gpus" in capsys.readouterr().err
