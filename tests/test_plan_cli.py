"""``mv4deploy plan`` as a user runs it: a subprocess, exit codes, the JSON contract, stderr discipline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import PRESETS, REPO, run_cli
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.policy import POLICIES, policy_names

CONTRACT = {"model", "profile", "workload", "verdict", "devices", "groups", "kv_cache", "engram", "estimates",
            "hints", "suggestions", "warnings"}


@pytest.fixture(scope="module")
def default_plan():
    result = run_cli("plan", "--profile", "rtx5090", "--json")
    assert result.code == 0, result.stderr
    return result


def test_default_plan_json_follows_the_contract(default_plan):
    data = default_plan.json()
    assert CONTRACT <= set(data) and set(data) - CONTRACT == {"decisions", "fingerprint", "engine"}
    assert data["model"] == "deepseek-v4-flash" and data["profile"] == "rtx5090"
    assert data["workload"] == {"context_tokens": 131072, "batch": 1, "prefill_chunk": 2048,
                                "prefill_chunk_tokens": 2048, "include_mtp": False, "expert_skew": None}
    assert data["verdict"] in ("fits", "fits_with_offload", "does_not_fit")
    for d in data["devices"]:
        assert set(d) == {"name", "kind", "capacity_bytes", "used_bytes", "breakdown"}
        assert set(d["breakdown"]) == {"weights", "engram", "kv_cache", "activations", "reserve"}
        assert d["used_bytes"] == sum(d["breakdown"].values())
    for g in data["groups"]:
        assert {"name", "group", "role", "layer", "stored_format", "tier", "format", "bytes", "execution",
                "experts"} <= set(g)
    assert set(data["kv_cache"]) == {"pools", "gpu_bytes_saved", "added_s_per_token"}
    assert all(set(p) == {"name", "tier", "bytes"} for p in data["kv_cache"]["pools"])
    assert data["engram"] is None                                  # V4-Flash has no Engram
    assert set(data["estimates"]) == {"decode_tokens_per_s", "prefill_tokens_per_s", "time_to_first_token_s",
                                      "bottleneck", "bound_decode_tokens_per_s"}
    assert set(data["hints"]) == {"vllm", "sglang", "llama_cpp", "accelerate_device_map"}
    assert "-ot" in data["hints"]["llama_cpp"] and "exps" in data["hints"]["llama_cpp"]
    assert data["hints"]["accelerate_device_map"]["model.layers.42.mlp.experts"] == "cpu"
    assert default_plan.stderr.count("warning:") == len(data["warnings"])   # warnings on stderr, JSON clean


def test_human_output_has_the_verdict_estimates_and_hints():
    result = run_cli("plan", "--profile", "rtx4090x2")
    assert result.code == 0, result.stderr
    for text in ("fits with offload", "memory per device", "routed_experts", "decode", "bottleneck",
                 "layout: layers split across 2 GPUs", "llama_cpp: llama-server"):
        assert text in result.stdout
    assert "warning:" not in result.stdout


@pytest.mark.parametrize("args, field", [
    (("--context", "-5"), "--context"), (("--batch", "0"), "--batch"), (("--policy", "int3"), "--policy"),
    (("--profile", "no-such-box"), "profile"), (("--prefill-chunk", "abc"), "--prefill-chunk"),
    (("--host-mem", "lots"), "--host-mem"), (("--gpu-mem-util", "0"), "--gpu-mem-util"),
    (("--sweep", "speed=1,2"), "--sweep"), (("--sweep", "host-mem=0,4GiB"), "--sweep"),
    (("--sweep", "batch=1,1.5"), "--sweep"), (("--sweep", "context=8k,0"), "--sweep"),
    (("--policy", "mobile-int4"), "--policy"),        # V4's KV cache has no fp32 layout (the phone export's)
])
def test_bad_input_is_one_line_and_exit_2(args, field):
    argv = ["plan", *args] if "--profile" in args else ["plan", "--profile", "rtx5090", *args]
    result = run_cli(*argv)
    assert result.code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0]


def test_out_file_matches_stdout(tmp_path):
    out = tmp_path / "plan.json"
    result = run_cli("plan", "--model", "deepseek-r1-distill-qwen-7b", "--profile", "snapdragon-8-elite-gen5",
                     "--context", "4k", "--json", "--out", out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_text()) == result.json()
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]          # nothing half-written left behind
    assert result.json()["verdict"] == "fits"


def test_any_config_and_profile_file_work(tmp_path):
    profile = yaml.safe_load((REPO / "profiles" / "rtx5090.yaml").read_text())
    profile["name"] = "my-box"
    profile["host"]["memory"] = "64GiB"
    path = tmp_path / "box.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = run_cli("plan", "--model", PRESETS / "tiny-deepseek-v4.1.json", "--profile", path, "--context", "2048",
                     "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["profile"] == "my-box" and data["verdict"] == "fits"
    assert data["engram"]["rows_per_token"] > 0                        # the tiny V4.1 carries Engram tables


def test_sweep_reports_each_point(tmp_path):
    plot = tmp_path / "sweep.png"
    result = run_cli("plan", "--profile", "rtx5090", "--sweep", "context=8k,32k,128k,1m", "--json", "--plot", plot)
    assert result.code == 0, result.stderr
    points = result.json()["sweep"]["points"]
    assert [p["value"] for p in points] == ["8k", "32k", "128k", "1m"]
    assert [p["workload"]["context_tokens"] for p in points] == [8192, 32768, 131072, 1048576]
    kv = [sum(d["breakdown"]["kv_cache"] for d in p["devices"]) for p in points]
    assert kv == sorted(kv) and kv[-1] > 4e9                               # 3,850 B/token x 1M = 4.04 GB
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_planner_imports_no_torch():
    code = ("import sys; from mv4deploy.cli import run; "
            "code = run(['plan', '--profile', 'b200x8', '--model', 'deepseek-v4-pro', '--json']); "
            "assert code == 0; bad = [m for m in ('torch', 'transformers', 'accelerate', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


TINY = sorted(p.stem for p in PRESETS.glob("tiny-*.json"))


def _check_policy_plan(plan: dict, policy: str, arch) -> None:
    """What a policy promises, on the plan's own rows: each placed group's format is the policy's target for
    its class and stored format (``Policy.target``), and the bytes of the rows on each device add up to
    the device's weights + Engram (rows on a sharded tier split evenly over its devices)."""
    chosen = plan["decisions"]["policy"]["name"]
    assert chosen == policy if policy != "auto" else POLICIES[chosen].supports(arch)
    rule = POLICIES[chosen]
    by_device: dict[str, int] = {}
    for row in plan["groups"]:
        if row["tier"] == "unplaced":
            continue
        assert row["format"] == rule.target(GroupClass(row["role"]), row["stored_format"]), row
        devices = [d["name"] for d in plan["devices"] if d["name"] == row["tier"]] or \
            [f"gpu:{i}" for i in range(int(row["tier"].split("-")[-1]) + 1)]
        share, rest = divmod(row["bytes"], len(devices))
        for i, name in enumerate(devices):
            by_device[name] = by_device.get(name, 0) + share + (rest if i == 0 else 0)
    for device in plan["devices"]:
        breakdown = device["breakdown"]
        assert by_device.get(device["name"], 0) == breakdown["weights"] + breakdown["engram"], device["name"]


def test_every_policy_plans_every_tiny_model(capsys):
    """Every policy x every tiny family x three profiles (108 plans, in process, ~2 s) through the CLI's own
    entry. A policy the architecture cannot take (mobile-int4's fp32 KV cache off GQA) is bad input, one
    line naming --policy; every other plan keeps the policy's promise (``_check_policy_plan``)."""
    from mv4deploy.cli import run
    for profile in ("rtx5090", "rtx4090x2", "snapdragon-8-elite-gen5"):
        for model in TINY:
            arch = resolve_model(model).spec.architecture
            for policy in policy_names():
                code = run(["plan", "--profile", profile, "--model", model, "--policy", policy, "--json"])
                out, err = capsys.readouterr()
                case = (profile, model, policy)
                if policy in POLICIES and not POLICIES[policy].supports(arch):
                    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--policy" in err, case
                    continue
                assert code == 0, (case, err)
                _check_policy_plan(json.loads(out), policy, arch)
