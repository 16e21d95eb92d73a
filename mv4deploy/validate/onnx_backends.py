"""ONNX folders as logits sources: plain onnxruntime, or onnxruntime-genai when genai_config.json is there.

Exported decoders (torch.onnx, the genai builder) take ``input_ids``, ``attention_mask``, optionally
``position_ids``, and ``past_key_values.*`` inputs. One chunk is a prefill from an empty cache, so the past
inputs get a sequence length of 0; their other symbolic dimensions are the batch (1) and the head size,
read from genai_config.json or config.json beside the model. Greedy steps (``begin``/``advance``) feed each
``present.N.key`` output back as the next call's ``past_key_values.N.key``, with the attention mask and
positions continuing from the cached length: the caller-held KV loop a plain onnxruntime user writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mv4deploy.core.errors import InputError, first_line
from mv4deploy.model.tokenizer import load_tokenizer

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bfloat16)": np.float32}
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."   # past_key_values.N.key <- present.N.key


def _providers(device: str) -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]


def _head_size(folder: Path) -> int | None:
    genai = folder / "genai_config.json"
    if genai.is_file():
        size = json.loads(genai.read_text()).get("model", {}).get("decoder", {}).get("head_size")
        if size:
            return int(size)
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        if cfg.get("head_dim"):
            return int(cfg["head_dim"])
        if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
            return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    return None


def _model_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.onnx"))
    preferred = [f for f in files if f.name == "model.onnx"]
    if preferred or len(files) == 1:
        return (preferred or files)[0]
    raise InputError(folder, "*.onnx", [f.name for f in files], "several ONNX files and none is model.onnx")


@dataclass
class OrtSource:
    """A decoder run by onnxruntime: one prefill per chunk; greedy steps keep the KV outputs."""

    kind: str
    path: Path
    session: object
    tokenizer: object
    head_size: int | None
    _cache: dict | None = None     # past_key_values.* of the running greedy sequence
    _length: int = 0               # tokens in that cache

    @classmethod
    def open(cls, folder: Path, device: str) -> "OrtSource":
        import onnxruntime as ort
        model = _model_file(folder)
        tokenizer = load_tokenizer(folder)
        try:
            session = ort.InferenceSession(str(model), providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types; all mean a bad file
            raise InputError(model, None, None, f"onnxruntime cannot load it: {first_line(exc)}") from exc
        if "logits" not in [o.name for o in session.get_outputs()]:
            raise InputError(model, "outputs", [o.name for o in session.get_outputs()], "no 'logits' output")
        return cls("onnx", folder, session, tokenizer, _head_size(folder))

    def _past(self, spec) -> np.ndarray:
        shape = []
        for dim in spec.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif "batch" in dim:
                shape.append(1)
            elif "seq" in dim or "past" in dim:
                shape.append(0)
            elif self.head_size is not None:
                shape.append(self.head_size)
            else:
                raise InputError(self.path, spec.name, dim, "cannot size this input: no head size in "
                                                            "genai_config.json or config.json")
        return np.zeros(shape, dtype=ORT_DTYPES.get(spec.type, np.float32))

    @property
    def runtime(self) -> str:
        import onnxruntime as ort
        return f"onnxruntime {ort.__version__} {self.session.get_providers()[0].replace('ExecutionProvider', '')}"

    def _feeds(self, ids: np.ndarray, start: int, past: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Inputs for ``ids`` [n] after ``start`` cached tokens; empty past inputs unless ``past`` is given."""
        n = len(ids)
        feeds = {}
        for spec in self.session.get_inputs():
            if spec.name == "input_ids":
                feeds[spec.name] = ids.reshape(1, n).astype(ORT_DTYPES[spec.type])
            elif spec.name == "attention_mask":
                feeds[spec.name] = np.ones((1, start + n), dtype=ORT_DTYPES[spec.type])
            elif spec.name == "position_ids":
                feeds[spec.name] = np.arange(start, start + n, dtype=ORT_DTYPES[spec.type]).reshape(1, n)
            else:
                feeds[spec.name] = self._past(spec) if past is None else past[spec.name]
        return feeds

    def last_logits(self, tokens: Tensor, keep: int) -> Tensor:
        logits = self.session.run(["logits"], self._feeds(tokens.view(-1).numpy(), 0, None))[0]
        return torch.from_numpy(np.ascontiguousarray(logits[0, -keep:], dtype=np.float32))

    def begin(self, prompt: Tensor) -> Tensor:
        self._cache, self._length = None, 0
        return self._step(prompt.view(-1).numpy())

    def advance(self, token: int) -> Tensor:
        return self._step(np.asarray([token], dtype=np.int64))

    def _step(self, ids: np.ndarray) -> Tensor:
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, self._feeds(ids, self._length, self._cache))))
        self._cache = {PAST_PREFIX + name[len(PRESENT_PREFIX):]: value for name, value in outputs.items()
                       if name.startswith(PRESENT_PREFIX)}
        missing = {i.name for i in self.session.get_inputs() if i.name not in TOKEN_INPUTS} - set(self._cache)
        if missing:
            raise InputError(self.path, "outputs", sorted(missing)[0], "no matching present.* output: "
                                                                      "this graph cannot continue a sequence")
        self._length += len(ids)
        return torch.from_numpy(np.ascontiguousarray(outputs["logits"][0, -1], dtype=np.float32))

    def close(self) -> None:
        self.session = None


@dataclass
class GenaiSource:
    """An onnxruntime-genai folder: append one chunk to a fresh generator and read all its logits."""

    kind: str
    path: Path
    model: object
    tokenizer: object
    _running: object = None        # the generator of the running greedy sequence

    @classmethod
    def open(cls, folder: Path, device: str) -> "GenaiSource":
        import onnxruntime_genai as og
        tokenizer = load_tokenizer(folder)
        try:
            model = og.Model(str(folder))
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeError/OrtException for bad folders
            raise InputError(folder, "genai_config.json", None, f"onnxruntime-genai cannot load it: "
                                                                f"{first_line(exc)}") from exc
        return cls("onnx-genai", folder, model, tokenizer)

    @property
    def runtime(self) -> str:
        import onnxruntime_genai as og
        return f"onnxruntime-genai {og.__version__}"

    def _generator(self, max_length: int | None):
        """A greedy generator; ``max_length`` None keeps genai_config.json's search.max_length (the KV buffer)."""
        import onnxruntime_genai as og
        params = og.GeneratorParams(self.model)
        if max_length is None:
            params.set_search_options(do_sample=False)
        else:
            params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(self.model, params)

    def last_logits(self, tokens: Tensor, keep: int) -> Tensor:
        generator = self._generator(int(tokens.numel()) + 1)
        generator.append_tokens(tokens.view(1, -1).numpy().astype(np.int32))
        logits = generator.get_output("logits")   # [1, N, V] after a prefill
        return torch.from_numpy(np.ascontiguousarray(logits[0, -keep:], dtype=np.float32))

    def begin(self, prompt: Tensor) -> Tensor:
        self._running = self._generator(None)
        return self._append(prompt.view(-1).numpy())

    def advance(self, token: int) -> Tensor:
        return self._append(np.asarray([token]))

    def _append(self, ids: np.ndarray) -> Tensor:
        self._running.append_tokens(ids.astype(np.int32))
        return torch.from_numpy(np.asarray(self._running.get_logits(), dtype=np.float32).reshape(-1))

    def close(self) -> None:
        self.model, self._running = None, None
