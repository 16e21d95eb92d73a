"""``onnx-int4``: torch.onnx.export(dynamo=True) of the transformers model, then MatMulNBitsQuantizer.

For users of plain onnxruntime. The graph carries the KV cache explicitly, with the names and layout
Hugging Face tools use, and dynamic batch / sequence / past lengths:

    inputs   input_ids [B, S] int64, attention_mask [B, P + S] int64, position_ids [B, S] int64,
             past_key_values.{i}.key / .value [B, KV, P, D] float32 (P may be 0)
    outputs  logits [B, S, V], present.{i}.key / .value [B, KV, P + S, D]

The wrapper only turns flat tensors into transformers' ``DynamicCache`` and back; the attention, RoPE
and MLP are transformers' own code, traced by torch.export.
"""

from __future__ import annotations

import shutil
from pathlib import Path


from mv4deploy.export.source import SourceModel
from mv4deploy.export.targets import ExportTarget, Precision
from mv4deploy.model.tokenizer import TOKENIZER_FILES
from mv4deploy.runtime.cache_names import forward_cache_arg, output_cache

EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "merges.txt", "generation_config.json",
                         "config.json")


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _wrapper(model):
    import torch
    from transformers import DynamicCache

    class CacheIO(torch.nn.Module):
        """Flat past tensors in, logits and flat present tensors out."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{forward_cache_arg(self.model): cache})
            flat = [t for layer in output_cache(out).layers for t in (layer.keys, layer.values)]
            return (out.logits, *flat)

    return CacheIO().eval()


def export_fp32(model, spec, path: Path) -> None:
    """Trace with 2 past and 3 new tokens (sizes 0 and 1 would be specialised away), all axes dynamic."""
    import torch
    layers, kv, d = spec.num_hidden_layers, spec.num_key_value_heads, spec.head_dim
    past_len, new_len = 2, 3
    example = (torch.ones(1, new_len, dtype=torch.int64), torch.ones(1, past_len + new_len, dtype=torch.int64),
               torch.arange(past_len, past_len + new_len).view(1, -1),
               *[torch.zeros(1, kv, past_len, d) for _ in range(2 * layers)])
    batch, seq = torch.export.Dim("batch", max=256), torch.export.Dim("sequence", max=spec.max_position_embeddings)
    past = torch.export.Dim("past", max=spec.max_position_embeddings)
    total = torch.export.Dim("total", max=2 * spec.max_position_embeddings)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple({0: batch, 2: past}
                                                                                   for _ in range(2 * layers)))
    inputs, outputs = io_names(layers)
    torch.onnx.export(_wrapper(model), example, str(path), input_names=inputs, output_names=outputs,
                      dynamic_shapes=shapes, dynamo=True, optimize=True, external_data=True,
                      verbose=False)


def quantize_int4(fp32_path: Path, out_path: Path, target: ExportTarget) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    w = target.weights
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), bits=4, block_size=w.block_size or 128,
                                     is_symmetric=w.symmetric, accuracy_level=w.accuracy_level,
                                     op_types_to_quantize=tuple(w.quantize_ops))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=True)


def build(source: SourceModel, target: ExportTarget, out: Path, work: Path, model=None, **_) -> "DynamoBuild":
    fp32_path = work / "fp32" / "model.onnx"
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    export_fp32(model, source.spec, fp32_path)
    if target.weights.precision is Precision.FP32:
        shutil.copytree(fp32_path.parent, out, dirs_exist_ok=True)
    else:
        quantize_int4(fp32_path, out / "model.onnx", target)
    for name in (*TOKENIZER_FILES, *EXTRA_TOKENIZER_FILES):
        if (source.folder / name).is_file():
            shutil.copy2(source.folder / name, out / name)
    return DynamoBuild(out, source.spec)


class DynamoBuild:
    def __init__(self, folder: Path, spec):
        self.folder, self.spec = folder, spec
        self.graphs = ("model.onnx",)
        self.command = "torch.onnx.export(dynamo=True) + MatMulNBitsQuantizer"
        self.notes: tuple[str, ...] = ()

    def runner(self, folder: Path | None = None):
        """The folder as ``mv4deploy validate`` opens it: onnxruntime with the KV cache held by the caller
        (``present.N.*`` fed back as ``past_key_values.N.*``), as the README shows a user."""
        from mv4deploy.validate.backends import open_source
        return open_source(folder or self.folder, "cpu", role="export")
