"""Decode and prefill speed of a placement, the bottleneck, and the bound.

A decode step of B sequences costs the sum of its placed items' decode costs (each a roofline on the
tier that holds it, hops included), the crossings between GPUs, and the part of the Engram lookups
that outlasts the layers before each Engram layer. Prefill runs chunk by chunk: time to first token
for a prompt that fills the context is (context / chunk) chunk times; Engram rows for the next chunk are
fetched during the current one. Prefill is not estimated when a tier that computes has no compute figure
in its profile (a phone NPU): the planner does not guess.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from math import inf, isfinite

from mv4deploy.plan.engram import exposed_s
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.items import ItemKind, Placed
from mv4deploy.plan.placement import Placement

INTERCONNECT = "GPU interconnect"
OVERHEAD = "runtime overhead"


@dataclass(frozen=True)
class Estimates:
    decode_step_s: float
    decode_tokens_per_s: float
    prefill_chunk_s: float | None
    prefill_tokens_per_s: float | None
    time_to_first_token_s: float | None
    bottleneck: str
    bound_decode_tokens_per_s: float
    by_resource_s: dict[str, float] = field(default_factory=dict)
    engram_windows_s: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"decode_tokens_per_s": self.decode_tokens_per_s, "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "time_to_first_token_s": self.time_to_first_token_s, "bottleneck": self.bottleneck,
                "bound_decode_tokens_per_s": self.bound_decode_tokens_per_s}


def _windows(placed: list[Placed], layers: int) -> dict[int, float]:
    """Decode time before each layer starts: the embedding, earlier layers' weights and their KV share."""
    per_layer: dict[int, float] = defaultdict(float)
    before_all = kv_total = 0.0
    for p in placed:
        if p.item.kind is ItemKind.KV:
            kv_total += p.decode_s
        elif p.item.kind is ItemKind.WEIGHTS and p.item.layer is not None:
            per_layer[p.item.layer] += p.decode_s
        elif p.item.kind is ItemKind.WEIGHTS and p.item.cls is GroupClass.EMBEDDING:
            before_all += p.decode_s
    windows, running = {}, before_all
    for layer in range(layers):
        windows[layer] = running + kv_total * layer / max(layers, 1)
        running += per_layer.get(layer, 0.0)
    return windows


def _engram_exposed(placed: list[Placed], windows: dict[int, float], prefill_s: float) -> tuple[float, float]:
    decode = sum(exposed_s(p.option.decode.seconds, windows.get(p.item.layer, 0.0)) for p in placed)
    prefill = sum(exposed_s(p.option.prefill.seconds, prefill_s) for p in placed)
    return decode, prefill


def estimate(placement: Placement, layers: int, workload, crossing_decode_s: float, crossing_prefill_s: float,
             bound_s: float, overhead_decode_s: float = 0.0, overhead_prefill_s: float = 0.0,
             prefill_efficiency: float = 1.0) -> Estimates:
    """``overhead_*_s``: the engine's fixed time per decode step / prefill chunk (``costs.overhead_s``,
    ``costs.prefill_overhead_s``); it adds to every placement alike, the bound included. A prefill chunk's
    roofline is divided by ``prefill_efficiency`` (the fraction of it the engine reaches)."""
    placed = list(placement.placed)
    engram = [p for p in placed if p.item.kind is ItemKind.ENGRAM]
    rest = [p for p in placed if p.item.kind is not ItemKind.ENGRAM]
    resources: dict[str, float] = defaultdict(float)
    for p in rest:
        resources[p.option.decode.limit or p.option.tier.name] += p.decode_s
    if crossing_decode_s:
        resources[INTERCONNECT] += crossing_decode_s
    if overhead_decode_s:
        resources[OVERHEAD] += overhead_decode_s
    windows = _windows(rest, layers)
    prefill_s = (sum(p.prefill_s for p in rest) + crossing_prefill_s) / prefill_efficiency + overhead_prefill_s
    engram_decode, engram_prefill = _engram_exposed(engram, windows, prefill_s)
    if engram_decode:
        resources[engram[0].option.decode.limit] += engram_decode
    step = sum(resources.values()) if not placement.unplaced else inf
    prefill_known = all(p.option.prefill.compute_known for p in rest) and isfinite(prefill_s)
    chunk = prefill_s + engram_prefill if prefill_known and not placement.unplaced else None
    batch, tokens = workload.batch, workload.context_tokens
    return Estimates(
        decode_step_s=step,
        decode_tokens_per_s=batch / step if step and isfinite(step) else 0.0,
        prefill_chunk_s=chunk,
        prefill_tokens_per_s=workload.chunk_tokens / chunk if chunk else None,
        time_to_first_token_s=tokens / workload.chunk_tokens * chunk if chunk else None,
        bottleneck=_bottleneck(resources, step, placement),
        bound_decode_tokens_per_s=bound_tps(batch, bound_s + crossing_decode_s + overhead_decode_s, placement),
        by_resource_s=dict(resources), engram_windows_s=windows)


def bound_tps(batch: int, bound_s: float, placement: Placement) -> float:
    """No placement respects the capacities when something is unplaced: the bound is then 0."""
    return batch / bound_s if bound_s > 0 and not placement.unplaced else 0.0


def _bottleneck(resources: dict[str, float], step: float, placement: Placement) -> str:
    if placement.unplaced:
        return "capacity: not every weight fits in GPU, host RAM and NVMe"
    if not resources:
        return "none"
    name, seconds = max(sorted(resources.items()), key=lambda kv: kv[1])
    return f"{name}: {_ms(seconds)} of {_ms(step)} ms per decode step"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"
