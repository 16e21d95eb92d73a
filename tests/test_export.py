"""``mv4deploy export onnx`` end to end on a tiny Qwen2: every target once per session, through the CLI.

Each export validates itself (KLD / top-1 through mv4deploy.validate, greedy agreement); the bounds
pinned here are stated with their reasons in docs/export.md. The byte layout of every quantized weight
is checked against ``mv4deploy.formats`` and the whole export against ``export.footprint``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from _support.footprint import export_items
from mv4deploy.formats.onnx_layouts import get_layout
from mv4deploy.export.report import initializers
from mv4deploy.export.targets import load_target
from mv4deploy.model.config import read_config

TARGETS = ("cpu-fp32", "cpu-int4", "onnx-int4", "snapdragon-qnn")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODEL = FIXTURES / "models" / "tiny-qwen2"        # trained: held-out perplexity 84 (its README)
TEXTS = ("--eval", FIXTURES / "eval.txt", "--calib", FIXTURES / "calib.txt")
# Bounds pinned for this fixture, ~3x around what it measures (docs/export.md): a regression in a builder,
# the quantizer or the HTP moves these long before the targets' own tolerances (exporters/*.yaml) trip.
# KLD has a floor too: a quantized target that matches fp32 exactly did not quantize.
PINNED = {"cpu-int4": (3e-3, 0.03, 0.86), "onnx-int4": (3e-3, 0.03, 0.86), "snapdragon-qnn": (2e-5, 3e-4, 0.97)}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return MODEL


@pytest.fixture(scope="module")
def exports(model_dir, tmp_path_factory) -> dict:
    """target -> (CliResult, folder): each target exported once for the whole module."""
    root = tmp_path_factory.mktemp("exports")
    done = {}
    for target in TARGETS:
        out = root / target
        done[target] = (run_cli("export", "onnx", model_dir, out, "--target", target, *TEXTS, "--json",
                                timeout=900), out)
    return done


def _report(exports, target) -> dict:
    result, out = exports[target]
    assert result.code == 0, result.stderr[-2000:]
    report = result.json()
    assert json.loads((out / "export.json").read_text())["validation"] == report["validation"]
    return report


def test_cpu_fp32_is_greedy_identical_to_pytorch(exports):
    report = _report(exports, "cpu-fp32")
    greedy, stats = report["validation"]["greedy"], report["validation"]["stats"]
    assert greedy["new_tokens"] == 32 and greedy["agreeing_prefix"] == [32] * greedy["prompts"]
    assert all(s["reference"] == s["export"] for s in greedy["samples"])
    assert stats["same_top1"] == 1.0 and stats["kld_mean"] < 1e-9


@pytest.mark.parametrize("target", ["cpu-int4", "onnx-int4", "snapdragon-qnn"])
def test_quantized_targets_pass_their_tolerance_and_the_pinned_bounds(exports, target):
    report = _report(exports, target)
    v = report["validation"]
    assert v["passed"] and not v["failures"]
    kld_low, kld_high, top1_low = PINNED[target]
    assert kld_low < v["stats"]["kld_mean"] < kld_high
    assert v["stats"]["same_top1"] > top1_low
    assert v["stats"]["tokens_scored"] == v["eval"]["chunks"] * 63          # 128-token chunks, second half
    assert v["greedy"]["agreeing_prefix_mean"] >= load_target(target).tolerance.greedy_prefix_mean_min


def test_snapdragon_runs_on_the_htp_with_fallback_disabled(exports):
    report = _report(exports, "snapdragon-qnn")
    assert "QNN HTP" in report["runner"] and "CPU fallback disabled" in report["runner"]
    assert report["graphs"] == ["prefill.onnx", "decode.onnx"]
    assert any("Reciprocal" in note for note in report["notes"])
    for graph in report["graphs"]:
        ops = report["sizes"]["graphs"][graph]["op_types"]
        assert "Gemm" in ops and "QuantizeLinear" in ops and "Reciprocal" not in ops


def test_disabled_fallback_really_refuses_a_graph_the_htp_cannot_run(tmp_path):
    """The proof rests on the session failing when a node cannot go to the HTP: a graph with an op
    the QNN EP does not take (Det) must not open."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import TensorProto, helper
    from mv4deploy.export.qnn import htp_session
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), tmp_path / "det.onnx")
    with pytest.raises(Exception, match="fallback to CPU EP has been explicitly disabled"):
        htp_session(tmp_path / "det.onnx")


def test_output_folder_has_readme_sizes_and_summary(exports):
    for target in TARGETS:
        result, out = exports[target]
        report = _report(exports, target)
        readme = (out / "README.md").read_text()
        assert "## How to run" in readme and "PASSED" in readme and f"`{target}`" in readme
        for name, size in report["sizes"]["files"].items():
            assert (out / name).stat().st_size == size and f"| {name} | {size:,}" in readme
        assert "tokenizer.json" in report["sizes"]["files"]
        seconds = report["seconds"]                       # units in the names, as validate's load_s/score_s
        assert set(seconds) == {"build_s", "validate_s", "total_s"}
        assert 0 < seconds["build_s"] + seconds["validate_s"] <= seconds["total_s"] + 0.2   # each rounded to 0.1


def _spec(model_dir):
    return read_config(json.loads((model_dir / "config.json").read_text()), "config.json")


@pytest.mark.parametrize("target", ["cpu-fp32", "cpu-int4"])
def test_genai_initializers_match_the_footprint_byte_for_byte(exports, model_dir, target):
    _report(exports, target)
    real = initializers(exports[target][1] / "model.onnx")
    predicted = export_items(_spec(model_dir), load_target(target))
    assert sum(i.nbytes for i in real) == sum(i.nbytes for i in predicted)


@pytest.mark.parametrize("target, op", [("cpu-int4", "MatMulNBits"), ("onnx-int4", "MatMulNBits"),
                                        ("cpu-int4", "GatherBlockQuantized"), ("snapdragon-qnn", "Gemm")])
def test_each_quantized_weight_has_the_format_bytes(exports, target, op):
    import onnx
    _report(exports, target)
    fmt = get_layout(load_target(target).weights.format)
    graph = "prefill.onnx" if target == "snapdragon-qnn" else "model.onnx"
    path = exports[target][1] / graph
    sizes = {i.name: i for i in initializers(path)}
    model = onnx.load(str(path), load_external_data=False)
    producers = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for node in model.graph.node:
        if node.op_type != op:
            continue
        if op == "Gemm":   # weight arrives through DequantizeLinear(quantized, scale, zero point)
            dq = producers[node.input[1]]
            names, (n, k) = dq.input, sizes[dq.input[0]].dims
        elif op == "GatherBlockQuantized":
            names, (n, k) = [node.input[0], node.input[2]], sizes[node.input[0]].dims
        else:
            attrs = {a.name: a.i for a in node.attribute}
            names, n, k = node.input[1:4 if len(node.input) > 3 else 3], attrs["N"], attrs["K"]
        assert sum(sizes[name].nbytes for name in names if name) == fmt.nbytes((n, k)), node.name
        checked += 1
    assert checked > 0


def test_missing_the_tolerance_exits_1_with_numbers_and_keeps_the_folder(model_dir, tmp_path):
    strict = yaml.safe_load(Path(load_target("cpu-int4").source).read_text())
    strict["validation"] = {**strict["validation"], "chunk_tokens": 32, "max_chunks": 2, "greedy_prompts": 1,
                            "prompt_tokens": 8, "greedy_tokens": 4, "greedy_prefix_mean_min": 0, "kld_mean_max": 0.0}
    target = tmp_path / "strict.yaml"
    target.write_text(yaml.safe_dump(strict))
    out = tmp_path / "out"
    result = run_cli("export", "onnx", model_dir, out, "--target", target, *TEXTS)
    assert result.code == 1
    assert "kld_mean" in result.stderr and "> kld_mean_max 0" in result.stderr     # validate's gate wording
    assert not out.exists() and (tmp_path / "out.rejected" / "README.md").is_file()
    assert "FAILED" in (tmp_path / "out.rejected" / "README.md").read_text()


def test_format_torch_side_reproduces_the_exported_int4_bytes(exports, model_dir):
    """The bytes the genai builder wrote for each MatMulNBits weight are exactly what
    ``mnb-int4-b32``'s quantize makes of the PyTorch weight (o_proj, MLP, LM head: not fused)."""
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file
    _report(exports, "cpu-int4")
    fmt = get_layout("mnb-int4-b32")
    weights = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(shard))
    model = onnx.load(str(exports["cpu-int4"][1] / "model.onnx"))
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    checked = 0
    for name, tensor in weights.items():
        if not name.endswith(("o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
                              "lm_head.weight")):
            continue
        onnx_base = name.replace("self_attn", "attn")[: -len(".weight")] + ".MatMul.weight"
        ours = fmt.quantize(name, tensor.float())
        assert (stored[onnx_base + "_Q4"] == ours[name[:-7] + ".weight_Q4"].numpy()).all(), name
        assert (stored[onnx_base + "_scales"].view("u4") == ours[name[:-7] + ".weight_scales"].numpy().view("u4")).all()
        checked += 1
    assert checked == 4 * _spec(model_dir).num_hidden_layers + 1


def test_mv4deploy_validate_on_the_exported_folder_reproduces_the_self_validation(exports, model_dir):
    """``mv4deploy validate`` opens the cpu-int4 folder with its own onnxruntime-genai backend and scores
    the same positions: the statistics must be the export's own, to the last digit."""
    report = _report(exports, "cpu-int4")
    v = report["validation"]
    result = run_cli("validate", "--reference", model_dir, "--candidate", exports["cpu-int4"][1], "--eval",
                     FIXTURES / "eval.txt", "--chunk", str(v["eval"]["chunk_tokens"]), "--max-chunks",
                     str(v["eval"]["chunks"]), "--json")
    assert result.code == 0, result.stderr
    stats = result.json()                               # the statistics are top-level keys
    for key in ("tokens_scored", "kld_mean", "kld_max", "same_top1", "ppl_ratio"):
        assert stats[key] == pytest.approx(v["stats"][key], rel=1e-9), key
