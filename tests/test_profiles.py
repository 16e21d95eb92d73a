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
