"""What an export folder says about itself: sizes, initializer bytes, README.md and export.json.

Initializer bytes are read from the ONNX protobuf without loading external data (the ``length`` of each
external tensor, or the packed size of an inline one), so the formula check in
tests/test_export_formats.py compares ``mv4deploy.formats`` with bytes the export really stores.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

from mv4deploy.export.targets import Builder, ExportTarget
from mv4deploy.core.fileio import write_text_atomic
from mv4deploy.core.units import format_bytes

SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


@dataclass(frozen=True)
class Initializer:
    name: str
    dtype: str           # ONNX type name: FLOAT, UINT8, INT4, ...
    dims: tuple[int, ...]
    nbytes: int


def initializers(path: Path) -> list[Initializer]:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return [Initializer(t.name, onnx.TensorProto.DataType.Name(t.data_type), tuple(t.dims), _nbytes(t))
            for t in model.graph.initializer]


def _nbytes(tensor) -> int:
    import onnx
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.raw_data:
        return len(tensor.raw_data)
    name = onnx.TensorProto.DataType.Name(tensor.data_type)
    bits = SUB_BYTE_BITS.get(name) or 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return (prod(tensor.dims) * bits + 7) // 8


def graph_summary(path: Path) -> dict:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    inits = initializers(path)
    by_dtype = Counter()
    for t in inits:
        by_dtype[t.dtype] += t.nbytes
    return {"nodes": len(model.graph.node), "op_types": dict(Counter(n.op_type for n in model.graph.node)),
            "initializer_bytes": sum(by_dtype.values()), "initializer_bytes_by_dtype": dict(by_dtype)}


def folder_sizes(folder: Path, graphs: tuple[str, ...]) -> dict:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    model_files = {n: b for n, b in files.items() if n.endswith((".onnx", ".onnx.data", ".data"))}
    return {"files": files, "total_bytes": sum(files.values()), "model_bytes": sum(model_files.values()),
            "graphs": {name: graph_summary(folder / name) for name in graphs}}


USAGE = {
    Builder.GENAI: '''```python
import onnxruntime_genai as og
model = og.Model("{folder}")
tokenizer = og.Tokenizer(model)
params = og.GeneratorParams(model)
params.set_search_options(max_length={max_length}, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(tokenizer.encode("def fibonacci(n):"))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```''',
    Builder.DYNAMO: '''```python
import numpy as np, onnxruntime as ort
s = ort.InferenceSession("{folder}/model.onnx", providers=["CPUExecutionProvider"])
ids = np.array([[...prompt token ids...]], dtype=np.int64)          # tokenizer.json is in this folder
past = {{f"past_key_values.{{i}}.{{kv}}": np.zeros((1, {kv_heads}, 0, {head_dim}), np.float32)
        for i in range({layers}) for kv in ("key", "value")}}
out = s.run(None, {{"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "position_ids": np.arange(ids.shape[1])[None], **past}})
# out[0]: logits [1, S, V]; out[1:]: present.N.key/value [1, {kv_heads}, S, {head_dim}]: feed them back as past
# with attention_mask of length past + new and position_ids continuing from the past length.
```''',
    Builder.QNN_STATIC: '''```python
import onnxruntime as ort, onnxruntime_qnn
ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
so = ort.SessionOptions()
so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"],
                            {{"backend_path": onnxruntime_qnn.get_qnn_htp_path()}})
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")   # every node on the HTP, or fail
prefill = ort.InferenceSession("{folder}/prefill.onnx", sess_options=so)   # {step} tokens per call
decode = ort.InferenceSession("{folder}/decode.onnx", sess_options=so)     # 1 token per call
```
Both graphs take `input_ids` int32 [1, T], `position_ids` int32 [1, T], `attention_bias` float32
[1, 1, T, {context} + T] (0 = may attend, -100 = masked) and `past_key_i` / `past_value_i` float32
[1, {kv_heads}, {context}, {head_dim}] for i < {layers}; they return `logits` [1, T, V] and the new
`present_key_i` / `present_value_i` [1, {kv_heads}, T, {head_dim}]. The host keeps the {context}-slot
cache, pads the last prefill step, builds the mask (filled slots visible, new tokens causal) and writes
each call's new K/V into the next slots: `mv4deploy/export/static_host.py` is a complete host in about 100 lines.''',
}


def usage(target: ExportTarget, folder: Path, spec, max_length: int | None) -> str:
    return USAGE[target.builder].format(folder=folder, max_length=max_length or target.context_tokens,
                                        kv_heads=spec.num_key_value_heads, head_dim=spec.head_dim,
                                        layers=spec.num_hidden_layers, step=target.step_tokens,
                                        context=target.context_tokens)


def readme(report: dict, target: ExportTarget, spec, how_to_run: str) -> str:
    """The folder's README: how to run it, its files, and its self-validation as ``mv4deploy validate``
    reports a run (``validate.report``: every statistic, then the target's tolerance as a gate)."""
    from mv4deploy.validate.report import gate_lines, stat_lines
    v, g = report["validation"], report["validation"]["greedy"]
    lines = [f"# {report['model']} -> ONNX, target `{target.name}`", "", target.description, "",
             f"Made by `{report['cli']}` ({report['command']}); runs on {report['runtime']}, execution provider "
             f"{target.provider.value}.", "",
             "## How to run", "", how_to_run, "", "## Files", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| {name} | {size:,} ({format_bytes(size)}) |" for name, size in report["sizes"]["files"].items()]
    verdict = "PASSED" if v["passed"] else "FAILED: " + "; ".join(v["failures"])
    lines += ["", f"## Validation against PyTorch (fp32): {verdict}", "",
              f"Eval text `{v['eval']['text']}` (sha256 {v['eval']['sha256'][:16]}...), {v['eval']['chunks']} chunks "
              f"of {v['eval']['chunk_tokens']} tokens, {v['stats']['tokens_scored']} positions scored (the second "
              f"half of each chunk); run on {report['runner']}. Greedy: {g['prompts']} prompts of "
              f"{g['prompt_tokens']} tokens, agreeing leading tokens {g['agreeing_prefix']} of {g['new_tokens']} "
              f"(mean {g['agreeing_prefix_mean']:.1f}).", "", *gate_lines(v["gate"]), "", "## Statistics", "",
              *stat_lines(v["stats"])]
    if report["notes"]:
        lines += ["## Graph changes for this backend", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def write_outputs(folder: Path, report: dict, text: str) -> None:
    write_text_atomic(folder / "README.md", text + "\n")
    write_text_atomic(folder / "export.json", json.dumps(report, indent=2, default=str) + "\n")
