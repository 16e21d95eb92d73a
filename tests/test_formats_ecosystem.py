"""Each format's names outside mv4deploy (``QuantFormat.ecosystem``), held against the libraries that define
them (compressed-tensors, gguf, onnx) and against the configs DeepSeek released."""

from __future__ import annotations

import json

import pytest

from mv4deploy.formats import FORMATS, get_format
from mv4deploy.formats.onnx_layouts import LAYOUTS
from mv4deploy.model.source import PRESETS_DIR, resolve_model

EVERY = {**FORMATS, **LAYOUTS}


@pytest.mark.parametrize("name", sorted(EVERY))
def test_the_payload_dtype_is_what_the_format_stores(name):
    fmt = EVERY[name]
    assert fmt.ecosystem.safetensors == fmt.stored("w.weight", (256, 256))[0].dtype


@pytest.mark.parametrize("name", sorted(EVERY))
def test_names_exist_in_the_libraries_that_define_them(name):
    import onnx
    from compressed_tensors import CompressionFormat
    from gguf import GGMLQuantizationType

    eco = EVERY[name].ecosystem
    if eco.compressed_tensors is not None:
        assert eco.compressed_tensors in {f.value for f in CompressionFormat}
    if eco.gguf is not None:
        assert eco.gguf in GGMLQuantizationType.__members__
    if eco.onnx is not None:
        tensor_types = set(onnx.TensorProto.DataType.keys())
        operators = {s.name for s in onnx.defs.get_all_schemas_with_history()}
        assert eco.onnx in tensor_types or eco.onnx in operators or eco.onnx == "MatMulNBits"  # a contrib op


def test_matmulnbits_is_onnxruntimes_contrib_operator():
    from onnxruntime.capi import onnxruntime_pybind11_state as ort
    assert "MatMulNBits" in {s.name for s in ort.get_all_operator_schema() if s.domain == "com.microsoft"}


@pytest.mark.parametrize("preset", ["deepseek-v3", "deepseek-v3.2", "deepseek-v4-flash", "deepseek-v4-pro",
                                    "deepseek-v4.1-flash"])
def test_released_configs_name_the_format_their_linear_weights_are_stored_in(preset):
    """The released config.json's quantization_config and the format our inventory gives the linear weights
    agree on method and block; a format whose scales are stored in F8_E8M0 needs ``scale_fmt: ue8m0``
    (V3.2 says ue8m0 too, but stores the power-of-two scales in F32, which the F32-scale layout holds)."""
    raw = json.loads((PRESETS_DIR / f"{preset}.json").read_text())
    qc = raw.get("quantization_config") or raw.get("text_config", {}).get("quantization_config")
    fmt = get_format(resolve_model(preset).spec.formats.linear)
    expected = fmt.ecosystem.transformers
    assert qc["quant_method"] == expected["quant_method"] == "fp8"
    assert qc["weight_block_size"] == expected["weight_block_size"] == [fmt.block, fmt.block]
    scale_dtype = fmt.stored("w.weight", (256, 256))[1].dtype
    assert (scale_dtype == "F8_E8M0") <= (qc.get("scale_fmt") == "ue8m0")


def test_int4_group_is_compressed_tensors_pack_quantized_layout():
    """compressed-tensors' pack-quantized names its tensors weight_packed / weight_scale / weight_shape."""
    names = [t.name for t in get_format("int4-g128").stored("m.weight", (256, 256))]
    assert names == ["m.weight_packed", "m.weight_scale", "m.weight_shape"]
    assert get_format("int4-g128").ecosystem.compressed_tensors == "pack-quantized"
