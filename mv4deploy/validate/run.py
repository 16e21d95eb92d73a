"""``mv4deploy validate``: score a candidate against a reference model or a golden file, optionally write
a golden file, and check a gate.

Two routes to the same statistics:
- reference + candidate: both models are loaded; each chunk runs through both and is scored over the full
  vocabulary (exact). With ``golden_out`` the reference's top-k log-probs are kept and written as well.
- golden + candidate: only the candidate is loaded; it is scored against the golden file's top-k
  log-probs (see ``metrics.position_stats_topk`` for what that approximates).
Reference + ``golden_out`` without a candidate just writes the golden file.

Memory is bounded by one chunk's logits per model ([N/2, V] float64 each), whatever the text length.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from mv4deploy.core.device import resolve_device
from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import sha256_file
from mv4deploy.validate.backends import LogitsSource, TorchSource, fingerprint, label, open_source
from mv4deploy.validate.evaltext import MIN_CHUNK_TOKENS, EvalTokens, tokenize_eval
from mv4deploy.validate.gate import Gate, GateResult, check_gate, load_gate
from mv4deploy.validate.golden import (DEFAULT_TAIL_SAMPLES, DEFAULT_TOPK, Golden, GoldenHeader, read_golden,
                                       write_golden)
from mv4deploy.validate.compressed import CompressedRef, compress, position_stats_compressed
from mv4deploy.validate.metrics import PositionStats, log_probs, position_stats
from mv4deploy.validate.stats import summarize, summary_keys

DEFAULT_CHUNK_TOKENS = 256
Progress = Callable[[str, int], object]   # (description, total) -> context manager yielding advance()


@dataclass(frozen=True)
class ValidateRequest:
    reference: Path | None = None
    candidate: Path | None = None
    eval_path: Path | None = None
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    max_chunks: int | None = None
    golden: Path | None = None
    golden_out: Path | None = None
    topk: int = DEFAULT_TOPK
    tail_samples: int = DEFAULT_TAIL_SAMPLES
    sample_seed: int = 0
    gate: Path | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class ModelInfo:
    path: str
    kind: str
    tokenizer_sha256: str


@dataclass(frozen=True)
class ValidationResult:
    reference: ModelInfo
    candidate: ModelInfo | None
    eval_tokens: EvalTokens
    golden: str | None
    golden_out: str | None
    summary: dict | None
    gate: GateResult | None
    positions: PositionStats | None
    seconds: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        et = self.eval_tokens
        summary = self.summary or dict.fromkeys(sorted(summary_keys()))
        return {"reference": vars(self.reference), "candidate": vars(self.candidate) if self.candidate else None,
                "golden": self.golden, "golden_out": self.golden_out,
                "eval": {"name": et.name, "sha256": et.sha256, "tokens": et.total_tokens},
                "chunk_tokens": et.chunking.chunk_tokens, "chunks": et.chunks,
                "scored_per_chunk": et.chunking.scored_per_chunk, **summary,
                "gate": self.gate.to_json() if self.gate else None, "seconds": self.seconds}


def validate(req: ValidateRequest, progress: Progress | None = None) -> ValidationResult:
    _check_request(req)
    req = replace(req, device=resolve_device(req.device))
    gate = load_gate(req.gate, summary_keys()) if req.gate else None   # fail on a bad gate before loading
    progress = progress or _no_progress
    if req.golden is not None:
        return _against_golden(req, gate, progress)
    return _against_reference(req, gate, progress)


def _against_reference(req: ValidateRequest, gate: Gate | None, progress: Progress) -> ValidationResult:
    start = time.perf_counter()
    ref = open_source(req.reference, req.device, role="reference")
    et = tokenize_eval(req.eval_path, ref.tokenizer, req.chunk_tokens, req.max_chunks)
    ref_info = ModelInfo(str(req.reference), ref.kind, fingerprint(ref))
    cand, cand_info = None, None
    if req.candidate is not None:
        cand = open_source(req.candidate, req.device, role="candidate")
        cand_info = ModelInfo(str(req.candidate), cand.kind, fingerprint(cand))
        _same_tokenizer(req.candidate, cand_info.tokenizer_sha256, ref_info.tokenizer_sha256, "the reference's")
    loaded = time.perf_counter()
    parts, compressed, vocab = [], [], 0
    generator = torch.Generator().manual_seed(req.sample_seed)
    with progress("scoring chunks", et.chunks) as advance:
        for chunk in et.tokens:
            targets = et.chunking.targets(chunk)
            lp = _log_probs(ref, chunk, et)
            vocab = lp.shape[-1]
            if req.golden_out is not None:
                compressed.append(compress(lp, targets, req.topk, req.tail_samples, generator))
            if cand is not None:
                lq = _log_probs(cand, chunk, et)
                _same_width(req.candidate, lq.shape[-1], vocab)
                parts.append(position_stats(lp, lq, targets))
            advance(1)
    if req.golden_out is not None:
        rows = CompressedRef.concat(compressed)
        header = _golden_header(ref_info, label(ref), et, rows, vocab, req.sample_seed)
        write_golden(req.golden_out, Golden(header, et.tokens, rows))
    return _result(req, gate, ref_info, cand_info, et, parts, start, loaded)


def _against_golden(req: ValidateRequest, gate: Gate | None, progress: Progress) -> ValidationResult:
    start = time.perf_counter()
    golden = read_golden(req.golden)
    h = golden.header
    if req.eval_path is not None and sha256_file(req.eval_path) != h.eval_sha256:
        raise InputError(req.eval_path, "sha256", sha256_file(req.eval_path)[:12],
                         f"differs from the eval text the golden file was made from "
                         f"({h.eval_name}, {h.eval_sha256[:12]})")
    cand = open_source(req.candidate, req.device, role="candidate")
    cand_info = ModelInfo(str(req.candidate), cand.kind, fingerprint(cand))
    _same_tokenizer(req.candidate, cand_info.tokenizer_sha256, h.tokenizer_sha256, f"the golden file's ({req.golden})")
    et = golden.eval_tokens()
    if req.max_chunks is not None:
        et = replace(et, tokens=et.tokens[: req.max_chunks])
    chunks = et.chunks
    per = et.chunking.scored_per_chunk
    loaded = time.perf_counter()
    parts = []
    with progress("scoring chunks", chunks) as advance:
        for i in range(chunks):
            chunk = et.tokens[i]
            lq = _log_probs(cand, chunk, et)
            _same_width(req.candidate, lq.shape[-1], h.vocab_size)
            parts.append(position_stats_compressed(golden.reference.rows(i * per, (i + 1) * per), lq,
                                                   et.chunking.targets(chunk)))
            advance(1)
    ref_info = ModelInfo(h.model, f"golden ({h.model_kind})", h.tokenizer_sha256)
    return _result(req, gate, ref_info, cand_info, et, parts, start, loaded)


def _result(req, gate, ref_info, cand_info, et, parts, start, loaded) -> ValidationResult:
    positions = PositionStats.concat(parts) if parts else None
    confidence = gate.confidence if gate else 0.95
    summary = summarize(positions, confidence) if positions is not None else None
    done = time.perf_counter()
    seconds = {"load_s": round(loaded - start, 3), "score_s": round(done - loaded, 3),
               "total_s": round(done - start, 3)}
    return ValidationResult(ref_info, cand_info, et, str(req.golden) if req.golden else None,
                            str(req.golden_out) if req.golden_out else None, summary,
                            check_gate(gate, summary) if gate and summary else None, positions, seconds)


def _log_probs(source: LogitsSource, chunk, et: EvalTokens):
    """Float64 log-probs ``[N - 1 - N//2, V]`` of the scored positions of one chunk."""
    logits = source.last_logits(chunk, et.chunking.logits_kept)
    return log_probs(logits[:-1])


def compare_models(reference: torch.nn.Module, candidate: torch.nn.Module, et: EvalTokens,
                   device: str = "cpu") -> dict:
    """``summarize`` of two torch models already loaded (fixtures, benchmarks), scored as ``compare_sources``."""
    ref, cand = TorchSource.of(reference, device=device), TorchSource.of(candidate, device=device)
    return summarize(compare_sources(ref, cand, et))


def compare_sources(reference: LogitsSource, candidate: LogitsSource, et: EvalTokens) -> PositionStats:
    """Full-vocabulary statistics of ``candidate`` against ``reference`` on the scored positions of every
    chunk of ``et``, exactly as ``mv4deploy validate`` scores them (export and benchmarks use this)."""
    parts = [position_stats(_log_probs(reference, chunk, et), _log_probs(candidate, chunk, et),
                            et.chunking.targets(chunk)) for chunk in et.tokens]
    return PositionStats.concat(parts)


def _golden_header(info: ModelInfo, name: str, et: EvalTokens, rows: CompressedRef, vocab: int,
                   seed: int) -> GoldenHeader:
    return GoldenHeader(model=name, model_kind=info.kind, tokenizer_sha256=info.tokenizer_sha256,
                        eval_name=et.name, eval_sha256=et.sha256, eval_tokens=et.total_tokens,
                        chunk_tokens=et.chunking.chunk_tokens,
                        chunks=et.chunks, scored_per_chunk=et.chunking.scored_per_chunk, topk=rows.ids.shape[1],
                        tail_samples=rows.sample_ids.shape[1], sample_seed=seed, vocab_size=vocab,
                        bos_id=et.bos_id)


def _same_tokenizer(path: Path, found: str, expected: str, whose: str) -> None:
    if found != expected:
        raise InputError(path, "tokenizer", found[:12], f"differs from {whose} ({expected[:12]}): the two "
                                                        "would read the eval text as different tokens")


def _same_width(path: Path, found: int, expected: int) -> None:
    if found != expected:
        raise InputError(path, "logits", found, f"vocabulary width differs from the reference's ({expected})")


def _check_request(req: ValidateRequest) -> None:
    rules = (
        (req.golden is not None and req.reference is not None, "--golden", "give --reference or --golden, not both"),
        (req.golden is None and req.reference is None, "--reference", "required (or --golden FILE)"),
        (req.golden is not None and req.golden_out is not None, "--golden-out", "writes a golden file from "
                                                                                "--reference; not with --golden"),
        (req.golden is not None and req.candidate is None, "--candidate", "required with --golden"),
        (req.reference is not None and req.eval_path is None, "--eval", "required with --reference"),
        (req.reference is not None and req.candidate is None and req.golden_out is None, "--candidate",
         "nothing to do: add --candidate and/or --golden-out"),
        (req.gate is not None and req.candidate is None, "--gate", "needs --candidate"),
        (req.topk < 1, "--topk", "must be at least 1"),
        (req.tail_samples < 0, "--tail-samples", "must be at least 0"),
        (req.max_chunks is not None and req.max_chunks < 1, "--max-chunks", "must be at least 1"),
    )
    for broken, option, reason in rules:
        if broken:
            raise InputError(None, option, None, reason)
    if req.chunk_tokens < MIN_CHUNK_TOKENS:   # checked here too: with --golden the file's chunking is used
        raise InputError(None, "--chunk", req.chunk_tokens, f"must be at least {MIN_CHUNK_TOKENS} tokens")
    if req.eval_path is not None and not Path(req.eval_path).is_file():
        raise InputError(req.eval_path, None, None, "eval text not found")
    if req.golden_out is not None and not Path(req.golden_out).parent.is_dir():
        raise InputError(req.golden_out, None, None, "its folder does not exist")


@contextmanager
def _no_progress(description: str, total: int):
    with nullcontext():
        yield lambda n=1: None
