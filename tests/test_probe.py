"""``profile probe`` figures and the calibrated ``runtime_overhead``: what they write, and what the planner
does with them (exact arithmetic on small profiles; the host measurements themselves run on tiny sizes)."""

from __future__ import annotations

import copy

import pytest
import yaml

from mv4deploy.core.errors import InputError
from mv4deploy.hardware.probe import ProbeResult, host_matvec_rate, with_measurements
from mv4deploy.hardware.profile import load_profile_dict, parse_profile
from mv4deploy.hardware.rates import MEASURED, achievable_rates
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.costs import Work, on_host
from mv4deploy.plan.tiers import build_machine
from mv4deploy.plan.workload import make_workload

CPU_ONLY = {  # a CPU-only machine: 16 GB/s read, 100 GFLOP/s in fp32 and bf16
    "name": "cpu-test", "host": {"memory": "32GiB", "bandwidth": "16GB/s", "cores": 2, "isa": ["avx512_bf16"],
                                 "reserve": "0B", "compute": {"fp32": "100GFLOPS", "bf16": "100GFLOPS"}},
    "efficiency": {"host_bandwidth": 1.0, "host_compute": 1.0},
}


def _profile(**sections):
    data = copy.deepcopy(CPU_ONLY)
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return parse_profile(data, "test")


def test_matvec_rate_is_a_positive_byte_rate():
    assert host_matvec_rate("bf16", size_bytes=2**24, repeats=1) > 1e8    # > 100 MB/s on any machine


def test_gpu_figures_are_written_beside_nominal_ones_and_preferred():
    """A fake probe result with GPU figures (no CUDA needed): H2D and D2H both land in host_link."""
    base, _ = load_profile_dict("h100")
    result = ProbeResult(host_bandwidth_bytes_per_s=30e9, host_compute_flops_per_s={"fp32": 1e12, "bf16": 2e12},
                         host_matvec_bytes_per_s={"bf16": 12e9, "fp32": 20e9}, storage_read_bytes_per_s=3e9,
                         gpu_bandwidth_bytes_per_s=3.0e12, gpu_compute_flops_per_s={"bf16": 790e12, "fp8": 1435e12},
                         host_to_gpu_bytes_per_s=48e9, gpu_to_host_bytes_per_s=53e9)
    profile = parse_profile(yaml.safe_load(yaml.safe_dump(with_measurements(base, result))), "probed")
    rates = achievable_rates(profile)
    assert rates.host_link.value == 48e9 and rates.host_link.source == MEASURED
    assert rates.host_link_d2h.value == 53e9 and rates.host_link_d2h.source == MEASURED
    assert rates.gpu_bandwidth.value == 3.0e12 and rates.gpu_compute["fp8"].value == 1435e12
    assert {f: r.value for f, r in rates.host_matvec.items()} == {"bf16": 12e9, "fp32": 20e9}
    assert rates.gpu_compute["fp16"].source != MEASURED            # not probed here: nominal x efficiency


def test_cpu_weights_are_read_at_the_matvec_rate_of_their_compute_format():
    """1 GB of bf16 weights, 1 GFLOP: 1e9 B / 8e9 B/s = 125 ms (matvec), not 1e9 / 16e9 = 62.5 ms (bandwidth);
    fp32 weights have no matvec figure here, so they read at the bandwidth."""
    profile = _profile(host={"measured": {"matvec": {"bf16": "8GB/s"}}})
    host = build_machine(profile).host
    assert on_host(Work(1e9, 1e9, "bf16"), host, None).seconds == pytest.approx(0.125)
    assert on_host(Work(1e9, 1e9, "fp32"), host, None).seconds == pytest.approx(1e9 / 16e9)
    # fp8 weights on this CPU dequantize to bf16 (its best float format): the bf16 matvec rate applies
    assert on_host(Work(1e9, 1e9, "fp8"), host, None).seconds == pytest.approx(0.125)
    faster = _profile(host={"measured": {"matvec": {"bf16": "40GB/s"}}})   # capped by the read bandwidth
    assert on_host(Work(1e9, 1e9, "bf16"), build_machine(faster).host, None).seconds == pytest.approx(1e9 / 16e9)


def test_runtime_overhead_adds_per_step_layer_and_expert_call():
    """tiny-deepseek-v4: 4 layers, 4 MoE layers of 8 experts, top-2. Decode at batch 1 calls 2 experts per
    layer (8 calls): 1 ms + 4 x 2 ms + 8 x 0.1 ms = 9.8 ms more per step. A prefill chunk has its own terms:
    its roofline at half efficiency takes twice as long, plus 4 x 3 ms."""
    model, workload = resolve_model("tiny-deepseek-v4"), make_workload(context=256, prefill_chunk=64)
    plain = make_plan(model, _profile(), workload, suggest=False, engine="mv4deploy")   # the profile's overhead
    overhead = {"per_step": "1ms", "per_layer": "2ms", "per_expert": "100us", "prefill_per_layer": "3ms",
                "prefill_efficiency": 0.5, "engine": "test", "source": "test"}
    slow = make_plan(model, _profile(runtime_overhead=overhead), workload, suggest=False, engine="mv4deploy")
    step = 1 / plain.estimates.decode_tokens_per_s
    assert 1 / slow.estimates.decode_tokens_per_s == pytest.approx(step + 9.8e-3, rel=1e-9)
    assert slow.estimates.prefill_chunk_s == pytest.approx(2 * plain.estimates.prefill_chunk_s + 12e-3, rel=1e-6)
    assert slow.decisions.decode_seconds_by_resource["runtime overhead"] == pytest.approx(9.8e-3)
    assert slow.estimates.bound_decode_tokens_per_s <= slow.estimates.decode_tokens_per_s * (1 + 1e-9)
    assert plain.fingerprint.profile.sha256 != slow.fingerprint.profile.sha256


@pytest.mark.parametrize("field, value", [("per_layer", "-1ms"), ("per_step", "20s"), ("per_expert", "fast"),
                                          ("per_lyaer", "1ms"), ("prefill_efficiency", 1.5),
                                          ("prefill_per_layer", "-2ms")])
def test_bad_overhead_is_one_line_naming_the_field(field, value):
    with pytest.raises(InputError) as err:
        _profile(runtime_overhead={field: value})
    assert f"runtime_overhead.{field}" in err.value.one_line()


def test_probe_cli_writes_matvec_figures(cli, tmp_path):
    out = tmp_path / "probed.yaml"
    result = cli("profile", "probe", "--size", "32MiB", "--storage-dir", tmp_path, "--threads", "1", "--out", out)
    assert result.code == 0, result.stderr
    data = yaml.safe_load(out.read_text())
    assert set(data["host"]["measured"]["matvec"]) == {"fp32", "bf16"}
    assert data["host"]["measured"]["threads"] == 1                 # what `run` will use
    profile = parse_profile(data, str(out))
    assert all(v > 1e8 for v in profile.host.measured.matvec_bytes_per_s.values())


@pytest.mark.gpu
def test_gpu_probe_measures_links_both_ways_and_four_formats():
    from mv4deploy.hardware.probe import gpu_rates
    result = ProbeResult()
    gpu_rates(result, size_bytes=2**28)
    assert result.host_to_gpu_bytes_per_s > 1e9 and result.gpu_to_host_bytes_per_s > 1e9
    assert result.gpu_bandwidth_bytes_per_s > 1e11
    assert {"bf16", "fp16"} <= set(result.gpu_compute_flops_per_s)


def test_probe_drops_a_base_profiles_runtime_overhead():
    """The overhead was fitted against the figures a probe replaces: a calibration must start from zero."""
    from mv4deploy.hardware.probe import ProbeResult, with_measurements
    base = {"name": "x", "host": {"memory": "8GiB"}, "runtime_overhead": {"per_layer": "1ms"}}
    result = ProbeResult(host_bandwidth_bytes_per_s=1e10, host_threads=1)
    data = with_measurements(base, result)
    assert "runtime_overhead" not in data and "runtime_overhead" in base
    assert data["host"]["measured"]["bandwidth"] == "10.000GB/s"
