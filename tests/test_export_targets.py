"""Export targets as data, the export weight formats and the footprint arithmetic (fast: no export runs).

The byte counts are worked by hand here; tests/test_export.py checks the same formulas against the
initializers of real exports.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import PRESETS
from mv4deploy.core.errors import InputError
from _support.footprint import export_items, footprint
from mv4deploy.export.targets import Builder, list_targets, load_target, parse_target, targets_dir
from mv4deploy.model.config import read_config
from mv4deploy.formats.onnx_layouts import get_layout, layout_names

REQUIRED = {"cpu-int4", "cpu-fp32", "onnx-int4", "snapdragon-qnn"}


def test_shipped_targets_parse_and_name_known_formats():
    assert REQUIRED <= set(list_targets())
    for name in list_targets():
        t = load_target(name)
        assert t.name == name
        assert t.weights.format in layout_names()
        assert t.tolerance.chunk_tokens <= t.context_tokens
    qnn = load_target("snapdragon-qnn")
    assert (qnn.shapes, qnn.builder, qnn.activations) == ("static", Builder.QNN_STATIC, "uint16")
    assert qnn.step_tokens and qnn.kv_cache.bytes_per_element == 2


def _raw(name: str) -> dict:
    return yaml.safe_load((targets_dir() / f"{name}.yaml").read_text())


@pytest.mark.parametrize("change, field", [
    ({"builder": "optimum"}, "builder"),
    ({"colour": "blue"}, "colour"),
    ({"context_tokens": -5}, "context_tokens"),
    ({"weights": {"precision": "int4", "format": "int5-magic"}}, "weights.format"),
    ({"weights": {"precision": "int4", "format": "mnb-int4-b32", "block_size": 48}}, "weights.block_size"),
    ({"validation": {**_raw("cpu-int4")["validation"], "top1_min": 1.5}}, "validation.top1_min"),
    ({"validation": {**_raw("cpu-int4")["validation"], "chunk_tokens": 999999}}, "validation.chunk_tokens"),
    ({"shapes": "static"}, "step_tokens"),
])
def test_bad_target_fields_name_the_field(change, field):
    data = {**_raw("cpu-int4"), **change}
    with pytest.raises(InputError) as err:
        parse_target(data, "t.yaml")
    assert field in err.value.one_line() and "\n" not in err.value.one_line()


def test_unknown_target_lists_known_ones():
    with pytest.raises(InputError) as err:
        load_target("gpu-fp8")
    assert "cpu-int4" in str(err.value) and "snapdragon-qnn" in str(err.value)


def test_matmulnbits_layout_by_hand():
    # [N=256, K=128], block 32: 4 blocks per row; B 256*4*16 = 16384 B, scales 256*4*4 = 4096 B -> 5 bits/weight
    sym = get_layout("mnb-int4-b32")
    assert [t.shape for t in sym.stored("w.weight", (256, 128))] == [(256, 4, 16), (256, 4)]
    assert sym.nbytes((256, 128)) == 16384 + 4096
    # block 128 asymmetric, K=300: 3 blocks (last padded); B 10*3*64, scales 10*3*4, zero points 10*ceil(3/2)
    zp = get_layout("mnb-int4-b128-zp")
    assert [t.shape for t in zp.stored("w.weight", (10, 300))] == [(10, 3, 64), (10, 3), (10, 2)]
    assert zp.nbytes((10, 300)) == 1920 + 120 + 20


def test_qdq_per_channel_layout_by_hand():
    # uint8: payload 64*128, F32 scale and uint8 zero point per row: 8192 + 256 + 64
    assert get_layout("qdq-u8-channel").nbytes((64, 128)) == 8192 + 256 + 64
    # int4: payload packed two per byte, zero points packed too: 4096 + 256 + 32
    assert get_layout("qdq-i4-channel").nbytes((64, 128)) == 4096 + 256 + 32


def _spec(preset: str):
    return read_config(json.loads((PRESETS / f"{preset}.json").read_text()), preset)


def test_footprint_of_tiny_qwen2_cpu_int4_by_hand():
    # tiny-qwen2 preset: V 512, H 128, 2 layers, I 256, 4 heads x 32, 2 KV heads, Qwen2 q/k/v biases.
    spec, target = _spec("tiny-qwen2"), load_target("cpu-int4")
    items = export_items(spec, target)
    mnb = lambda n, k: n * (k // 32) * 16 + n * (k // 32) * 4     # noqa: E731
    per_layer = (mnb(256, 128) + 256 * 4                          # qkv (128 + 64 + 64 rows) + its F32 bias
                 + mnb(128, 128) + 2 * mnb(256, 128) + mnb(128, 256) + 2 * 128 * 4)  # o, gate, up, down, 2 norms
    expected = mnb(512, 128) + 2 * per_layer + 128 * 4 + mnb(512, 128) + 2 * 2048 * 16 * 4  # embed, head, rope
    assert sum(i.nbytes for i in items) == expected
    fp = footprint(spec, target, context_tokens=1000)
    assert fp.kv_bytes_per_token == 2 * 2 * 2 * 32 * 4                  # K and V, 2 layers, 2 heads x 32, fp32
    embed, rope = mnb(512, 128), 2 * 2048 * 16 * 4
    # a decode step reads one row of the embedding and of each rope table (16 x 4 B), everything else once
    assert fp.read_bytes_per_token == expected - embed + embed // 512 - rope + 2 * 64 + 1000 * fp.kv_bytes_per_token


def test_footprint_counts_each_builder_layout():
    spec = _spec("deepseek-r1-distill-qwen-7b")
    sizes = {name: footprint(spec, load_target(name)).weight_bytes for name in REQUIRED}
    # int4 with an int4 embedding < int4 with an fp32 embedding < int8 QDQ < fp32
    assert sizes["cpu-int4"] < sizes["onnx-int4"] < sizes["snapdragon-qnn"] < sizes["cpu-fp32"]
    params = 7_615_616_512                     # Qwen2.5-7B's published parameter count
    rope = 2 * 131072 * 64 * 4
    assert sizes["cpu-fp32"] == 4 * params + rope
