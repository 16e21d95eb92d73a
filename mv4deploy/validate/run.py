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
from mv4deploy.validate import contexts as ctx
from mv4deploy.validate import paired
from mv4deploy.validate.backends import LOADERS, LogitsSource, TorchSource, fingerprint, label, open_source
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
    contexts: tuple[int, ...] = ()        # --contexts: lengths scored on the same targets (contexts.py)
    context_windows: int = ctx.DEFAULT_WINDOWS
    tasks: tuple = ()                     # --tasks: tasks.TaskSpec, run through lm-eval on both models
    task_limit: int | None = None
    loader: str | None = None             # --loader: how the candidate is opened (backends.LOADERS)


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
    contexts: dict | None = None
    tasks: list[dict] | None = None

    def to_json(self) -> dict:
        et = self.eval_tokens
        summary = self.summary or dict.fromkeys(sorted(summary_keys()))
        extra = {**ctx.growth(self.contexts and self.contexts["per_length"]), **paired.gate_values(self.tasks)}
        return {"reference": vars(self.reference), "candidate": vars(self.candidate) if self.candidate else None,
                "golden": self.golden, "golden_out": self.golden_out,
                "eval": {"name": et.name, "sha256": et.sha256, "tokens": et.total_tokens},
                "chunk_tokens": et.chunking.chunk_tokens, "chunks": et.chunks,
                "scored_per_chunk": et.chunking.scored_per_chunk, **summary, **extra,
                "contexts": self.contexts, "tasks": self.tasks,
                "gate": self.gate.to_json() if self.gate else None, "seconds": self.seconds}


def validate(req: ValidateRequest, progress: Progress | None = None) -> ValidationResult:
    _check_request(req)
    req = replace(req, device=resolve_device(req.device))
    gate = load_gate(req.gate, gate_keys()) if req.gate else None   # fail on a bad gate before loading
    _check_gate_needs(req, gate)
    progress = progress or no_progress
    if req.golden is not None:
        return _against_golden(req, gate, progress)
    return _against_reference(req, gate, progress)


def _against_reference(req: ValidateRequest, gate: Gate | None, progress: Progress) -> ValidationResult:
    start = time.perf_counter()
    ref = _open(req.reference, req.device, "reference", None, progress)
    et = tokenize_eval(req.eval_path, ref.tokenizer, req.chunk_tokens, req.max_chunks)
    ref_info = ModelInfo(str(req.reference), ref.kind, fingerprint(ref))
    cand, cand_info = None, None
    if req.candidate is not None:
        cand = _open(req.candidate, req.device, "candidate", req.loader, progress)
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
    result = _result(req, gate, ref_info, cand_info, et, parts, start, loaded)
    return _long_and_task_checks(req, gate, result, ref, cand, progress) if cand is not None else result


def _long_and_task_checks(req: ValidateRequest, gate: Gate | None, result: ValidationResult, ref: LogitsSource,
                          cand: LogitsSource, progress: Progress) -> ValidationResult:
    """``--contexts`` and ``--tasks`` on the loaded pair; the gate is judged again on every statistic."""
    if not req.contexts and not req.tasks:
        return result
    confidence = gate.confidence if gate else 0.95
    seconds = dict(result.seconds)
    contexts = tasks = None
    if req.contexts:
        t0 = time.perf_counter()
        windows = ctx.make_windows(ctx.text_ids(req.eval_path, ref.tokenizer), req.contexts, req.context_windows,
                                   result.eval_tokens.bos_id, str(req.eval_path))
        contexts = ctx.score_contexts(ref, cand, windows, progress, confidence)
        seconds["contexts_s"] = round(time.perf_counter() - t0, 3)
    if req.tasks:
        from mv4deploy.validate.tasks import run_tasks
        t0 = time.perf_counter()
        answers = [run_tasks(src, req.tasks, req.task_limit, progress, role) for src, role in
                   ((ref, "reference"), (cand, "candidate"))]
        tasks = [paired.compare_task(name, answers[0][name], answers[1][name]) for name in answers[0]]
        seconds["tasks_s"] = round(time.perf_counter() - t0, 3)
    seconds["total_s"] = round(result.seconds["total_s"] + sum(seconds.get(k, 0) for k in ("contexts_s", "tasks_s")), 3)
    result = replace(result, contexts=contexts, tasks=tasks, seconds=seconds)
    if gate is not None:
        values = {**result.summary, **ctx.growth(contexts and contexts["per_length"]), **paired.gate_values(tasks)}
        result = replace(result, gate=check_gate(gate, values))
    return result


def _against_golden(req: ValidateRequest, gate: Gate | None, progress: Progress) -> ValidationResult:
    start = time.perf_counter()
    golden = read_golden(req.golden)
    h = golden.header
    if req.eval_path is not None and sha256_file(req.eval_path) != h.eval_sha256:
        raise InputError(req.eval_path, "sha256", sha256_file(req.eval_path)[:12],
                         f"differs from the eval text the golden file was made from "
                         f"({h.eval_name}, {h.eval_sha256[:12]})")
    cand = _open(req.candidate, req.device, "candidate", req.loader, progress)
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


def gate_keys() -> frozenset[str]:
    """Every statistic a gate may name: the short-chunk summary, the long-context growth, the task keys."""
    return summary_keys() | frozenset(ctx.GROWTH_KEYS) | frozenset(paired.GATE_KEYS)


def _check_gate_needs(req: ValidateRequest, gate: Gate | None) -> None:
    for limit in gate.limits if gate else ():
        for prefix, given, option in (("context_", req.contexts, "--contexts"), ("task_", req.tasks, "--tasks")):
            if limit.metric.startswith(prefix) and not given:
                raise InputError(req.gate, limit.key, limit.value, f"limits a {option} statistic; add {option}")


def _open(path: Path, device: str, role: str, loader: str | None, progress: Progress) -> LogitsSource:
    with progress(f"loading the {role} ({path})", 1) as advance:
        source = open_source(path, device, role=role, loader=loader)
        advance(1)
    return source


def _log_probs(source: LogitsSource, chunk, et: EvalTokens):
    """Float64 log-probs ``[N - 1 - N//2, V]`` of the scored positions of one chunk."""
    logits = source.last_logits(chunk, et.chunking.logits_kept)
    return log_probs(logits[:-1])


def compare_models(reference: torch.nn.Module, candidate: torch.nn.Module, et: EvalTokens,
                   device: str = "cpu") -> dict:
    """``summarize`` of two torch models already loaded (fixtures, benchmarks), scored as ``compare_sources``."""
    ref, cand = TorchSource.of(reference, device=device), TorchSource.of(candidate, device=device)
    return summarize(compare_sources(ref, cand, et))


def compare_sources(reference: LogitsSource, candidate: LogitsSource, et: EvalTokens,
                    progress: Progress | None = None) -> PositionStats:
    """Full-vocabulary statistics of ``candidate`` against ``reference`` on the scored positions of every
    chunk of ``et``, exactly as ``mv4deploy validate`` scores them (export and benchmarks use this)."""
    parts = []
    with (progress or no_progress)("scoring chunks", et.chunks) as advance:
        for chunk in et.tokens:
            parts.append(position_stats(_log_probs(reference, chunk, et), _log_probs(candidate, chunk, et),
                                        et.chunking.targets(chunk)))
            advance(1)
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
        ((bool(req.contexts) or bool(req.tasks)) and (req.reference is None or req.candidate is None),
         "--contexts" if req.contexts else "--tasks", "runs both models: needs --reference and --candidate"),
        (req.context_windows < 1, "--context-windows", "must be at least 1"),
        (req.task_limit is not None and req.task_limit < 1, "--task-limit", "must be at least 1"),
        (req.loader is not None and req.loader not in LOADERS, "--loader", f"one of {', '.join(LOADERS)}"),
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
def no_progress(description: str, total: int):
    """A ``Progress`` that shows nothing (library callers that pass none)."""
    with nullcontext():
        yield lambda n=1: None
