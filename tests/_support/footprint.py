"""What an export of a distillate stores and reads, from its config alone: no torch, no ONNX.

For a ``DenseSpec`` and an export target this lists every tensor the export writes with its exact bytes
(the target's weight format from ``mv4deploy.formats`` for matmul weights, the builder's own
layout for the rest), the KV cache per token in the runtime's element type, and what one decode step
reads. tests/test_export_formats.py checks the tensor list against the initializers of real exports of
the tiny fixtures, byte for byte; the planner's phone policy uses the same format, so ``mv4deploy plan``
and this module must agree for the real 7B config (tests/test_export_plan.py).

Layouts, as measured on onnxruntime-genai 0.18 (``-e cpu``) and onnxruntime 1.32:
- genai: q/k/v fused into one ``qkv_proj`` MatMul (bytes add up: the format is per row), biases kept
  in F32 when not all zero, norms F32, a ``cos_cache``/``sin_cache`` pair F32 [max_position_embeddings,
  head_dim/2], the embedding in the weight format when ``Gather`` is quantized (GatherBlockQuantized)
  else F32, the LM head in the weight format.
- dynamo + MatMulNBitsQuantizer: q/k/v separate, embedding F32 (only MatMul quantized), no rope cache
  (cos/sin computed in the graph from an F32 inv_freq of head_dim/2).
- qnn-static: Gemm weights in the per-channel QDQ format, biases as INT32 with a per-channel scale and
  zero point, the embedding, norms and rope tables (of context + step rows) as uint16 with one scale
  (``QDQ_LAYOUTS``). Each of the two graphs stores its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from mv4deploy.model.kv import gqa_entry_bytes
from mv4deploy.model.spec import DenseSpec
from mv4deploy.formats.onnx_layouts import get_layout


@dataclass(frozen=True)
class Item:
    name: str           # the logical weight (transformers name) or the builder's own tensor
    kind: str           # matmul | embedding | head | bias | norm | rope
    shape: tuple[int, ...]
    format: str         # a layout name (formats.onnx_layouts) or one of QDQ_LAYOUTS
    nbytes: int


# QDQ tensors that are not weight formats: (bytes per element, bytes per tensor)
QDQ_LAYOUTS = {
    "u16-tensor": (2, 4 + 2),   # uint16 payload, one F32 scale + one uint16 zero point (activation-typed)
    "i32-bias": (4 + 4 + 4, 0),  # Gemm bias: INT32 payload + F32 scale + INT32 zero point per channel
}


def _fmt_bytes(fmt: str, shape: tuple[int, ...]) -> int:
    if fmt in QDQ_LAYOUTS:
        per_element, fixed = QDQ_LAYOUTS[fmt]
        return per_element * prod(shape) + fixed
    return get_layout(fmt).nbytes(shape)


def export_items(spec: DenseSpec, target) -> list[Item]:
    """Every tensor the export stores, in order: embedding, per-layer weights, norm, head, extras."""
    builder = target.builder.value
    wfmt = target.weights.format
    h, d = spec.hidden_size, spec.head_dim
    q, kv = spec.num_attention_heads * d, spec.num_key_value_heads * d
    embed_fmt = {"genai": wfmt if "Gather" in target.weights.quantize_ops else "f32", "dynamo": "f32",
                 "qnn-static": "u16-tensor"}[builder]
    bias_fmt, norm_fmt = ("i32-bias", "u16-tensor") if builder == "qnn-static" else ("f32", "f32")
    items = [Item("model.embed_tokens.weight", "embedding", (spec.vocab_size, h), embed_fmt, 0)]
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        projections = [("self_attn.qkv_proj", q + 2 * kv)] if builder == "genai" else [
            ("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)]
        items += [Item(f"{p}{name}.weight", "matmul", (rows, h), wfmt, 0) for name, rows in projections]
        if spec.attention_bias:
            items += [Item(f"{p}{name}.bias", "bias", (rows,), bias_fmt, 0) for name, rows in projections]
        items += [Item(f"{p}self_attn.o_proj.weight", "matmul", (h, q), wfmt, 0),
                  Item(f"{p}mlp.gate_proj.weight", "matmul", (spec.intermediate_size, h), wfmt, 0),
                  Item(f"{p}mlp.up_proj.weight", "matmul", (spec.intermediate_size, h), wfmt, 0),
                  Item(f"{p}mlp.down_proj.weight", "matmul", (h, spec.intermediate_size), wfmt, 0),
                  Item(f"{p}input_layernorm.weight", "norm", (h,), norm_fmt, 0),
                  Item(f"{p}post_attention_layernorm.weight", "norm", (h,), norm_fmt, 0)]
    items += [Item("model.norm.weight", "norm", (h,), norm_fmt, 0),
              Item("lm_head.weight", "head", (spec.vocab_size, h), wfmt, 0)]
    items += _rope_items(spec, target, builder)
    return [Item(i.name, i.kind, i.shape, i.format, _fmt_bytes(i.format, i.shape)) for i in items]


def _rope_items(spec: DenseSpec, target, builder: str) -> list[Item]:
    half = spec.head_dim // 2
    if builder == "genai":
        rows = spec.max_position_embeddings
        return [Item(name, "rope", (rows, half), "f32", 0) for name in ("cos_cache", "sin_cache")]
    if builder == "qnn-static":
        rows = target.context_tokens + target.step_tokens
        return [Item(name, "rope", (rows, spec.head_dim), "u16-tensor", 0) for name in ("rope_cos", "rope_sin")]
    return [Item("inv_freq", "rope", (half,), "f32", 0)]


ROW_READ = ("embedding", "rope")     # indexed by token id / position: one row read per decoded token


@dataclass(frozen=True)
class Footprint:
    weight_bytes: int
    kv_bytes_per_token: int
    context_tokens: int
    read_bytes_per_token: int        # one decode step at a full context: weights + KV; tables give one row

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.context_tokens

    @property
    def resident_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def tokens_per_s(self, bandwidth_bytes_per_s: float) -> float:
        """Decode rate if every step streams its bytes once at ``bandwidth_bytes_per_s``."""
        return bandwidth_bytes_per_s / self.read_bytes_per_token


def footprint(spec: DenseSpec, target, context_tokens: int | None = None) -> Footprint:
    """Bytes of the export of ``spec`` for ``target`` at ``context_tokens`` (default: the target's)."""
    items = export_items(spec, target)
    context = context_tokens or target.context_tokens
    kv_per_token = spec.num_hidden_layers * gqa_entry_bytes(spec, target.kv_cache.bytes_per_element)
    weights = sum(i.nbytes for i in items)
    tables = [i for i in items if i.kind in ROW_READ]          # a decode step reads one row of each
    read = weights - sum(t.nbytes - t.nbytes // t.shape[0] for t in tables) + kv_per_token * context
    return Footprint(weights, kv_per_token, context, read)


def phone_budget(fp: Footprint, profile) -> dict:
    """The footprint against a phone profile: the app budget (usable_fraction of RAM) and decode speed
    from the memory bandwidth, at peak and at the profile's achievable fraction."""
    gpus = profile.gpus
    budget = int(gpus.memory_bytes * gpus.usable_fraction)
    peak = gpus.bandwidth_bytes_per_s
    return {"weight_bytes": fp.weight_bytes, "kv_bytes": fp.kv_bytes, "context_tokens": fp.context_tokens,
            "resident_bytes": fp.resident_bytes, "budget_bytes": budget,
            "exceeds_budget": fp.resident_bytes > budget, "read_bytes_per_token": fp.read_bytes_per_token,
            "bandwidth_bytes_per_s": peak, "tokens_per_s_peak": fp.tokens_per_s(peak),
            "tokens_per_s": fp.tokens_per_s(peak * profile.efficiency.gpu_bandwidth)}
