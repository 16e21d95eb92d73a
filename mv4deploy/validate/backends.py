"""Anything that turns a chunk of token ids into next-token logits, behind one small interface.

A ``LogitsSource`` answers ``last_logits(tokens [N], keep) -> [keep, V] float32``: the logits of the
last ``keep`` positions of one chunk run from an empty cache. Validation only ever asks for that, so a
native DeepSeek checkpoint (through ``mv4deploy.runtime``), a transformers folder and an ONNX folder are
interchangeable as reference or candidate. Greedy generation (the export's second check) adds
``begin(prompt [P]) -> [V]`` and ``advance(token) -> [V]``: one running sequence with the source's own KV
cache, the path a user of that runtime takes. ``BACKENDS`` is an ordered table: the first entry whose
``matches`` accepts a folder opens it.

| kind         | a folder with                                   | runs through                       |
|--------------|-------------------------------------------------|------------------------------------|
| onnx-genai   | genai_config.json                               | onnxruntime-genai                  |
| onnx         | *.onnx                                          | onnxruntime (empty past KV inputs) |
| runtime      | safetensors with DeepSeek-native names (no      | mv4deploy.runtime.load_model       |
|              | ``model.`` prefix), or quant_method "mv4deploy" |                                    |
| transformers | config.json + weights (HF names)                | AutoModelForCausalLM, offline      |
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor

from mv4deploy.core.errors import InputError, first_line
from mv4deploy.model.tokenizer import load_tokenizer
from mv4deploy.core.safepaths import check_model_folder
from mv4deploy.runtime.cache_names import cache_arg, output_cache
from mv4deploy.validate.evaltext import tokenizer_fingerprint


class LogitsSource(Protocol):
    kind: str
    path: Path
    tokenizer: object

    @property
    def runtime(self) -> str:
        """What runs the model, with its version (``onnxruntime 1.23.0 CPU``): reports name it."""

    def last_logits(self, tokens: Tensor, keep: int) -> Tensor:
        """Logits ``[keep, V]`` (float32) of the last ``keep`` positions of ``tokens`` ``[N]``."""

    def begin(self, prompt: Tensor) -> Tensor:
        """Start a sequence from ``prompt`` ``[P]`` (a fresh cache); logits ``[V]`` (float32) of its last position."""

    def advance(self, token: int) -> Tensor:
        """Append one token to the running sequence; logits ``[V]`` (float32) after it."""

    def close(self) -> None:
        """Free the model."""


@dataclass
class TorchSource:
    """A torch causal LM (transformers' or the runtime's): one forward per chunk, no KV cache kept; greedy
    steps keep the model's own cache (``past_key_values``), or re-run the whole sequence if it has none."""

    kind: str
    path: Path
    model: torch.nn.Module
    tokenizer: object
    device: str
    _accepts: frozenset[str] = field(default_factory=frozenset)
    _past: object = None
    _sequence: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._accepts = frozenset(inspect.signature(self.model.forward).parameters)

    @classmethod
    def of(cls, model: torch.nn.Module, path: Path | None = None, tokenizer=None, device: str = "cpu",
           kind: str = "torch") -> "TorchSource":
        """A model already loaded (the export's reference, a benchmark's runtime model) as a source."""
        return cls(kind, Path(path or "."), model, tokenizer, device)

    @property
    def runtime(self) -> str:
        return f"PyTorch {torch.__version__} {self.device.upper()}"

    def last_logits(self, tokens: Tensor, keep: int) -> Tensor:
        kwargs = {"input_ids": tokens.view(1, -1).to(self.device)}
        if "logits_to_keep" in self._accepts:      # skip the LM head on the unscored first half
            kwargs["logits_to_keep"] = keep
        if "use_cache" in self._accepts:
            kwargs["use_cache"] = False
        with torch.inference_mode():
            out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[0, -keep:].float()

    def last_logits_batch(self, rows: list[Tensor], keep: int) -> list[Tensor]:
        """``last_logits`` of several sequences in one forward: right-padded, so no mask is needed (a causal
        model's logits at a real position never see the padding after it). Each item: ``[keep, V]``."""
        width = max(int(r.numel()) for r in rows)
        batch = torch.zeros(len(rows), width, dtype=torch.int64)             # [B, width], padded with id 0
        for i, row in enumerate(rows):
            batch[i, : row.numel()] = row
        kwargs = {"input_ids": batch.to(self.device)}
        if "use_cache" in self._accepts:
            kwargs["use_cache"] = False
        with torch.inference_mode():
            out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]           # [B, width, V]
        return [logits[i, r.numel() - keep: r.numel()].float() for i, r in enumerate(rows)]

    def begin(self, prompt: Tensor) -> Tensor:
        self._past, self._sequence = None, [int(t) for t in prompt.view(-1)]
        return self._step(self._sequence)

    def advance(self, token: int) -> Tensor:
        self._sequence.append(int(token))
        return self._step([int(token)] if self._past is not None else self._sequence)

    def _step(self, ids: list[int]) -> Tensor:
        """Logits [V] after feeding ``ids`` on top of the kept cache (the whole sequence when uncached)."""
        cache_name = cache_arg(self._accepts)     # "cache" from transformers 5.25, else "past_key_values"
        cached = cache_name is not None and "use_cache" in self._accepts
        kwargs = {"input_ids": torch.tensor([ids], device=self.device)}
        if cached:
            kwargs.update({cache_name: self._past, "use_cache": True})
        with torch.inference_mode():
            out = self.model(**kwargs)
        if cached:
            self._past = output_cache(out)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[0, -1].float()

    def close(self) -> None:
        self.model, self._past = None, None


def fingerprint(source: LogitsSource) -> str:
    return tokenizer_fingerprint(source.tokenizer)


def label(source: LogitsSource) -> str:
    return source.path.resolve().name


def _read_config(folder: Path) -> dict:
    from mv4deploy.model.config import load_json
    return load_json(folder / "config.json")


def _is_native(folder: Path) -> bool:
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return False
    from mv4deploy.model.quant_config import quantized_by_us
    from mv4deploy.model.safetensors_headers import read_checkpoint_headers
    from mv4deploy.runtime.name_map import native_layout
    names = [h.name for h in read_checkpoint_headers(folder)]
    return quantized_by_us(_read_config(folder)) or native_layout(names)


def _open_runtime(folder: Path, device: str) -> TorchSource:
    try:
        from mv4deploy.runtime import load_model
    except ImportError as exc:
        raise InputError(folder, "config.json", None, "a DeepSeek-native checkpoint needs mv4deploy.runtime, "
                                                      f"which this installation lacks ({exc})") from exc
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, device=device, dtype=torch.float32)
    return TorchSource("runtime", folder, model.eval(), tokenizer, device)


def _open_transformers(folder: Path, device: str) -> TorchSource:
    from transformers import AutoModelForCausalLM

    from mv4deploy.runtime.quiet import library_bars_off
    tokenizer = load_tokenizer(folder)
    try:
        with library_bars_off():
            model, info = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                               trust_remote_code=False, dtype=torch.float32,
                                                               use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InputError(folder, "config.json", None, f"transformers cannot load it: {first_line(exc)}") from exc
    unloaded = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if unloaded:      # transformers would run these weights randomly initialised: that is not the model
        raise InputError(folder, "weights", unloaded[0], f"transformers leaves {len(unloaded)} weights unloaded "
                                                         "(missing or mismatched)")
    return TorchSource("transformers", folder, model.eval().to(device), tokenizer, device)


def _open_onnx(folder: Path, device: str):
    from mv4deploy.validate.onnx_backends import OrtSource
    return OrtSource.open(folder, device)


def _open_genai(folder: Path, device: str):
    from mv4deploy.validate.onnx_backends import GenaiSource
    return GenaiSource.open(folder, device)


@dataclass(frozen=True)
class Backend:
    kind: str
    matches: Callable[[Path], bool]
    open: Callable[[Path, str], LogitsSource]


BACKENDS: tuple[Backend, ...] = (
    Backend("onnx-genai", lambda f: (f / "genai_config.json").is_file(), _open_genai),
    Backend("onnx", lambda f: any(f.glob("*.onnx")), _open_onnx),
    Backend("runtime", _is_native, _open_runtime),
    Backend("transformers", lambda f: (f / "config.json").is_file(), _open_transformers),
)


# --loader: open the candidate the way an ecosystem does, never falling back to another loader.
LOADERS: dict[str, tuple[str, ...]] = {
    "transformers": ("transformers",),              # AutoModelForCausalLM: what HF users and TGI-style servers load
    "mv4deploy": ("runtime",),                      # our runtime loader (native names, our quantized outputs)
    "onnxruntime": ("onnx-genai", "onnx"),          # the exported graph, as phones and ORT servers run it
}


def open_source(path: str | Path, device: str = "cpu", role: str = "model", loader: str | None = None) -> LogitsSource:
    """Open a model folder with the first backend that recognises it (of ``LOADERS[loader]`` when given)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(folder, None, None, f"{role} must be a folder: a checkpoint (config.json + safetensors), "
                                             "a transformers folder or an ONNX folder")
    check_model_folder(folder)
    if loader is not None and loader not in LOADERS:
        raise InputError(None, "--loader", loader, f"one of {', '.join(LOADERS)}")
    kinds = LOADERS[loader] if loader else tuple(b.kind for b in BACKENDS)
    for backend in BACKENDS:
        if backend.kind in kinds and (backend.matches(folder) or (loader and backend.kind == "transformers"
                                                                  and (folder / "config.json").is_file())):
            return backend.open(folder, device)
    if loader:
        raise InputError(folder, "--loader", loader, f"{role}: this folder is not something {loader} loads "
                                                     f"(needs {'config.json' if loader != 'onnxruntime' else '*.onnx'})")
    raise InputError(folder, None, None, f"{role}: no config.json, *.onnx or genai_config.json in this folder")
