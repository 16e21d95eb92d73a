"""Hardware profiles: shipped ones load with figures parsed to bytes, bytes/s and FLOP/s; detect is loadable."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mv4deploy.hardware.detect import detect_profile_yaml
from mv4deploy.core.errors import InputError
from mv4deploy.hardware.profile import LinkKind, list_profiles, load_profile, parse_profile, profiles_dir
from mv4deploy.hardware.rates import MEASURED, Rate, achievable_rates
from mv4deploy.core.units import format_bytes, parse_bytes, parse_bytes_per_s, parse_flops_per_s

SHIPPED = {"rtx4090x2", "rtx5090", "b200", "b200x8", "h100", "h200", "snapdragon-8-elite-gen5"}


def test_every_required_profile_ships():
    assert SHIPPED <= set(list_profiles())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_profile_loads(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert profile.host.memory_bytes > 0 and profile.gpus.count >= 1


def test_units_are_parsed_once_into_numbers():
    p = load_profile("rtx4090x2")
    assert p.gpus.memory_bytes == 24 * 2**30                  # GiB: binary
    assert p.gpus.bandwidth_bytes_per_s == 1008e9              # GB/s: decimal
    assert p.gpus.compute_flops_per_s["bf16"] == 165.2e12
    assert p.interconnect.kind is LinkKind.PCIE and not p.interconnect.p2p
    assert achievable_rates(p).host_link == Rate(25e9, MEASURED)  # measured beats nominal (31.5 x efficiency)
    assert "fp4" not in p.gpus.native_formats                  # Ada
    assert "fp4" in load_profile("rtx5090").gpus.native_formats
    assert load_profile("b200x8").interconnect.kind is LinkKind.NVLINK


def test_phone_profile_is_unified_memory_with_an_app_budget():
    p = load_profile("snapdragon-8-elite-gen5")
    assert p.gpus.unified_memory and p.gpus.usable_fraction == 0.45
    assert p.gpus.bandwidth_bytes_per_s == 84.8e9
    assert "int4" in p.gpus.native_formats and p.gpus.compute_flops_per_s == {}   # TOPS unpublished


@pytest.mark.parametrize("text,expected", [("24GiB", 24 * 2**30), ("128GB", 128e9), ("512", 512),
                                           ("1.5TiB", 1.5 * 2**40), (4096, 4096), ("64kiB", 65536)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_rates_and_errors():
    assert parse_bytes_per_s("63GB/s") == 63e9
    assert parse_flops_per_s("660.6TOPS") == pytest.approx(660.6e12)
    for bad in ("24 parsecs", "-1GB", "GB", True, "nanGB"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(1536) == "1.50 KiB"


def test_isa_names_are_one_table_for_detect_profiles_and_the_host_tier(monkeypatch):
    """detect writes the names /proc/cpuinfo uses, the loader accepts only those, and each gives the host
    tier the formats it computes natively: an Arm host with asimdhp runs fp16, an avx_vnni host int8."""
    from pathlib import Path

    from mv4deploy.hardware import detect
    from mv4deploy.hardware.isa import Isa
    from mv4deploy.plan.tiers import build_machine
    cpuinfo = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp cpuid asimddp sve2 fancy\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: cpuinfo)
    assert detect.cpu_flags() == ("asimd", "asimdhp", "asimddp", "sve2")
    monkeypatch.undo()
    for name in sorted(SHIPPED):
        assert all(isinstance(isa, Isa) for isa in load_profile(name).host.isa)
    data = yaml.safe_load(open(profiles_dir() / "rtx5090.yaml"))
    for isa, formats in (["asimd", "asimdhp"], {"fp32", "fp16"}), (["avx2", "avx_vnni"], {"fp32", "int8"}):
        data["host"]["isa"] = isa
        assert build_machine(parse_profile(data, "x")).host.native_formats == formats
    data["host"]["isa"] = ["neon"]
    with pytest.raises(InputError, match="host.isa.*neon.*unknown ISA"):
        parse_profile(data, "x")


def test_detect_writes_a_loadable_profile_marking_unknowns():
    text = detect_profile_yaml("here")
    data = yaml.safe_load(text)
    profile = parse_profile(data, "detected")
    assert profile.host.memory_bytes > 2**30 and profile.host.bandwidth_bytes_per_s is None
    assert data["host"]["bandwidth"] == "unknown"


def test_profile_cli_json(cli, tmp_path):
    listed = cli("profile", "list", "--json")
    assert listed.code == 0 and SHIPPED <= set(listed.json())
    shown = cli("profile", "show", "h100", "--json")
    assert shown.code == 0 and shown.json()["gpus"]["memory_bytes"] == round(79.6 * 2**30)
    out = tmp_path / "me.yaml"
    assert cli("profile", "detect", "--out", out).code == 0
    assert cli("profile", "show", out, "--json").json()["name"] == "this-machine"


def test_planner_path_imports_no_torch():
    code = ("import sys, mv4deploy.cli; from mv4deploy.model.source import resolve_model; "
            "from mv4deploy.model.report import inspect_report; from mv4deploy.hardware.profile import load_profile; "
            "inspect_report(resolve_model('deepseek-v4-flash')); load_profile('rtx5090'); "
            "bad = [m for m in ('torch', 'transformers', 'numpy', 'safetensors') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_probe_writes_measured_figures_that_the_rates_prefer(cli, tmp_path):
    from mv4deploy.hardware.rates import MEASURED, NOMINAL, achievable_rates
    out = tmp_path / "probed.yaml"
    result = cli("profile", "probe", "--size", "64MiB", "--storage-dir", tmp_path, "--base", "rtx5090",
                 "--out", out)
    assert result.code == 0, result.stderr
    profile = load_profile(out)
    measured = profile.host.measured
    assert measured.bandwidth_bytes_per_s > 1e9 and measured.compute_flops_per_s["fp32"] > 1e9
    rates = achievable_rates(profile)
    assert rates.host_bandwidth.source == MEASURED
    assert rates.host_bandwidth.value == measured.bandwidth_bytes_per_s          # no efficiency on top
    assert rates.gpu_bandwidth.source == NOMINAL                                  # no GPU here: nominal 5090
    assert rates.gpu_bandwidth.value == pytest.approx(1792e9 * 0.80)
    assert not list(tmp_path.glob(".mv4deploy-probe-*"))                           # temp file removed


def test_detect_reads_exactly_what_the_machine_reports(monkeypatch, tmp_path):
    """psutil, /proc/cpuinfo and nvidia-smi replaced by known answers: every figure detect writes is the
    one reported (2 x H200, 143,771 MiB each, compute capability 9.0 -> FP8 but no FP4 or INT4 units)."""
    from types import SimpleNamespace

    from mv4deploy.hardware import detect
    from mv4deploy.hardware.isa import Isa
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 143771, 9.0\\nNVIDIA H200, 143771, 9.0\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(detect.psutil, "virtual_memory", lambda: SimpleNamespace(total=256 * 2**30))
    monkeypatch.setattr(detect.psutil, "cpu_count", lambda logical=True: 64 if logical else 32)
    monkeypatch.setattr(detect.shutil, "disk_usage", lambda path: SimpleNamespace(total=4 * 10**12))
    cpuinfo = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8 xyz\n"
    monkeypatch.setattr(detect.Path, "read_text", lambda self, *a, **k: cpuinfo)
    data = yaml.safe_load(detect.detect_profile_yaml("box"))
    assert data["host"]["memory"] == f"{256 * 2**30}B" and data["host"]["cores"] == 32
    assert data["host"]["isa"] == [isa.value for isa in Isa if isa.value in cpuinfo.split()]
    assert "avx512_bf16" in data["host"]["isa"] and "xyz" not in data["host"]["isa"]
    assert data["storage"]["capacity"] == f"{4 * 10**12}B"
    gpus = data["gpus"]
    assert (gpus["model"], gpus["count"], gpus["memory"], gpus["compute_capability"]) == \
        ("NVIDIA H200", 2, "143771MiB", "9.0")
    assert gpus["native_formats"] == ["bf16", "fp16", "int8", "fp8"]
    assert data["interconnect"]["kind"] == "pcie"   # two GPUs: a link is written, its speed unknown
    profile = parse_profile(data, "detected")
    assert profile.gpus.memory_bytes == 143771 * 2**20 and profile.host.memory_bytes == 256 * 2**30


@pytest.mark.parametrize("capability, formats", [("8.9", ["bf16", "fp16", "int8", "fp8", "int4"]),
                                                 ("8.0", ["bf16", "fp16", "int8"]),
                                                 ("10.0", ["bf16", "fp16", "int8", "fp8", "fp4"]),
                                                 ("unknown", ["bf16", "fp16"])])
def test_tensor_core_formats_by_compute_capability(capability, formats):
    from mv4deploy.hardware.detect import _formats_for
    assert _formats_for(capability) == formats
