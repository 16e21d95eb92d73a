"""Every user mistake gives exit 2, one line on stderr naming what is wrong, and nothing on stdout."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import PRESETS
from synthetic import write_checkpoint
from mv4deploy.model.source import resolve_model

V4 = json.loads((PRESETS / "tiny-deepseek-v4.json").read_text())
QWEN = json.loads((PRESETS / "tiny-qwen2.json").read_text())
DSV3 = json.loads((PRESETS / "tiny-deepseek-v3.json").read_text())
V41 = json.loads((PRESETS / "tiny-deepseek-v4.1.json").read_text())
PROFILE = (PRESETS.parents[2] / "profiles" / "rtx5090.yaml").read_text()


def _with(base, **changes):
    cfg = json.loads(json.dumps(base))
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key)
        else:
            cfg[key] = value
    return cfg


_DROP = object()

# (case id, config dict or raw text, words the message must contain)
CONFIGS = [
    ("truncated-json", '{"model_type": "deepseek_v4", "hidden_size": 12', "malformed JSON"),
    ("json-array", "[1, 2, 3]", "JSON object"),
    ("missing-hidden-size", _with(V4, hidden_size=_DROP), "hidden_size"),
    ("hidden-size-string", _with(V4, hidden_size="4096"), "hidden_size"),
    ("hidden-size-negative", _with(V4, hidden_size=-128), "hidden_size"),
    ("hidden-size-absurd", _with(V4, hidden_size=10**12), "hidden_size"),
    ("zero-layers", _with(V4, num_hidden_layers=0), "num_hidden_layers"),
    ("unknown-architecture", _with(V4, model_type="gpt2", architectures=["GPT2LMHeadModel"]), "gpt2"),
    ("top-k-over-experts", _with(V4, num_experts_per_tok=64), "num_experts_per_tok"),
    ("ratios-wrong-length", _with(V4, compress_ratios=[0, 4]), "compress_ratios"),
    ("ratio-unknown", _with(V4, compress_ratios=[0, 3, 128, 4, 0]), "compress_ratios"),
    ("layer-types-contradict", _with(V4, layer_types=["sliding_attention"] * 4), "layer_types"),
    ("hash-after-moe", _with(V4, num_hash_layers=_DROP, mlp_layer_types=["moe", "hash_moe", "moe", "moe"]),
     "mlp_layer_types"),
    ("hash-count-contradicts", _with(V4, mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"]), "num_hash_layers"),
    ("rotary-contradicts", _with(V4, partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("rotary-out-of-range", _with(V4, qk_rope_head_dim=_DROP, partial_rotary_factor=2.0), "partial_rotary_factor"),
    ("quant-method-unknown", _with(V4, quantization_config={"quant_method": "awq"}), "quant_method"),
    ("block-size-unknown", _with(V4, quantization_config={"quant_method": "fp8", "weight_block_size": [64, 64]}),
     "weight_block_size"),
    ("expert-dtype-unknown", _with(V4, expert_dtype="fp2"), "expert_dtype"),
    ("o-groups-not-dividing", _with(V4, o_groups=3), "o_groups"),
    ("tie-embeddings-not-bool", _with(V4, tie_word_embeddings="yes"), "tie_word_embeddings"),
    ("qwen-kv-heads-not-dividing", _with(QWEN, num_key_value_heads=3), "num_key_value_heads"),
    ("v3-kv-heads-mismatch", _with(DSV3, num_key_value_heads=1), "num_key_value_heads"),
    ("v3-first-dense-over-layers", _with(DSV3, first_k_dense_replace=99), "first_k_dense_replace"),
    ("text-config-not-object", _with(V41, text_config=[1]), "text_config"),
    ("engram-layer-out-of-range", _with(V41, text_config={**V41["text_config"], "engram_layer_ids": [1, 99]}),
     "engram_layer_ids"),
    ("engram-rows-wrong-length", _with(V41, text_config={**V41["text_config"], "engram_num_embeddings": [5]}),
     "engram_num_embeddings"),
]


@pytest.mark.parametrize("case,config,words", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config(tmp_path, cli, case, config, words):
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    _assert_bad_input(cli("inspect", path), words, str(path))


def _assert_bad_input(result, words, where=None):
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert words in lines[0], lines[0]
    if where:
        assert where in lines[0]


@pytest.fixture
def checkpoint(tmp_path):
    spec = resolve_model("tiny-deepseek-v4").inventory
    return write_checkpoint(spec, tmp_path / "ckpt", V4, shards=3)


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def test_index_names_a_file_outside_the_folder(checkpoint, cli):
    index = _index(checkpoint)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    (checkpoint.parent / "outside.safetensors").write_bytes(b"x" * 16)
    _assert_bad_input(cli("inspect", checkpoint), "outside the checkpoint folder")


def test_index_names_a_missing_file(checkpoint, cli):
    index = _index(checkpoint)
    index["weight_map"][next(iter(index["weight_map"]))] = "model-00009-of-00009.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_bad_input(cli("inspect", checkpoint), "does not exist")


def test_index_not_json(checkpoint, cli):
    (checkpoint / "model.safetensors.index.json").write_text("{not json")
    _assert_bad_input(cli("inspect", checkpoint), "not valid JSON")


def test_folder_without_config(checkpoint, cli):
    (checkpoint / "config.json").unlink()
    _assert_bad_input(cli("inspect", checkpoint), "config.json")


SHARD = "model-00002-of-00003.safetensors"


def _corrupt(folder, mutate):
    path = folder / SHARD
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    new = mutate(raw, header, n)
    path.write_bytes(new)


def test_truncated_header(checkpoint, cli):
    _corrupt(checkpoint, lambda raw, header, n: raw[: 8 + n // 2])
    _assert_bad_input(cli("inspect", checkpoint), "header length", SHARD)


def test_file_shorter_than_eight_bytes(checkpoint, cli):
    _corrupt(checkpoint, lambda raw, header, n: raw[:5])
    _assert_bad_input(cli("inspect", checkpoint), "too short", SHARD)


def test_truncated_payload(checkpoint, cli):
    _corrupt(checkpoint, lambda raw, header, n: raw[:-100])
    _assert_bad_input(cli("inspect", checkpoint), "truncated", SHARD)


def _rewrite_header(raw, header, n):
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + raw[8 + n:]


def test_header_not_json(checkpoint, cli):
    _corrupt(checkpoint, lambda raw, header, n: raw[:8] + b"{" * n + raw[8 + n:])
    _assert_bad_input(cli("inspect", checkpoint), "not valid JSON", SHARD)


def test_lying_header_span(checkpoint, cli):
    def lie(raw, header, n):
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
        return _rewrite_header(raw, header, n)
    _corrupt(checkpoint, lie)
    _assert_bad_input(cli("inspect", checkpoint), "data_offsets", SHARD)


def test_unknown_dtype(checkpoint, cli):
    def unknown(raw, header, n):
        name = next(k for k in header if k != "__metadata__")
        header[name]["dtype"] = "F128"
        return _rewrite_header(raw, header, n)
    _corrupt(checkpoint, unknown)
    _assert_bad_input(cli("inspect", checkpoint), "unknown dtype", SHARD)


def test_overlapping_tensors(checkpoint, cli):
    def overlap(raw, header, n):
        names = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
        a, b = header[names[0][1]], header[names[1][1]]
        if a["data_offsets"][1] - a["data_offsets"][0] >= 2 and b["dtype"] == a["dtype"]:
            b["data_offsets"] = [b["data_offsets"][0] - 1, b["data_offsets"][1] - 1]
        else:
            b["data_offsets"] = list(a["data_offsets"])
            b["dtype"], b["shape"] = a["dtype"], a["shape"]
        return _rewrite_header(raw, header, n)
    _corrupt(checkpoint, overlap)
    _assert_bad_input(cli("inspect", checkpoint), "overlaps", SHARD)


PROFILES = [
    ("malformed-yaml", "name: x\ngpus: [unclosed\n", "malformed YAML"),
    ("missing-memory", PROFILE.replace("  memory: 32GiB", "  memory_size: 32GiB"), "gpus.memory"),
    ("negative-memory", PROFILE.replace("memory: 32GiB", "memory: -32GiB"), "gpus.memory"),
    ("unknown-format", PROFILE.replace("[bf16, fp16, fp8, fp4, int8]", "[bf16, fp3]"), "fp3"),
    ("typo-field", PROFILE.replace("  bandwidth: 1792GB/s", "  bandwith: 1792GB/s"), "'bandwith': a typo?"),
    ("fraction-over-one", PROFILE.replace("usable_fraction: 0.94", "usable_fraction: 1.5"), "usable_fraction"),
    ("two-gpus-no-link", PROFILE.replace("count: 1", "count: 2"), "interconnect"),
    ("bad-unit", PROFILE.replace("bandwidth: 89.6GB/s", "bandwidth: 89.6parsecs"), "host.bandwidth"),
    ("compute-unknown-format", PROFILE.replace("    fp16: 209.5TFLOPS", "    tf64: 1TFLOPS"), "tf64"),
    ("isa-typo", PROFILE.replace("avx512_bf16]", "avx512bf16]"), "host.isa"),
]


@pytest.mark.parametrize("case,text,words", PROFILES, ids=[p[0] for p in PROFILES])
def test_bad_profile(tmp_path, cli, case, text, words):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    _assert_bad_input(cli("profile", "show", path), words, str(path))


def test_unknown_profile_name(cli):
    _assert_bad_input(cli("profile", "show", "rtx9090"), "rtx9090")


def test_unknown_preset(cli):
    _assert_bad_input(cli("inspect", "deepseek-v9"), "deepseek-v9")


def test_missing_config_file(tmp_path, cli):
    _assert_bad_input(cli("inspect", tmp_path / "nope" / "config.json"), "not found")


def test_unknown_option(cli):
    _assert_bad_input(cli("inspect", "--frobnicate"), "--frobnicate")


def test_user_text_is_not_read_as_markup(cli):
    result = cli("profile", "show", "[/foo].yaml")
    _assert_bad_input(result, "[/foo].yaml")


def test_output_into_a_missing_folder(cli, tmp_path):
    _assert_bad_input(cli("profile", "detect", "--out", tmp_path / "no" / "me.yaml"), "folder does not exist")


def test_generate_from_a_missing_folder(cli, tmp_path):
    missing = tmp_path / "nonexistent"
    _assert_bad_input(cli("generate", missing, "--prompt", "hi"), "not a folder", str(missing))


@pytest.mark.parametrize("command", [["validate", "--reference", "x", "--eval", "y"],
                                     ["generate", "x", "--prompt", "hi"], ["quantize", "x", "y", "--recipe", "fp8"]])
def test_one_device_rule_for_every_command(cli, command):
    _assert_bad_input(cli(*command, "--device", "gpu"), "--device: 'gpu': must be one of auto, cpu, cuda")
