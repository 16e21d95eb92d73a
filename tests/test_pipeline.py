"""The quantize pipeline on synthetic checkpoints with real V4 / V4.1 tensor names: every preset
produces a checkpoint that verifies, describes itself (inspect agrees with its headers) and holds
each weight within its format's bound; native weights pass through byte for byte."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import run_cli
from mv4deploy.model.source import resolve_model
from mv4deploy.formats import get_format
from mv4deploy.quant.manifest import MANIFEST, verify_output
from _support.readback import load_logical
from mv4deploy.quant.recipe import PRESETS, get_recipe
from mv4deploy.quant.run import quantize_checkpoint
from quant_synth import make_checkpoint, preset_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bf16_src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("v4") / "src", preset_config("tiny-deepseek-v4"), shards=3)


@pytest.fixture(scope="module")
def native_src(tmp_path_factory):
    """tiny-v4 as DeepSeek ships it: FP8 128x128 UE8M0 linears, MXFP4 routed experts."""
    cfg = preset_config("tiny-deepseek-v4", full_precision=False)
    return make_checkpoint(tmp_path_factory.mktemp("v4nat") / "src", cfg, shards=2, seed=1)


@pytest.fixture(scope="module")
def v41_src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("v41") / "src", preset_config("tiny-deepseek-v4.1"), shards=2)


def _check_within_bounds(src, out, manifest):
    ref, got = load_logical(src), load_logical(out)
    assert ref.keys() == got.keys()
    for name, w in ref.items():
        fmt = manifest["weights"][name]["format"]
        if not w.is_floating_point():
            assert torch.equal(w, got[name]), name
            continue
        bound = get_format(fmt).error_bound(w.to(torch.bfloat16) if w.dtype == torch.bfloat16 else w)
        assert bool(((got[name] - w).abs() <= bound).all()), f"{name} ({fmt})"


@pytest.mark.parametrize("recipe", sorted(PRESETS))
def test_every_preset_verifies_and_describes_itself(bf16_src, tmp_path, recipe):
    out = tmp_path / "out"
    summary = quantize_checkpoint(bf16_src, out, get_recipe(recipe))
    assert summary["shards"] == 3 and not summary["already_complete"]
    report = verify_output(out)
    assert report["ok"], report["problems"]
    resolved = resolve_model(out)       # the inventory from config.json (rules) vs the shard headers
    assert resolved.mismatches == ()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["recipe"]["name"] == recipe
    assert manifest["formats"] == summary["formats"]
    _check_within_bounds(bf16_src, out, manifest)
    assert not (out / ".mv4deploy-partial").exists()
    assert (out / "tokenizer_config.json").read_text() == (bf16_src / "tokenizer_config.json").read_text()


def test_presets_keep_norms_routers_and_mhc_in_high_precision(bf16_src, tmp_path):
    quantize_checkpoint(bf16_src, tmp_path / "out", get_recipe("fp8"))
    formats = {k: v["format"] for k, v in json.loads((tmp_path / "out" / MANIFEST).read_text())["weights"].items()}
    assert formats["layers.1.attn_norm.weight"] == "bf16"
    assert formats["layers.1.ffn.gate.bias"] == "f32"
    assert formats["layers.1.ffn.gate.weight"] == "bf16"
    assert formats["layers.1.hc_attn_fn"] == "f32"
    assert formats["layers.1.attn.compressor.wkv.weight"] == "bf16"   # shipped BF16, stays BF16
    assert formats["layers.1.attn.wq_a.weight"] == "fp8-e4m3-block128-ue8m0"
    assert formats["layers.1.ffn.experts.7.w2.weight"] == "fp8-e4m3-block128-ue8m0"


def test_native_source_passes_through_and_requantizes(native_src, tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(native_src, out, get_recipe("int4-experts"))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["formats"]["int4-g128"] == 120 and "mxfp4" not in manifest["formats"]
    # FP8 linears stay FP8: the very same bytes as the source.
    name = "layers.2.attn.wq_b"
    src_file = json.loads((native_src / "model.safetensors.index.json").read_text())["weight_map"][f"{name}.weight"]
    with safe_open(str(native_src / src_file), "pt") as a, safe_open(str(out / manifest["weights"][f"{name}.weight"]["shard"]), "pt") as b:
        for key in (f"{name}.weight", f"{name}.scale"):
            assert torch.equal(a.get_tensor(key).view(torch.uint8), b.get_tensor(key).view(torch.uint8))
    _check_within_bounds(native_src, out, manifest)


def test_native_recipe_on_native_source_is_a_byte_copy_of_every_tensor(native_src, tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(native_src, out, get_recipe("native"))
    ref, got = {}, {}
    for folder, into in ((native_src, ref), (out, got)):
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                into.update({k: h.get_tensor(k).view(-1).view(torch.uint8) for k in h.keys()})
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_engram_tables_to_fp8_rows(v41_src, tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(v41_src, out, get_recipe("fp8"))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["weights"]["layers.1.engram.embed.weight"]["format"] == "fp8-rows-ue8m0"
    assert manifest["weights"]["layers.1.engram.q_weight"]["format"] == "bf16"       # gating stays
    assert manifest["weights"]["layers.1.attn.wq_a.weight"]["format"] == "fp8-e4m3-block32-ue8m0"
    assert resolve_model(out).mismatches == ()
    _check_within_bounds(v41_src, out, manifest)


def test_workers_give_identical_bytes(bf16_src, tmp_path):
    from mv4deploy.core.fileio import sha256_file
    quantize_checkpoint(bf16_src, tmp_path / "one", get_recipe("int4-experts"), workers=1)
    quantize_checkpoint(bf16_src, tmp_path / "two", get_recipe("int4-experts"), workers=3)
    for f in sorted((tmp_path / "one").iterdir()):
        assert sha256_file(f) == sha256_file(tmp_path / "two" / f.name), f.name


def test_rerun_of_a_finished_output_is_a_verified_no_op(bf16_src, tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(bf16_src, out, get_recipe("fp8"))
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    again = quantize_checkpoint(bf16_src, out, get_recipe("fp8"))
    assert again["already_complete"] and {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before


def test_resume_redoes_a_staged_shard_whose_bytes_changed(bf16_src, tmp_path):
    from mv4deploy.quant.job import plan_job
    from mv4deploy.quant.pipeline import Options, prepare_out, run_shards
    out = tmp_path / "out"
    job = plan_job(bf16_src, out, get_recipe("fp8"))
    journal = prepare_out(job)
    run_shards(job, journal, Options())            # all shards staged, not finalized: an interrupted run
    staged = out / ".mv4deploy-partial" / job.shards[1].file
    data = bytearray(staged.read_bytes())
    data[-1] ^= 0xFF
    staged.write_bytes(bytes(data))
    summary = quantize_checkpoint(bf16_src, out, get_recipe("fp8"))
    assert summary["resumed_shards"] == 3
    assert verify_output(out)["ok"]


def test_resume_removes_temporary_files_a_killed_run_left(bf16_src, tmp_path):
    from mv4deploy.quant.job import plan_job
    from mv4deploy.quant.pipeline import Options, prepare_out, run_shards
    out = tmp_path / "out"
    job = plan_job(bf16_src, out, get_recipe("fp8"))
    run_shards(job, prepare_out(job), Options())
    stale = out / ".quantization_manifest.json.4242.tmp"   # killed while writing the manifest
    stale.write_text('{"half": ')
    quantize_checkpoint(bf16_src, out, get_recipe("fp8"))
    assert not stale.exists() and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert verify_output(out)["ok"]


def test_verify_reports_a_corrupted_shard(bf16_src, tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(bf16_src, out, get_recipe("fp8"))
    shard = sorted(out.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    result = run_cli("verify", out, "--json")
    assert result.code == 1
    assert not result.json()["ok"] and "sha256" in result.json()["problems"][0]


def test_plan_out_feeds_quantize_plan(bf16_src, tmp_path):
    """`plan --out` -> `quantize --plan` end to end: the INT4 policy on the BF16 tiny-v4 checkpoint, then a
    plan of the quantized output holds, group by group, the bytes the first plan placed."""
    plan_path = tmp_path / "plan.json"
    planned = run_cli("plan", "--profile", "rtx5090", "--model", bf16_src, "--policy", "int4", "--context", "4096",
                      "--out", plan_path, "--json")
    assert planned.code == 0, planned.stderr
    result = run_cli("quantize", bf16_src, tmp_path / "out", "--plan", plan_path, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["recipe"] == "plan:plan.json"
    weights = json.loads((tmp_path / "out" / MANIFEST).read_text())["weights"]
    assert weights["layers.2.ffn.experts.0.w1.weight"]["format"] == "int4-g128"     # routed_experts
    assert weights["layers.1.attn.wo_a.weight"]["format"] == "int4-g128"            # attention
    assert weights["head.weight"]["format"] == "int4-g128"                           # head
    assert weights["embed.weight"]["format"] == "bf16"                               # not in the INT4 policy
    assert weights["layers.1.attn.attn_sink"]["format"] == "f32"                     # 1-D: kept
    assert weights["layers.1.attn.indexer.compressor.ape"]["format"] == "f32"        # F32 matrix: kept
    assert weights["mtp.0.ffn.experts.0.w1.weight"]["format"] == "bf16"             # MTP: not in the plan
    again = run_cli("plan", "--profile", "rtx5090", "--model", tmp_path / "out", "--policy", "native",
                    "--context", "4096", "--json")
    assert again.code == 0, again.stderr

    def bytes_by_group(plan):
        totals: dict[str, int] = {}
        for row in plan["groups"]:
            totals[row["group"]] = totals.get(row["group"], 0) + row["bytes"]
        return totals
    assert bytes_by_group(again.json()) == bytes_by_group(planned.json())
