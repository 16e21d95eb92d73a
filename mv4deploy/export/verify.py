"""Every export checks itself against PyTorch before it reports success.

Two checks, on the same tokens for the reference (the transformers model in fp32) and the export:

1. Next-token distributions on held-out text, tokenized and chunked by ``validate.evaltext`` (chunks of
   N tokens, BOS first when the tokenizer adds one), each run from an empty cache; the second half of
   each chunk is scored (positions N//2 .. N-2 predict tokens N//2+1 .. N-1, as ``llama-perplexity``
   does). KLD, Δp, same-top-1 and the PPL ratio come from ``validate.metrics`` / ``validate.stats``, so
   an export and ``mv4deploy validate`` report the same statistics on the same positions.
2. Greedy generation: from the first ``prompt_tokens`` of the first chunks, both generate
   ``greedy_tokens`` tokens by argmax (EOS does not stop either side, so both always make the same
   number). The score is how many leading tokens agree, per prompt and on average.

A target's tolerance (exporters/*.yaml) bounds mean KLD, same-top-1 and the mean agreeing prefix.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from mv4deploy.export.targets import Tolerance

if TYPE_CHECKING:
    from mv4deploy.validate.evaltext import EvalTokens


class Runner(Protocol):
    """A model that scores chunks and generates: the reference and every export implement it."""

    label: str

    def chunk_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [N, V] (float32) of every position of ``tokens``, run from an empty cache."""

    def begin(self, prompt: Sequence[int]) -> np.ndarray:
        """Start a sequence from ``prompt``; logits [V] of its last position."""

    def advance(self, token: int) -> np.ndarray:
        """Append one token to the running sequence; logits [V] of it."""


def compare_logits(reference: Runner, candidate: Runner, tokens: "EvalTokens") -> dict:
    """llama.cpp statistics of ``candidate`` against ``reference`` over the scored half of each chunk
    (chunks and scored positions exactly as ``mv4deploy validate`` makes them: validate.evaltext)."""
    import torch
    from mv4deploy.validate.metrics import PositionStats, log_probs, position_stats
    from mv4deploy.validate.stats import summarize
    first = tokens.chunking.first_scored
    parts = []
    for chunk in tokens.tokens:
        ids = chunk.numpy()
        ref = torch.from_numpy(reference.chunk_logits(ids)[first:-1])
        cand = torch.from_numpy(candidate.chunk_logits(ids)[first:-1])
        parts.append(position_stats(log_probs(ref), log_probs(cand), tokens.chunking.targets(chunk)))
    return summarize(PositionStats.concat(parts))


def greedy(runner: Runner, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """``new_tokens`` argmax tokens after ``prompt`` (no EOS stop)."""
    logits = runner.begin(prompt)
    out: list[int] = []
    while True:
        out.append(int(np.argmax(logits)))
        if len(out) == new_tokens:
            return out
        logits = runner.advance(out[-1])


def agreeing_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_greedy(reference: Runner, candidate: Runner, tokens: "EvalTokens", tol: Tolerance) -> dict:
    prompts = [list(map(int, c[: tol.prompt_tokens])) for c in tokens.tokens[: tol.greedy_prompts].tolist()]
    prefixes, samples = [], []
    for prompt in prompts:
        ref = greedy(reference, prompt, tol.greedy_tokens)
        cand = greedy(candidate, prompt, tol.greedy_tokens)
        prefixes.append(agreeing_prefix(ref, cand))
        samples.append({"prompt": prompt, "reference": ref, "export": cand})
    return {"prompts": len(prompts), "prompt_tokens": tol.prompt_tokens, "new_tokens": tol.greedy_tokens,
            "agreeing_prefix": prefixes, "agreeing_prefix_mean": sum(prefixes) / len(prefixes),
            "identical": sum(p == tol.greedy_tokens for p in prefixes), "samples": samples}


def verify(reference: Runner, candidate: Runner, tokens: "EvalTokens", tol: Tolerance) -> dict:
    """Run both checks and judge them against ``tol``; ``failures`` lists each limit that was missed."""
    start = time.perf_counter()
    stats = compare_logits(reference, candidate, tokens)
    gen = compare_greedy(reference, candidate, tokens, tol)
    failures = []
    if not stats["kld_mean"] <= tol.kld_mean_max:
        failures.append(f"mean KLD {stats['kld_mean']:.3g} > {tol.kld_mean_max:g}")
    if not stats["same_top1"] >= tol.top1_min:
        failures.append(f"same top-1 {stats['same_top1']:.4f} < {tol.top1_min:g}")
    if not gen["agreeing_prefix_mean"] >= tol.greedy_prefix_mean_min:
        failures.append(f"greedy agreement {gen['agreeing_prefix_mean']:.2f} tokens < "
                        f"{tol.greedy_prefix_mean_min:g} (of {tol.greedy_tokens})")
    return {
        "eval": {"text": tokens.name, "sha256": tokens.sha256, "chunks": tokens.chunks,
                 "chunk_tokens": tokens.chunking.chunk_tokens, "bos_id": tokens.bos_id},
        "stats": stats, "greedy": gen,
        "limits": {"kld_mean_max": tol.kld_mean_max, "top1_min": tol.top1_min,
                   "greedy_prefix_mean_min": tol.greedy_prefix_mean_min},
        "passed": not failures, "failures": failures, "seconds": round(time.perf_counter() - start, 2),
    }


class TorchRunner:
    """The PyTorch reference: transformers' model with its own KV cache."""

    def __init__(self, model, label: str = "pytorch"):
        self.model, self.label, self._past = model, label, None

    def chunk_logits(self, tokens):
        import torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.as_tensor(np.asarray(tokens, dtype=np.int64)).view(1, -1),
                             use_cache=False)
        return out.logits[0].float().numpy()

    def begin(self, prompt):
        return self._run(list(prompt), None)

    def advance(self, token):
        return self._run([token], self._past)

    def _run(self, ids, past):
        import torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), past_key_values=past, use_cache=True)
        self._past = out.past_key_values
        return out.logits[0, -1].float().numpy()
