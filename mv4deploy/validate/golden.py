"""Golden files: the reference's next-token distributions on an eval text, so CI can check a candidate
without loading the reference model.

One safetensors file (no pickle), written under a temporary name and renamed when complete:

| tensor          | dtype          | shape    | meaning                                              |
|-----------------|----------------|----------|------------------------------------------------------|
| tokens          | int32          | [C, N]   | the eval chunks, BOS already in place                |
| topk_ids        | int16 or int32 | [S, k]   | the k most likely tokens per scored position (int16 when V <= 32767) |
| topk_logprobs   | float32        | [S, k]   | their natural-log probabilities, descending          |
| tail_logmass    | float32        | [S]      | ln of the probability of every other token           |
| target_logprob  | float32        | [S]      | ln P(token that came next)                           |
| sample_ids      | int16 or int32 | [S, m]   | tail tokens drawn in proportion to P (compressed.py) |
| sample_logprobs | float32        | [S, m]   | their ln P                                           |

``S = C * (N - 1 - N//2)``. The header (safetensors ``__metadata__["mv4deploy_golden"]``, JSON) names the
model, the tokenizer fingerprint, the eval text's sha256 and the chunking, and is checked before a
candidate is scored against the file. At the defaults (k = 128, m = 64) a position costs 6 * 192 + 8 bytes
with int16 ids (8 * 192 + 8 with int32): 2 chunks of 256 tokens are about 300 KB. docs/validation.md has
the measured error of the golden route against the full one for several k and m.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mv4deploy import __version__
from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import atomic_path
from mv4deploy.validate.compressed import CompressedRef
from mv4deploy.validate.evaltext import Chunking, EvalTokens

FORMAT = "mv4deploy-golden/1"
HEADER_KEY = "mv4deploy_golden"
DEFAULT_TOPK = 128
DEFAULT_TAIL_SAMPLES = 64
INT16_MAX_VOCAB = 32767


@dataclass(frozen=True)
class GoldenHeader:
    model: str                 # the reference's folder name
    model_kind: str            # backend that produced it: runtime | transformers | onnx | onnx-genai
    tokenizer_sha256: str      # evaltext.tokenizer_fingerprint of the reference's tokenizer
    eval_name: str
    eval_sha256: str           # of the eval text's bytes
    eval_tokens: int           # the whole text's tokens (the chunks hold the first chunks * chunk_tokens)
    chunk_tokens: int
    chunks: int
    scored_per_chunk: int
    topk: int                  # head tokens per position (min(k, V))
    tail_samples: int          # tail tokens drawn per position (0 when the head covers the vocabulary)
    sample_seed: int           # seed of the generator that placed the samples
    vocab_size: int            # width of the reference's logits
    bos_id: int | None
    format: str = FORMAT
    tool_version: str = __version__


@dataclass(frozen=True)
class Golden:
    header: GoldenHeader
    tokens: torch.Tensor       # [C, N] int64
    reference: CompressedRef   # S positions

    def eval_tokens(self) -> EvalTokens:
        h = self.header
        return EvalTokens(self.tokens, Chunking(h.chunk_tokens), h.eval_name, h.eval_sha256, h.eval_tokens,
                          h.bos_id)


def write_golden(path: Path, golden: Golden) -> None:
    from safetensors.torch import save_file
    h, ref = golden.header, golden.reference
    id_dtype = torch.int16 if h.vocab_size <= INT16_MAX_VOCAB else torch.int32
    tensors = {"tokens": golden.tokens.to(torch.int32).contiguous(),
               "topk_ids": ref.ids.to(id_dtype).contiguous(),
               "topk_logprobs": ref.logp.to(torch.float32).contiguous(),
               "tail_logmass": ref.tail_logmass.to(torch.float32).contiguous(),
               "target_logprob": ref.target_logp.to(torch.float32).contiguous(),
               "sample_ids": ref.sample_ids.to(id_dtype).contiguous(),
               "sample_logprobs": ref.sample_logp.to(torch.float32).contiguous()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(asdict(h), sort_keys=True)})
        os.chmod(tmp, 0o644)   # safetensors creates 0600; a golden file is meant to be committed and shared


def read_golden(path: Path) -> Golden:
    """Read and check a golden file; any inconsistency is an ``InputError`` naming the field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, None, "golden file not found")
    tensors, metadata = _load(path)
    header = _header(path, metadata)
    _check_shapes(path, header, tensors)
    ids = {name: tensors[name].to(torch.int64) for name in ("topk_ids", "sample_ids")}
    for name, t in ids.items():
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= header.vocab_size):
            raise InputError(path, name, int(t.max()), f"ids must lie in [0, {header.vocab_size})")
    reference = CompressedRef(ids["topk_ids"], tensors["topk_logprobs"], tensors["tail_logmass"],
                              tensors["target_logprob"], ids["sample_ids"], tensors["sample_logprobs"])
    return Golden(header, tensors["tokens"].to(torch.int64), reference)


def _load(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, None, None, f"not a readable safetensors file: {exc}") from exc
    return tensors, metadata


def _header(path: Path, metadata: dict) -> GoldenHeader:
    if HEADER_KEY not in metadata:
        raise InputError(path, "__metadata__", sorted(metadata), f"no {HEADER_KEY!r} header: not a golden file")
    try:
        raw = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise InputError(path, HEADER_KEY, None, f"header is not JSON ({exc.msg})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise InputError(path, "format", found, f"expected {FORMAT!r}")
    fields = GoldenHeader.__dataclass_fields__
    missing = sorted(set(fields) - set(raw))
    unknown = sorted(set(raw) - set(fields))
    if missing or unknown:
        reason = "missing header fields" if missing else "unknown header fields"
        raise InputError(path, HEADER_KEY, missing or unknown, reason)
    for name, least in (("chunk_tokens", 1), ("chunks", 1), ("eval_tokens", 1), ("scored_per_chunk", 1), ("topk", 1),
                        ("vocab_size", 1), ("tail_samples", 0), ("sample_seed", 0)):
        if not isinstance(raw[name], int) or isinstance(raw[name], bool) or raw[name] < least:
            raise InputError(path, name, raw[name], f"must be an integer >= {least}")
    header = GoldenHeader(**raw)
    scored = Chunking(header.chunk_tokens).scored_per_chunk
    if header.scored_per_chunk != scored:
        raise InputError(path, "scored_per_chunk", header.scored_per_chunk,
                         f"chunks of {header.chunk_tokens} tokens score {scored}")
    return header


def _check_shapes(path: Path, h: GoldenHeader, tensors: dict) -> None:
    s = h.chunks * h.scored_per_chunk
    k = min(h.topk, h.vocab_size)
    expected = {"tokens": ((h.chunks, h.chunk_tokens), (torch.int32,)),
                "topk_ids": ((s, k), (torch.int16, torch.int32)),
                "topk_logprobs": ((s, k), (torch.float32,)),
                "tail_logmass": ((s,), (torch.float32,)),
                "target_logprob": ((s,), (torch.float32,)),
                "sample_ids": ((s, h.tail_samples), (torch.int16, torch.int32)),
                "sample_logprobs": ((s, h.tail_samples), (torch.float32,))}
    for name, (shape, dtypes) in expected.items():
        if name not in tensors:
            raise InputError(path, name, None, "tensor missing")
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise InputError(path, name, list(t.shape), f"shape must be {list(shape)} from the header")
        if t.dtype not in dtypes:
            raise InputError(path, name, str(t.dtype), f"dtype must be one of {[str(d) for d in dtypes]}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise InputError(path, "tensors", extra, "unexpected tensors in a golden file")
