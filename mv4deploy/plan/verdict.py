"""Verdict of a placement, and the smallest changes that would make it better.

- ``fits``: every weight, KV pool and Engram table on the GPUs (or the phone's NPU budget).
- ``fits_with_offload``: some in host RAM (weights run on the CPU or stream to the GPU, KV pools
  fetched by top-k); Engram tables may also live on NVMe, since their few rows per token are prefetched.
- ``does_not_fit``: a GPU's workspace and reserve alone exceed it, something has no room anywhere, or
  weights read every step would have to come from NVMe (tables read a few rows per token, the
  embedding and Engram, may live there).

Suggestions are re-plans with one change each, cheapest change first (a policy is a flag, context a
setting, RAM a purchase, another profile another machine, the distillate another model); only those
that improve the verdict or speed decode up by ``SPEEDUP`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from math import ceil

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.plan.items import ItemKind
from mv4deploy.plan.placement import Placement
from mv4deploy.plan.tiers import TierKind

SPEEDUP = 1.25
HOST_SIZES_GIB = (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
DISTILLATE = "deepseek-r1-distill-qwen-7b"
MIN_CONTEXT = 4096


class Verdict(str, Enum):
    FITS = "fits"
    FITS_WITH_OFFLOAD = "fits_with_offload"
    DOES_NOT_FIT = "does_not_fit"

    @property
    def rank(self) -> int:
        return list(Verdict).index(self)


def verdict_of(placement: Placement, workspace_fits: bool, has_gpu: bool = True) -> Verdict:
    """``has_gpu`` False (a CPU-only profile): the host is the fast tier, so all in RAM ``fits``."""
    if not workspace_fits or placement.unplaced:
        return Verdict.DOES_NOT_FIT
    if any(p.option.tier.kind is TierKind.NVME and not row_table(p.item) for p in placement.placed):
        return Verdict.DOES_NOT_FIT
    home = TierKind.GPU if has_gpu else TierKind.HOST
    if all(p.option.tier.kind is home for p in placement.placed):
        return Verdict.FITS
    return Verdict.FITS_WITH_OFFLOAD


def row_table(item) -> bool:
    """An item a token reads a few rows of (Engram tables, the embedding): fine on NVMe."""
    group = item.group
    return item.kind is ItemKind.ENGRAM or (group is not None and group.rows and group.row_bytes == group.native_bytes)


def host_needed_bytes(placement: Placement, host_used_bytes: int) -> int:
    """Host RAM that would hold what now sits on NVMe (Engram excepted) or nowhere."""
    spill = sum(p.bytes for p in placement.placed if p.option.tier.kind is TierKind.NVME and not row_table(p.item))
    spill += sum(p.bytes for p in placement.unplaced if p.option is not None)
    return host_used_bytes + spill


def round_up_host(nbytes: int) -> int | None:
    gib = ceil(nbytes / 2**30)
    return next((size * 2**30 for size in HOST_SIZES_GIB if size >= gib), None)


@dataclass(frozen=True)
class Change:
    """One re-plan to try: a label for the user, what it changes, how costly a change it is."""

    label: str
    kind: str            # "policy" | "context" | "host_memory" | "profile" | "model"
    kwargs: dict


def improves(base_verdict: Verdict, base_tps: float, verdict: Verdict, tps: float) -> bool:
    """A better verdict, or the same fitting verdict at least ``SPEEDUP`` faster (a plan that still does not
    fit is no help, however fast its estimate)."""
    if verdict is Verdict.DOES_NOT_FIT:
        return False
    if verdict.rank < base_verdict.rank:
        return True
    return verdict is base_verdict and tps >= SPEEDUP * max(base_tps, 1e-12)


@dataclass(frozen=True)
class Suggestion(JsonResult):
    """One change that would make the plan better, with the verdict and speed it would give."""

    change: str
    kind: str
    verdict: Verdict
    decode_tokens_per_s: float
    why: str


def suggestion(change: Change, verdict: Verdict, decode_tps: float, why: str) -> Suggestion:
    return Suggestion(change.label, change.kind, verdict, decode_tps, why)
