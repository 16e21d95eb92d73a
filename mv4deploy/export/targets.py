"""Export targets as data: ``exporters/NAME.yaml`` -> a frozen ``ExportTarget``.

A target says what an ONNX export means for one runtime: which builder makes it, the weight precision
and its exact stored layout (a name in ``formats.FORMATS`` or ``formats.onnx_layouts``, so the planner can count the
same bytes), block size and accuracy level, activation precision, static or dynamic shapes, the KV-cache
layout, the execution provider, and the tolerance its self-validation must meet. Unknown keys, missing
fields and out-of-range values are one-line errors naming the file and the field (the profile loader's
rules: ``mv4deploy.core.schema``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core.schema import (Section, boolean, choice, enum_of, fraction, load_yaml, non_negative, positive_int,
                              strings, text)
from mv4deploy.core.paths import data_dir


class Builder(str, Enum):
    GENAI = "genai"              # onnxruntime_genai.models.builder (MatMulNBits + GroupQueryAttention)
    DYNAMO = "dynamo"            # torch.onnx.export(dynamo=True), then MatMulNBitsQuantizer
    QNN_STATIC = "qnn-static"    # static-shape decoder pair, QDQ via onnxruntime's QNN quantization tools


class Provider(str, Enum):
    CPU = "cpu"                  # onnxruntime's CPUExecutionProvider
    QNN_HTP = "qnn-htp"          # QNNExecutionProvider with the HTP backend, CPU fallback disabled


class Precision(str, Enum):
    FP32 = "fp32"
    INT4 = "int4"
    INT8 = "int8"


@dataclass(frozen=True)
class Weights:
    precision: Precision
    format: str                    # layout of the linear weights as the export stores them (formats.onnx_layouts)
    block_size: int | None = None  # int4 MatMulNBits: values per scale along K
    symmetric: bool = True         # False: zero points are stored too
    accuracy_level: int | None = None   # MatMulNBits: 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
    quantize_ops: tuple[str, ...] = ("MatMul",)   # "Gather" also quantizes the embedding table
    per_channel: bool = False      # QDQ: one scale per output channel (Gemm weights)


@dataclass(frozen=True)
class KVCache:
    layout: str                    # how the runtime holds it, in words (README, plan agreement)
    dtype: str                     # element type on the device: fp32 | uint16 (QDQ-quantized) | ...
    bytes_per_element: int


@dataclass(frozen=True)
class Tolerance:
    """Self-validation limits. KLD and top-1 over the scored eval positions (validate.stats), and greedy
    agreement: the mean number of leading tokens the export generates exactly as PyTorch does."""

    chunk_tokens: int
    max_chunks: int
    greedy_prompts: int
    prompt_tokens: int
    greedy_tokens: int
    kld_mean_max: float
    top1_min: float                # as in a validate gate: on the Wilson lower bound of same-top-1 (95 %)
    greedy_prefix_mean_min: float


@dataclass(frozen=True)
class ExportTarget:
    name: str
    description: str
    builder: Builder
    runtime: str                   # what executes the output: onnxruntime-genai | onnxruntime
    provider: Provider
    weights: Weights
    activations: str               # fp32 | uint16
    shapes: str                    # dynamic | static
    context_tokens: int            # genai: search.max_length; static: KV slots of the graph
    step_tokens: int | None        # static: tokens per prefill step (decode steps take 1)
    kv_cache: KVCache
    tolerance: Tolerance
    source: str = ""


def targets_dir() -> Path:
    return data_dir("exporters")


def list_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def load_target(name_or_path: str | Path) -> ExportTarget:
    """A shipped target by name (``cpu-int4``) or a YAML file of the same schema."""
    name = str(name_or_path)
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = targets_dir() / f"{name}.yaml"
        if not path.is_file():
            raise InputError(None, "--target", name, f"unknown export target; known: {', '.join(list_targets())}")
    return parse_target(load_yaml(path), str(path))


def parse_target(data: object, source: str) -> ExportTarget:
    top = Section(data, source, "")
    target = ExportTarget(
        name=top.get("name", text), description=top.get("description", text, required=False, default=""),
        builder=top.get("builder", enum_of(Builder)), runtime=top.get("runtime", choice("onnxruntime-genai",
                                                                                        "onnxruntime")),
        provider=top.get("execution_provider", enum_of(Provider)), weights=_weights(top.section("weights")),
        activations=top.get("activations", choice("fp32", "uint16")),
        shapes=top.get("shapes", choice("dynamic", "static")),
        context_tokens=top.get("context_tokens", positive_int),
        step_tokens=top.get("step_tokens", positive_int, required=False),
        kv_cache=_kv(top.section("kv_cache")), tolerance=_tolerance(top.section("validation")), source=source)
    top.done()
    _check_consistent(target, source)
    return target


def _weights(s: Section) -> Weights:
    from mv4deploy.formats.onnx_layouts import get_layout, layout_names
    fmt = s.get("format", text)
    try:
        get_layout(fmt)
    except KeyError:
        raise InputError(s.source, "weights.format", fmt, f"unknown layout; known: {', '.join(layout_names())}") from None
    w = Weights(precision=s.get("precision", enum_of(Precision)), format=fmt,
                block_size=s.get("block_size", _block_size, required=False),
                symmetric=s.get("symmetric", boolean, required=False, default=True),
                accuracy_level=s.get("accuracy_level", _accuracy_level, required=False),
                quantize_ops=s.get("quantize_ops", _ops, required=False, default=("MatMul",)),
                per_channel=s.get("per_channel", boolean, required=False, default=False))
    s.done()
    return w


def _kv(s: Section) -> KVCache:
    kv = KVCache(layout=s.get("layout", text), dtype=s.get("dtype", text),
                 bytes_per_element=s.get("bytes_per_element", positive_int))
    s.done()
    return kv


def _tolerance(s: Section) -> Tolerance:
    t = Tolerance(chunk_tokens=s.get("chunk_tokens", positive_int), max_chunks=s.get("max_chunks", positive_int),
                  greedy_prompts=s.get("greedy_prompts", positive_int),
                  prompt_tokens=s.get("prompt_tokens", positive_int),
                  greedy_tokens=s.get("greedy_tokens", positive_int),
                  kld_mean_max=s.get("kld_mean_max", non_negative),
                  top1_min=s.get("top1_min", fraction),
                  greedy_prefix_mean_min=s.get("greedy_prefix_mean_min", non_negative))
    s.done()
    return t


def _check_consistent(t: ExportTarget, source: str) -> None:
    """Rules that join fields: a static graph needs its step; the cache must hold a validation chunk."""
    if t.shapes == "static" and t.step_tokens is None:
        raise InputError(source, "step_tokens", None, "a static-shape target needs step_tokens (prefill step)")
    if t.tolerance.chunk_tokens > t.context_tokens:
        raise InputError(source, "validation.chunk_tokens", t.tolerance.chunk_tokens,
                         f"exceeds context_tokens ({t.context_tokens})")
    longest = t.tolerance.prompt_tokens + t.tolerance.greedy_tokens
    if longest > t.context_tokens:
        raise InputError(source, "validation.greedy_tokens", t.tolerance.greedy_tokens,
                         f"prompt + greedy tokens ({longest}) exceed context_tokens ({t.context_tokens})")
    if t.tolerance.greedy_prefix_mean_min > t.tolerance.greedy_tokens:
        raise InputError(source, "validation.greedy_prefix_mean_min", t.tolerance.greedy_prefix_mean_min,
                         f"exceeds greedy_tokens ({t.tolerance.greedy_tokens})")


def _block_size(value) -> int:
    if positive_int(value) < 16 or value & (value - 1):
        raise ValueError("must be a power of two >= 16 (MatMulNBits)")
    return value


def _accuracy_level(value) -> int:
    if value not in (0, 1, 2, 3, 4):
        raise ValueError("must be 0-4 (MatMulNBits accuracy_level)")
    return value


def _ops(value) -> tuple[str, ...]:
    ops = strings(value)
    bad = [op for op in ops if op not in ("MatMul", "Gather")]
    if bad or not ops:
        raise ValueError("must be a non-empty list of MatMul, Gather")
    return ops


