"""Bad inputs to ``mv4deploy quantize``: exit 2, one line on stderr naming the file and the tensor,
and nothing under OUT's final names (at most the hidden staging folder of an interrupted run)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from quant_synth import make_checkpoint, preset_config

STAGING = ".mv4deploy-partial"


@pytest.fixture(scope="module")
def good_src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("good") / "src", preset_config("tiny-deepseek-v4"), shards=2)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _shard_of(folder: Path, tensor: str) -> Path:
    return folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _assert_refused(result, out: Path, *needles: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    final = [p.name for p in out.iterdir() if p.name != STAGING] if out.exists() else []
    assert final == [], f"left under OUT's final names: {final}"


def test_truncated_shard(good_src, tmp_path):
    src = _copy(good_src, tmp_path / "src")
    shard = _shard_of(src, "layers.3.ffn.experts.0.w1.weight")
    shard.write_bytes(shard.read_bytes()[:-100])
    _assert_refused(run_cli("quantize", src, tmp_path / "out", "--recipe", "fp8"), tmp_path / "out",
                    shard.name, "truncated")


def test_header_that_lies_about_a_shape(good_src, tmp_path):
    src = _copy(good_src, tmp_path / "src")
    shard = _shard_of(src, "head.weight")
    _rewrite_header(shard, lambda h: h["head.weight"].update(shape=[512, 129]))
    _assert_refused(run_cli("quantize", src, tmp_path / "out", "--recipe", "fp8"), tmp_path / "out",
                    "head.weight", "needs")


def test_shape_that_contradicts_the_config(tmp_path):
    def wider(name, t):
        return torch.zeros(64, 129, dtype=t.dtype) if name == "layers.1.attn.wq_a.weight" else t
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=2, edit=wider)
    _assert_refused(run_cli("quantize", src, tmp_path / "out", "--recipe", "fp8"), tmp_path / "out",
                    "layers.1.attn.wq_a.weight", "contradicts config.json", "[64, 128]")


def _with_nan(name, t):
    if name == "layers.2.ffn.experts.5.w3.weight":
        t = t.clone()
        t[3, 7] = float("nan")
    return t


def test_nan_weights_are_refused_then_allowed(tmp_path):
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=3, edit=_with_nan)
    out = tmp_path / "out"
    _assert_refused(run_cli("quantize", src, out, "--recipe", "int4-experts"), out,
                    "layers.2.ffn.experts.5.w3.weight", "NaN", "--allow-nonfinite")
    result = run_cli("quantize", src, tmp_path / "out2", "--recipe", "int4-experts", "--allow-nonfinite")
    assert result.code == 0, result.stderr
    from _support.readback import load_logical
    w = load_logical(tmp_path / "out2", names={"layers.2.ffn.experts.5.w3.weight"})["layers.2.ffn.experts.5.w3.weight"]
    assert w[3, 7] == 0 and bool(torch.isfinite(w).all())


def test_nan_in_a_weight_copied_unchanged_is_refused(tmp_path):
    def nan_norm(name, t):
        return torch.full_like(t, float("nan")) if name == "layers.0.attn_norm.weight" else t
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=2, edit=nan_norm)
    _assert_refused(run_cli("quantize", src, tmp_path / "out", "--recipe", "fp8"), tmp_path / "out",
                    "layers.0.attn_norm.weight", "NaN")


def test_index_naming_a_file_outside_the_folder(good_src, tmp_path):
    src = _copy(good_src, tmp_path / "src")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["head.weight"] = "../elsewhere/model-00001-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_refused(run_cli("quantize", src, tmp_path / "out", "--recipe", "fp8"), tmp_path / "out",
                    "head.weight", "outside the checkpoint folder")


@pytest.mark.parametrize("args,needle", [
    (["--recipe", "fp3"], "not a preset or a recipe file"),
    (["--recipe", "fp8", "--plan", "plan.json"], "exactly one of"),
    ([], "exactly one of"),
    (["--recipe", "fp8", "--device", "tpu"], "--device: 'tpu': must be one of auto, cpu, cuda"),
])
def test_bad_options(good_src, tmp_path, args, needle):
    _assert_refused(run_cli("quantize", good_src, tmp_path / "out", *args), tmp_path / "out", needle)


def test_out_inside_src_and_foreign_out(good_src, tmp_path):
    result = run_cli("quantize", good_src, good_src / "sub", "--recipe", "fp8")
    assert result.code == 2 and "never modified" in result.stderr and not (good_src / "sub").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run_cli("quantize", good_src, foreign, "--recipe", "fp8")
    assert result.code == 2 and "not empty" in result.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_resuming_with_another_recipe_is_refused(good_src, tmp_path):
    from mv4deploy.quant.job import plan_job
    from mv4deploy.quant.pipeline import prepare_out
    from mv4deploy.quant.recipe import get_recipe
    prepare_out(plan_job(good_src, tmp_path / "out", get_recipe("fp8")))   # an interrupted fp8 run
    _assert_refused(run_cli("quantize", good_src, tmp_path / "out", "--recipe", "nf4"), tmp_path / "out",
                    "different recipe")


def test_bad_recipe_file(good_src, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rules": [{"match": "experts", "format": "int4-g128"}]}))
    _assert_refused(run_cli("quantize", good_src, tmp_path / "out", "--recipe", tmp_path / "r.json"),
                    tmp_path / "out", "catch-all")
