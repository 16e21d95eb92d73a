"""The static-shape decoder and its host (the snapdragon-qnn graph, before ONNX and quantization) compute
what transformers computes, for Qwen2 and Llama (llama3 rope scaling), with chunked prefill, padding and
one-token decode steps. Fast: PyTorch only, random tiny models from the presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import PRESETS
from mv4deploy.export.static_graph import StaticDecoder
from mv4deploy.export.static_host import GraphShape, StaticHost, StaticRunner
from mv4deploy.export.verify import agreeing_prefix, greedy
from mv4deploy.validate.backends import TorchSource
from mv4deploy.model.config import read_config


def _model(preset: str):
    import transformers
    raw = json.loads((PRESETS / f"{preset}.json").read_text())
    config_class = getattr(transformers, raw["architectures"][0].replace("ForCausalLM", "Config"))
    model_class = getattr(transformers, raw["architectures"][0])
    torch.manual_seed(0)
    model = model_class(config_class(**{k: v for k, v in raw.items() if k != "architectures"})).eval()
    with torch.no_grad():       # sharper distributions than the init's, so argmax is not a coin toss
        model.lm_head.weight.mul_(20)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    return model, read_config(raw, preset)


def _torch_graph(model, shape: GraphShape):
    decoder = StaticDecoder(model, shape.context, shape.step).eval()

    def run(feeds):
        with torch.inference_mode():
            return [t.numpy() for t in decoder(*(torch.from_numpy(v) for v in feeds.values()))]
    return run


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-llama"])
def test_static_decoder_with_host_matches_transformers(preset):
    model, spec = _model(preset)
    shape = GraphShape.of(spec, context=96, step=16)
    runner = StaticRunner(shape, _torch_graph(model, shape), _torch_graph(model, shape.with_step(1)), "static")
    reference = TorchSource("transformers", None, model, None, "cpu")
    tokens = torch.from_numpy(np.random.default_rng(1).integers(3, spec.vocab_size, 50))   # 3 full steps + 2 padded
    ours, theirs = runner.last_logits(tokens, 50), reference.last_logits(tokens, 50)
    assert ours.shape == theirs.shape == (50, spec.vocab_size)
    assert (ours - theirs).abs().max() < 1e-4
    prompt = tokens[:20]
    assert agreeing_prefix(greedy(runner, prompt, 24), greedy(reference, prompt, 24)) == 24


def test_host_mask_positions_and_cache_slots():
    shape = GraphShape(layers=1, kv_heads=1, head_dim=2, context=6, step=4)
    host = StaticHost(shape)
    feeds, valid = host.feeds([7, 8, 9], 4)                  # 3 tokens, padded to 4
    assert valid == 3 and feeds["input_ids"].tolist() == [[7, 8, 9, 0]]
    assert feeds["position_ids"].tolist() == [[0, 1, 2, 3]]
    bias = feeds["attention_bias"][0, 0]                     # [4, 6 + 4]: no past slot is filled yet
    assert (bias[:, :6] < 0).all() and bias[1, 6:].tolist() == [0, 0, -100, -100]
    present = np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2)
    logits = np.zeros((1, 4, 5), dtype=np.float32)
    host.commit([logits, present, present + 100], valid)     # only the 3 valid rows enter slots 0..2
    assert host.filled == 3 and host.cache[0, 0, 0, 0, :3].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert host.cache[0, 1, 0, 0, 3].tolist() == [0, 0]
    feeds, _ = host.feeds([5], 4)
    assert (feeds["attention_bias"][0, 0, :, :3] == 0).all() and (feeds["attention_bias"][0, 0, :, 3:6] < 0).all()
    with pytest.raises(ValueError, match="context full"):
        host.feeds([1, 2, 3, 4], 4)


@pytest.mark.parametrize("op, expect_exact", [("Reciprocal", False), ("Div", True)])
def test_why_rmsnorm_divides_on_the_htp(tmp_path, op, expect_exact):
    """QNN 2.51's HTP Reciprocal on 16-bit QDQ returns wrong values for outputs above ~1 (here 1/0.02 =
    50 comes back near 1.2), Div computes them to the quantization step. If this test starts failing for
    Reciprocal, the HTP was fixed and static_graph._rms_norm may use rsqrt again."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
    from mv4deploy.export.qnn import htp_session
    x = np.linspace(0.018, 0.024, 16, dtype=np.float32).reshape(1, 16)
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    node = helper.make_node("Reciprocal", ["x"], ["y"]) if op == "Reciprocal" else helper.make_node("Div", ["one", "x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [one] if op == "Div" else [])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": x}])

        def get_next(self):
            return next(self.feeds, None)

    config = get_qnn_qdq_config(str(tmp_path / "f.onnx"), Reader(), activation_type=QuantType.QUInt16,
                                weight_type=QuantType.QUInt8)
    quantize(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), config)
    y = htp_session(tmp_path / "q.onnx").run(None, {"x": x})[0]
    relative = np.abs(y - 1 / x).max() / (1 / x).max()
    assert bool(relative < 1e-3) is expect_exact, relative


@pytest.mark.parametrize("a, b, expected", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 4),      # identical
    ([1, 2, 3, 4], [1, 2, 9, 4], 2),      # diverge at the third token; agreement after it does not count
    ([5, 2, 3], [1, 2, 3], 0),            # diverge at once
    ([1, 2], [1, 2, 3, 4], 2),            # the shorter run ends the comparison
    ([], [1], 0),
])
def test_agreeing_prefix_stops_at_the_first_divergence(a, b, expected):
    assert agreeing_prefix(a, b) == expected
