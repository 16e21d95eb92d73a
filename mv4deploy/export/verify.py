"""Every export checks itself against PyTorch before it reports success.

Two checks, on the same tokens for the reference (the transformers model in fp32) and the export, both
opened as ``validate.backends.LogitsSource``s (the export through the backend ``mv4deploy validate`` would
pick for its folder, the QNN pair through ``static_host.StaticRunner``):

1. Next-token distributions on held-out text, tokenized and chunked by ``validate.evaltext`` (chunks of
   N tokens, BOS first when the tokenizer adds one), each run from an empty cache; the second half of
   each chunk is scored (positions N//2 .. N-2 predict tokens N//2+1 .. N-1, as ``llama-perplexity``
   does). ``validate.run.compare_sources`` and ``validate.stats.summarize`` make the statistics, so an
   export and ``mv4deploy validate`` report the same numbers on the same positions.
2. Greedy generation (``begin``/``advance``): from the first ``prompt_tokens`` of the first chunks, both
   generate ``greedy_tokens`` tokens by argmax (EOS does not stop either side, so both always make the
   same number). The score is how many leading tokens agree, per prompt and on average.

A target's tolerance (exporters/*.yaml) is a ``validate.gate.Gate`` judged by ``check_gate``: ``kld_mean_max``,
``top1_min`` (like every gate, on the Wilson lower bound of the same-top-1 rate at 95 %) and
``greedy_prefix_mean_min`` (the mean agreeing prefix).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from mv4deploy.export.targets import Tolerance
from mv4deploy.validate.backends import LogitsSource, TorchSource
from mv4deploy.validate.gate import Gate, check_gate, make_gate
from mv4deploy.validate.run import no_progress, compare_sources
from mv4deploy.validate.stats import summarize, summary_keys

if TYPE_CHECKING:
    from mv4deploy.validate.evaltext import EvalTokens

GREEDY_METRIC = "greedy_prefix_mean"      # what greedy_prefix_mean_min bounds


def reference_source(model, source) -> TorchSource:
    """The transformers model the export was built from (already loaded, fp32, CPU) as a logits source."""
    return TorchSource.of(model, source.folder, source.tokenizer, kind="transformers")


def tolerance_gate(tol: Tolerance, where: str) -> Gate:
    """The target's limits read as a gate file is read (``where`` names the target file in messages)."""
    limits = {"kld_mean_max": tol.kld_mean_max, "top1_min": tol.top1_min,
              "greedy_prefix_mean_min": tol.greedy_prefix_mean_min}
    return make_gate(limits, where, summary_keys() | {GREEDY_METRIC})


def greedy(source: LogitsSource, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """``new_tokens`` argmax tokens after ``prompt`` [P] (no EOS stop)."""
    logits = source.begin(prompt)
    out: list[int] = []
    while True:
        out.append(int(torch.argmax(logits)))
        if len(out) == new_tokens:
            return out
        logits = source.advance(out[-1])


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_greedy(reference: LogitsSource, candidate: LogitsSource, tokens: "EvalTokens", tol: Tolerance,
                   progress=None) -> dict:
    prefixes, samples = [], []
    prompts = tokens.tokens[: tol.greedy_prompts, : tol.prompt_tokens]
    with (progress or no_progress)("validating: greedy runs", len(prompts)) as advance:
        for prompt in prompts:
            ref = greedy(reference, prompt, tol.greedy_tokens)
            cand = greedy(candidate, prompt, tol.greedy_tokens)
            prefixes.append(agreeing_prefix(ref, cand))
            samples.append({"prompt": prompt.tolist(), "reference": ref, "export": cand})
            advance(1)
    return {"prompts": len(prefixes), "prompt_tokens": tol.prompt_tokens, "new_tokens": tol.greedy_tokens,
            "agreeing_prefix": prefixes, "agreeing_prefix_mean": sum(prefixes) / len(prefixes),
            "identical": sum(p == tol.greedy_tokens for p in prefixes), "samples": samples}


def verify(reference: LogitsSource, candidate: LogitsSource, tokens: "EvalTokens", tol: Tolerance,
           where: str = "validation", progress=None) -> dict:
    """Run both checks and judge them with the target's gate; ``failures`` describes each missed limit.
    ``progress(description, total)`` (a context manager yielding ``advance``) sees both steps."""
    start = time.perf_counter()
    stats = summarize(compare_sources(reference, candidate, tokens, progress))
    gen = compare_greedy(reference, candidate, tokens, tol, progress)
    gate = check_gate(tolerance_gate(tol, where), {**stats, GREEDY_METRIC: gen["agreeing_prefix_mean"]})
    return {
        "eval": {"text": tokens.name, "sha256": tokens.sha256, "chunks": tokens.chunks,
                 "chunk_tokens": tokens.chunking.chunk_tokens, "bos_id": tokens.bos_id},
        "stats": stats, "greedy": gen, "gate": gate.to_json(),
        "passed": gate.passed, "failures": [c.describe() for c in gate.failures],
        "seconds": round(time.perf_counter() - start, 2),
    }
