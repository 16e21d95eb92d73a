"""Calibration for GPTQ: run calibration text through the full-precision model (transformers'
DeepseekV4, loaded by the runtime), collect each linear's input Hessian H = sum x x^T with forward
hooks, and hand the pipeline a quantizer that applies GPTQ to every INT4 weight it has a Hessian for.

Routed experts are fused in transformers (3-D ``experts.gate_up_proj`` / ``experts.down_proj``, not
``nn.Linear``): a hook on the experts module splits the tokens by routed expert, so every expert gets
its own Hessians (gate_up from the expert's tokens, down from its SwiGLU output). Nothing is skipped
silently: experts that saw fewer than ``min_expert_tokens`` tokens, and weights the reference model
has no module for (the MTP block), are quantized by round-to-nearest and listed in the report.
Native names map to transformers' modules through the runtime's name map (the table the loader uses).
"""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import sha256_file
from mv4deploy.runtime import name_map

INT4_FORMATS = ("int4-g128", "int4-g32")


@dataclass(frozen=True)
class CalibrationSpec:
    path: Path
    max_tokens: int = 4096
    seq_len: int = 256
    min_expert_tokens: int = 16

    @classmethod
    def from_file(cls, path: Path) -> "CalibrationSpec":
        path = Path(path)
        if not path.is_file() or path.stat().st_size == 0:
            raise InputError(path, "--calib", None, "calibration text must be a non-empty file")
        return cls(path)

    def key(self) -> dict:
        """What a resumed run must match (the same text and settings give the same bytes)."""
        return {"sha256": sha256_file(self.path), "max_tokens": self.max_tokens,
                "seq_len": self.seq_len, "min_expert_tokens": self.min_expert_tokens}


HF_EXPERT = re.compile(r"(?P<module>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight")


# ---------------------------------------------------------------- native name -> transformers module
def hessian_key(native: str, hf_names: bool = False) -> tuple[str, int | None, str] | None:
    """(transformers module path, expert index or None, which input) for a linear weight. A checkpoint in
    transformers' names (``hf_names``: Qwen2, Llama, V3) names its module itself; a native one goes through
    the runtime's name map (``runtime.name_map``). None where the reference model has no such module
    (``mtp.*`` and the other skipped names, or a name the map does not know)."""
    if hf_names:
        expert = HF_EXPERT.fullmatch(native)   # V3's per-expert linears: one fused experts module in transformers
        if expert:
            return expert["module"], int(expert["e"]), "down" if expert["proj"] == "down" else "gate_up"
        return (native[: -len(".weight")], None, "linear") if native.endswith(".weight") else None
    try:
        target = name_map.to_target(native)
    except KeyError:
        return None
    if target is None:
        return None
    if target.expert is not None:   # model.layers.N.mlp.experts.{gate_up_proj,down_proj}[e]
        module, param = target.param.rsplit(".", 1)
        return module, target.expert, "down" if param == "down_proj" else "gate_up"
    if not target.param.endswith(".weight"):
        return None
    return target.param[: -len(".weight")], None, "linear"


# ---------------------------------------------------------------- Hessians by forward hooks
class HessianCollector:
    """Accumulates H (float64) and token counts per (module, expert, input) while the model runs."""

    def __init__(self, model: torch.nn.Module):
        self.h: dict[tuple, torch.Tensor] = {}
        self.tokens: dict[tuple, int] = {}
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                self.handles.append(module.register_forward_pre_hook(self._linear(name)))
            elif hasattr(module, "gate_up_proj") and hasattr(module, "down_proj") and hasattr(module, "num_experts"):
                self.handles.append(module.register_forward_pre_hook(self._experts(name, module)))

    def _add(self, key: tuple, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if key not in self.h:
            self.h[key] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64)
            self.tokens[key] = 0
        self.h[key] += x.T @ x
        self.tokens[key] += x.shape[0]

    def _linear(self, name: str):
        return lambda module, args: self._add((name, None, "linear"), args[0])

    def _experts(self, name: str, module):
        def hook(mod, args):
            hidden, top_k_index = args[0], args[1]
            with torch.no_grad():
                for e in range(module.num_experts):
                    rows = torch.where(top_k_index == e)[0]   # one row per routing slot, as the forward does
                    x = hidden[rows]
                    self._add((name, e, "gate_up"), x)
                    self._add((name, e, "down"), module._apply_gate(F.linear(x, module.gate_up_proj[e])))
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def collect_hessians(model: torch.nn.Module, token_ids: torch.Tensor, seq_len: int,
                     advance=lambda n=1: None) -> HessianCollector:
    """Run ``token_ids`` (1-D) through ``model`` in chunks of ``seq_len`` with the hooks attached
    (``advance(1)`` after each chunk: the calibration step's progress bar)."""
    collector = HessianCollector(model)
    try:
        with torch.no_grad():
            for start in range(0, token_ids.numel(), seq_len):
                chunk = token_ids[start:start + seq_len]
                if chunk.numel() > 1:
                    model(input_ids=chunk[None, :], use_cache=False)
                advance(1)
    finally:
        collector.close()
    return collector


# ---------------------------------------------------------------- the quantizer handed to the pipeline
class GPTQQuantizer:
    """Called by the pipeline per weight: GPTQ for INT4 weights with enough calibration tokens,
    None (round to nearest) otherwise. Every INT4 weight's outcome is recorded (``outcomes``), and the
    pipeline stores them in its journal with the shard, so a resumed run reports all of them."""

    def __init__(self, collector: HessianCollector, min_tokens: int, hf_names: bool = False):
        self.collector, self.min_tokens, self.hf_names = collector, min_tokens, hf_names
        self.outcomes: dict[str, dict] = {}
        self.lock = threading.Lock()

    def __call__(self, job, x: torch.Tensor):
        if job.target not in INT4_FORMATS:
            return None
        key = hessian_key(job.weight.name, self.hf_names)
        tokens = self.collector.tokens.get(key, 0) if key else 0
        if key is None or key not in self.collector.h or tokens < self.min_tokens:
            reason = "no module in the reference model" if key is None or key not in self.collector.tokens \
                else f"{tokens} calibration tokens < {self.min_tokens}"
            with self.lock:
                self.outcomes[job.weight.name] = {"method": "rtn", "tokens": tokens, "reason": reason}
            return None
        from mv4deploy.formats import get_format
        from mv4deploy.quant.gptq import gptq_quantize
        fmt = get_format(job.target)
        result = gptq_quantize(x.float(), self.collector.h[key], fmt.group)
        with self.lock:
            self.outcomes[job.weight.name] = {"method": "gptq", "tokens": tokens}
        stored = fmt.stored(job.weight.name, tuple(x.shape))
        return {t.name: v for t, v in zip(stored, fmt.pack(result.codes, result.scales))}


def calibration_report(spec: CalibrationSpec, tokens: int, done: dict[str, dict]) -> dict:
    """For the manifest: the calibration settings and every INT4 weight's outcome, from the journal."""
    outcomes = {name: o for entry in done.values() for name, o in entry.get("calibration", {}).items()}
    fallback = [{"name": n, **{k: v for k, v in o.items() if k != "method"}}
                for n, o in sorted(outcomes.items()) if o["method"] == "rtn"]
    return {**spec.key(), "text": str(spec.path), "tokens": tokens,
            "gptq_weights": sum(1 for o in outcomes.values() if o["method"] == "gptq"), "rtn_fallback": fallback}


def _load_model(src: Path):
    from mv4deploy.runtime import load_model
    return load_model(src, device="cpu", dtype=torch.float32)


def _token_ids(src: Path, spec: CalibrationSpec) -> torch.Tensor:
    from mv4deploy.model.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(src, why="--calib")
    ids = tokenizer(spec.path.read_text(errors="replace"))["input_ids"][: spec.max_tokens]
    return torch.tensor(ids, dtype=torch.long)


def calibrate(job, spec: CalibrationSpec, model=None, token_ids: torch.Tensor | None = None, progress=None):
    """(quantizer, calibration tokens) for ``job``; ``model``/``token_ids`` may be given (tests, or a
    caller that already has them), otherwise the runtime loads SRC and its tokenizer reads the text.
    ``progress(description, total, unit_bytes=False)`` (``cli.output.progress``) draws the step's bar."""
    model = model if model is not None else _load_model(job.src)
    ids = token_ids if token_ids is not None else _token_ids(job.src, spec)
    chunks = -(-int(ids.numel()) // spec.seq_len)
    bar = progress("calibrate (GPTQ Hessians)", chunks, unit_bytes=False) if progress else nullcontext()
    with bar as advance:
        collector = collect_hessians(model, ids, spec.seq_len, advance or (lambda n=1: None))
    hf_names = not name_map.native_layout([w.weight.name for s in job.shards for w in s.weights])
    quantizer = GPTQQuantizer(collector, spec.min_expert_tokens, hf_names)
    return quantizer, int(ids.numel())
