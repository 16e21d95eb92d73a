"""Issue #18: each defect a hostile user found, as a test that fails on the code before the fix.

Nothing outside the model folder is read, nothing outside OUT is written, no wrong output is reported as
success, and no input hangs. Most cases run the CLI in-process (``inproc.run_inproc``); the hang checks run
a real subprocess under a timeout.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from inproc import one_line_error, run_inproc, tree
from quant_synth import make_checkpoint, preset_config, scaled_v4_config

FIXTURES = REPO / "tests" / "fixtures"
QWEN = FIXTURES / "models" / "tiny-qwen2"
GOLDEN_QWEN = REPO / "tests" / "golden" / "golden-tiny-qwen2.safetensors"
PROFILE = (REPO / "profiles" / "rtx5090.yaml").read_text()
LOCK = ".mv4deploy.lock"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sec") / "src", preset_config("tiny-deepseek-v4"), shards=2)


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst, symlinks=True)
    return dst


# ---- nothing outside the model folder is read ------------------------------------------------------------

def test_symlinked_secret_in_the_source_is_refused_and_never_copied(src, tmp_path):
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t")
    folder = _copy(src, tmp_path / "src")
    (folder / "tokenizer.json").symlink_to(secret)
    out = tmp_path / "out"
    one_line_error(run_inproc("quantize", folder, out, "--recipe", "fp8"), "tokenizer.json", "outside the model folder")
    assert tree(out) == {}
    for command in (("inspect", folder), ("plan", "--profile", "rtx5090", "--model", folder)):
        one_line_error(run_inproc(*command), "tokenizer.json", "outside the model folder")


def test_symlink_within_the_source_is_copied_as_a_regular_file(src, tmp_path):
    folder = _copy(src, tmp_path / "src")
    (folder / "extra").mkdir()
    (folder / "extra" / "vocab.txt").write_text("a\nb\n")
    (folder / "vocab.txt").symlink_to(Path("extra") / "vocab.txt")
    (folder / "fifo").mkdir()                      # a folder is never copied either
    out = tmp_path / "out"
    assert run_inproc("quantize", folder, out, "--recipe", "fp8").code == 0
    assert not (out / "vocab.txt").is_symlink() and (out / "vocab.txt").read_text() == "a\nb\n"
    assert not (out / "fifo").exists() and not (out / LOCK).exists()


def test_validate_never_unpickles_a_bin_only_candidate(tmp_path, monkeypatch):
    """A folder whose only weights are pytorch_model.bin must not reach torch.load (pickle)."""
    import torch
    candidate = tmp_path / "pickled"
    candidate.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN / name, candidate / name)
    torch.save({"x": torch.zeros(1)}, candidate / "pytorch_model.bin")
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    result = run_inproc("validate", "--golden", GOLDEN_QWEN, "--candidate", candidate)
    one_line_error(result, str(candidate))
    assert loads == []


def test_nul_byte_in_the_index_is_one_line(src, tmp_path):
    folder = _copy(src, tmp_path / "src")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["head.weight"] = "model-00001\0-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(run_inproc("quantize", folder, tmp_path / "out", "--recipe", "fp8"), "weight_map.head.weight",
                   "NUL")
    assert tree(tmp_path / "out") == {}


def test_trailing_bytes_after_the_last_tensor_are_refused(src, tmp_path):
    folder = _copy(src, tmp_path / "src")
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes() + b"\0" * 64)
    one_line_error(run_inproc("inspect", folder), shard.name, "payload", "64 bytes", "trailing bytes")
    one_line_error(run_inproc("quantize", folder, tmp_path / "out", "--recipe", "fp8"), "trailing bytes")


# ---- no wrong output reported as success ------------------------------------------------------------------

def test_recipe_change_on_a_finished_out_is_refused(src, tmp_path):
    out = tmp_path / "out"
    assert run_inproc("quantize", src, out, "--recipe", "fp8").code == 0
    before = tree(out)
    one_line_error(run_inproc("quantize", src, out, "--recipe", "nf4"), str(out), "another recipe", "'nf4'")
    assert tree(out) == before
    again = run_inproc("quantize", src, out, "--recipe", "fp8", "--json")   # the same run: still complete
    assert again.code == 0 and json.loads(again.stdout)["already_complete"] is True


def test_plan_for_another_model_is_refused(src, tmp_path):
    other = make_checkpoint(tmp_path / "other", scaled_v4_config(hidden=128, experts=8, inter=64), shards=1)
    plan = tmp_path / "plan.json"
    made = run_inproc("plan", "--profile", "rtx5090", "--model", other, "--policy", "int4", "--context", "4096",
                      "--out", plan, "--json")
    assert made.code == 0, made.stderr
    one_line_error(run_inproc("quantize", src, tmp_path / "out", "--plan", plan), str(plan), "fingerprint.model",
                   "another model")
    assert tree(tmp_path / "out") == {}


def test_negative_gate_limit_is_bad_input_not_a_failed_gate(tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text("kld_mean_max: -1\n")
    result = run_inproc("validate", "--golden", GOLDEN_QWEN, "--candidate", QWEN, "--gate", gate)
    one_line_error(result, str(gate), "kld_mean_max", "-1", "never negative")


def test_negative_chunk_is_refused_with_a_golden_file(tmp_path):
    result = run_inproc("validate", "--golden", GOLDEN_QWEN, "--candidate", QWEN, "--chunk", "-5")
    one_line_error(result, "--chunk", "-5")


def test_bandwidth_without_a_unit_is_refused(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.replace("bandwidth: 1792GB/s", "bandwidth: 1792", 1))
    one_line_error(run_inproc("plan", "--profile", profile, "--model", "tiny-deepseek-v4"), str(profile),
                   "gpus.bandwidth", "1792", "needs a unit")
    profile.write_text(PROFILE.replace("memory: 32GiB", "memory: '34359738368'", 1))
    one_line_error(run_inproc("profile", "show", profile), "gpus.memory", "needs a unit")


def test_unknown_tier_in_a_plan_file_is_one_line(tmp_path):
    plan = tmp_path / "plan.json"
    model = FIXTURES / "models" / "tiny-v4"
    assert run_inproc("plan", "--profile", "rtx5090", "--model", model, "--context", "256", "--out", plan,
                      "--json").code == 0
    data = json.loads(plan.read_text())
    data["groups"][0]["tier"] = "tpu:0"
    plan.write_text(json.dumps(data))
    one_line_error(run_inproc("run", model, "--plan", plan, "--profile", "rtx5090", "--device-map", "gpu:0=cpu"),
                   "groups[0].tier", "tpu:0")


def test_deeply_nested_json_is_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(run_inproc("inspect", config), str(config), "nested too deeply")


# ---- no hang ----------------------------------------------------------------------------------------------

BOMB = "[" + ", ".join(
    [f"&a0 [{', '.join(['lol'] * 9)}]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["*a9"]) + "]"


@pytest.mark.parametrize("kind", ["profile", "gate"])
def test_alias_bomb_nested_in_a_valid_file_ends_in_under_5s(tmp_path, kind):
    """9**10 strings if expanded; the old error path formatted the whole value (a hang, then out of memory)."""
    if kind == "profile":
        path = tmp_path / "p.yaml"
        path.write_text(PROFILE.replace("bandwidth: 1792GB/s", f"bandwidth: {BOMB}", 1))
        args = ("profile", "show", path)
    else:
        path = tmp_path / "gate.yaml"
        path.write_text(f"kld_mean_max: {BOMB}\n")
        args = ("validate", "--golden", GOLDEN_QWEN, "--candidate", QWEN, "--gate", path)
    started = time.perf_counter()
    result = run_cli(*args, timeout=5)
    assert time.perf_counter() - started < 5
    one_line_error(result, str(path), "alias")


# ---- one writer per OUT; failures leave nothing behind ---------------------------------------------------

def test_second_run_into_a_locked_out_is_refused_naming_the_holder(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(run_inproc("quantize", src, out, "--recipe", "fp8"), str(out),
                              f"pid {holder.pid}", "another mv4deploy run")
        assert [p.name for p in out.iterdir()] == [LOCK], line
    finally:
        holder.kill()
        holder.wait()
    assert run_inproc("quantize", src, out, "--recipe", "fp8").code == 0
    assert not (out / LOCK).exists()


def test_two_quantize_runs_into_one_out_one_wins(tmp_path):
    src = make_checkpoint(tmp_path / "src", scaled_v4_config(hidden=256, experts=8, inter=128), shards=2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "mv4deploy", "quantize", str(src), str(out), "--recipe",
                               "fp8", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results   # the loser either saw the lock, or found the finished run
    for code, err in results:
        if code == 2:
            assert "another mv4deploy run" in err and str(out) in err, err
    assert run_cli("verify", out).code == 0


def test_a_failed_run_leaves_no_partial_marker_and_no_tmp(tmp_path):
    def nan(name, t):
        import torch
        return torch.full_like(t, float("nan")) if name == "layers.2.ffn.experts.0.w1.weight" else t
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=1, edit=nan)
    out = tmp_path / "out"
    one_line_error(run_inproc("quantize", src, out, "--recipe", "fp8"), "NaN")
    assert not out.exists()
