"""Facts that used to be restated in several modules and now live in one place each: the tokenizer
loader, our quant_method, the native-layout rule, file hashing, the GQA cache entry."""

from __future__ import annotations

import hashlib

import pytest

from conftest import PRESETS
from mv4deploy.core.errors import InputError
from _support.footprint import footprint
from mv4deploy.export.targets import load_target
from mv4deploy.core.fileio import sha256_file
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.quant_config import OURS_KEY, QUANT_METHOD, quantized_by_us
from mv4deploy.model.kv import CacheFormat, kv_layout
from mv4deploy.model.tokenizer import load_tokenizer
from mv4deploy.runtime.name_map import native_layout


def test_load_tokenizer_refuses_a_missing_folder_in_one_line(tmp_path):
    with pytest.raises(InputError) as err:
        load_tokenizer(tmp_path / "nonexistent")
    assert str(tmp_path / "nonexistent") in err.value.one_line() and "not a folder" in err.value.one_line()


def test_load_tokenizer_refuses_a_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no tokenizer files"):
        load_tokenizer(tmp_path, why="Engram hashing")


@pytest.mark.parametrize("content", ["{not json", '{"model": 5}'])      # the second: tokenizers' bare Exception
def test_load_tokenizer_turns_a_broken_tokenizer_into_bad_input(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(InputError) as err:
        load_tokenizer(tmp_path, why="--calib")
    line = err.value.one_line()
    assert line.startswith(f"{tmp_path}: tokenizer: ") and "--calib needs it" in line and "\n" not in line


def test_our_key_marks_our_outputs_only():
    """Our description lives beside the ecosystem's quantization_config, never in it."""
    assert QUANT_METHOD == "mv4deploy" and OURS_KEY == "mv4deploy_quantization"
    assert quantized_by_us({"quantization_config": {"quant_method": "fp8"}, OURS_KEY: {"rules": []}})
    assert not quantized_by_us({"quantization_config": {"quant_method": "fp8"}})
    assert not quantized_by_us({"quantization_config": {"quant_method": QUANT_METHOD}}) and not quantized_by_us({})


def test_native_layout_is_the_absence_of_the_transformers_prefix():
    assert native_layout(["embed.weight", "layers.0.attn.wq_a.weight"])
    assert not native_layout(["embed.weight", "model.layers.0.self_attn.q_a_proj.weight"])
    assert not native_layout([])            # no tensors: not a native checkpoint


def test_sha256_file_streams_to_the_same_digest(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 41             # 10,496 bytes: 1,500 blocks of 7 plus a partial one
    path.write_bytes(data)
    assert sha256_file(path, block_bytes=7) == sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("target,fmt", [("cpu-fp32", CacheFormat.F32)])
def test_export_kv_footprint_is_the_planner_gqa_entry(target, fmt):
    """tiny-qwen2: 2 (K, V) x kv_heads x head_dim x 4 B per layer, the same figure kv_layout gives."""
    spec = read_config(load_json(PRESETS / "tiny-qwen2.json"), "tiny-qwen2.json")
    expected = 2 * spec.num_key_value_heads * spec.head_dim * 4 * spec.num_hidden_layers
    assert footprint(spec, load_target(target), 16).kv_bytes_per_token == expected
    assert kv_layout(spec, fmt).bytes_per_token == expected
