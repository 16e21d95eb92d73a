"""Long-context checks (``validate --contexts 2k,8k,32k``): the same tokens scored with more and more context.

Short chunks hide damage that only long-range attention sees: V4's compressed attention (CSA every 4
tokens, HCA every 128) adds nothing until a query is past its first compressed block, and a quantized V4
that is fine at 4K can fall apart at 16K. So for each length L the text is cut into windows that all
*end at the same token*, and the last S = min(L)/2 positions of every window are scored (S tokens with
at least L - S tokens of context before them)::

    text   ........................................|e_j          e_j = (j + 1) * max(L), j < windows
    L=128                                  [------][S]           window = tokens e_j - L .. e_j - 1
    L=2048           [-----------------------------][S]          same S targets, 16x the context

Every length scores exactly the same targets, so a change in a statistic with L is the effect of context
alone, not of the text. BOS (when the tokenizer adds one) replaces the first token of each window, as in
the short chunks. Per length: llama.cpp's statistics (``stats.summarize``); growth is measured against
the shortest length: KLD mean as a difference, PPL(Q)/PPL(base) as a ratio, same-top-1 as a drop.

Gate keys (the longest length against the shortest): ``context_kld_mean_growth``,
``context_ppl_ratio_growth``, ``context_top1_drop``, and ``context_ppl_base_growth`` (the reference's own
PPL ratio, long / short: below 1 when the reference uses the longer context).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mv4deploy.core.errors import InputError
from mv4deploy.validate.metrics import PositionStats, log_probs, position_stats
from mv4deploy.validate.stats import summarize

DEFAULT_WINDOWS = 4
MIN_CONTEXT = 8
PER_LENGTH_KEYS = ("tokens_scored", "kld_mean", "kld_mean_unc", "kld_p99", "kld_max", "same_top1",
                   "ppl_base", "ppl_q", "ppl_ratio", "delta_p_rms")
GROWTH_KEYS = ("context_kld_mean_growth", "context_ppl_ratio_growth", "context_top1_drop",
               "context_ppl_base_growth")
_LENGTH = re.compile(r"^(\d+)([kK]?)$")


def parse_contexts(text: str) -> tuple[int, ...]:
    """``"2k,8k,32k"`` -> (2048, 8192, 32768); ``"128,1024"`` as written. Sorted, without repeats."""
    lengths = []
    for item in (s.strip() for s in str(text).split(",")):
        match = _LENGTH.match(item)
        if not match:
            raise InputError(None, "--contexts", item, "a length is a token count such as 512 or 8k (k = 1024)")
        tokens = int(match.group(1)) * (1024 if match.group(2) else 1)
        if tokens < MIN_CONTEXT or tokens % 2:
            raise InputError(None, "--contexts", item, f"a length is an even count of at least {MIN_CONTEXT} tokens")
        lengths.append(tokens)
    return tuple(sorted(set(lengths)))


def text_ids(path, tokenizer) -> Tensor:
    """The whole eval text as token ids ``[T]`` (no special tokens, as the short chunks are cut from)."""
    from mv4deploy.validate.evaltext import read_text
    from pathlib import Path
    ids = tokenizer(read_text(Path(path)), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


@dataclass(frozen=True)
class ContextWindows:
    """The windows of every length: ``ends`` [W] exclusive end positions in the text, ``scored`` = S."""
    ids: Tensor            # [T] the whole eval text, no special tokens
    lengths: tuple[int, ...]
    ends: tuple[int, ...]
    scored: int
    bos_id: int | None

    def window(self, length: int, end: int) -> Tensor:
        tokens = self.ids[end - length: end].clone()   # [L]
        if self.bos_id is not None:
            tokens[0] = self.bos_id
        return tokens


def make_windows(ids: Tensor, lengths: tuple[int, ...], windows: int, bos_id: int | None,
                 where: str = "--eval") -> ContextWindows:
    """``windows`` windows per length, ending at multiples of the longest length (as many as the text has)."""
    longest = lengths[-1]
    fit = ids.numel() // longest
    if fit < 1:
        raise InputError(where, "--contexts", longest, f"the eval text has {ids.numel()} tokens, fewer than the "
                                                        "longest context; give a longer text or a shorter length")
    ends = tuple(longest * (j + 1) for j in range(min(windows, fit)))
    return ContextWindows(ids, lengths, ends, lengths[0] // 2, bos_id)


Progress = Callable[[str, int], object]


def score_contexts(reference, candidate, cw: ContextWindows, progress: Progress,
                   confidence: float = 0.95) -> dict:
    """Per-length statistics and their growth: ``{"lengths": [...], "windows": W, "scored_per_window": S,
    "per_length": [{...}], **growth}``; ``reference``/``candidate`` are ``backends.LogitsSource``s."""
    rows = []
    for length in cw.lengths:
        with progress(f"context {length}: scoring {len(cw.ends)} windows", len(cw.ends)) as advance:
            parts = []
            for end in cw.ends:
                parts.append(_score_window(reference, candidate, cw, length, end))
                advance(1)
        summary = summarize(PositionStats.concat(parts), confidence)
        rows.append({"context_tokens": length, **{k: summary[k] for k in PER_LENGTH_KEYS}})
    _add_growth(rows)
    return {"lengths": list(cw.lengths), "windows": len(cw.ends), "scored_per_window": cw.scored,
            "per_length": rows, **growth(rows)}


def _score_window(reference, candidate, cw: ContextWindows, length: int, end: int) -> PositionStats:
    tokens = cw.window(length, end)
    keep = cw.scored + 1                       # logits at L-S-1 .. L-2 predict tokens L-S .. L-1
    targets = tokens[length - cw.scored:]
    lp = log_probs(reference.last_logits(tokens, keep)[:-1])
    lq = log_probs(candidate.last_logits(tokens, keep)[:-1])
    return position_stats(lp, lq, targets)


def _add_growth(rows: list[dict]) -> None:
    short = rows[0]
    for row in rows:
        row["kld_mean_growth"] = row["kld_mean"] - short["kld_mean"]
        row["ppl_ratio_growth"] = row["ppl_ratio"] / short["ppl_ratio"]
        row["top1_drop"] = short["same_top1"] - row["same_top1"]


def growth(rows: list[dict] | None) -> dict:
    """The gate keys: the longest length against the shortest (every key None without ``--contexts``)."""
    if not rows:
        return dict.fromkeys(GROWTH_KEYS)
    short, long = rows[0], rows[-1]
    return {"context_kld_mean_growth": long["kld_mean"] - short["kld_mean"],
            "context_ppl_ratio_growth": long["ppl_ratio"] / short["ppl_ratio"],
            "context_top1_drop": short["same_top1"] - long["same_top1"],
            "context_ppl_base_growth": long["ppl_base"] / short["ppl_base"]}
