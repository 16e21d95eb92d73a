"""Tiered KV cache: each pool (per pipeline stage) is a placement item with a GPU and a host option.

Pools read densely at every decode step (V4's sliding window, HCA entries, the indexer keys; GQA K/V)
cost their whole size per step over the host link when kept in host RAM, so they stay on the GPU
unless nothing else fits. Pools read through a top-k selection (V4's CSA entries, V3.2's MLA latents)
only fetch the selected entries per step, ``index_topk`` entries per layer, plus one transfer latency
per layer: in host RAM they cost little and free GPU memory for weights. The placement weighs the two
like any other item; the plan then reports the GPU bytes saved and the time added per decode step.
A prefill chunk needs every entry of a host-tiered pool on the GPU once: pool bytes over the link.
Per-sequence compressor state (fp32 running sums) is a small pool of its own, always read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.model.kv import CacheFormat, KVLayout, KVPool
from mv4deploy.plan.costs import Cost, UNAVAILABLE
from mv4deploy.plan.items import Item, ItemKind, Option, Placed
from mv4deploy.plan.tiers import Tier, TierKind
from mv4deploy.plan.workload import Workload

STATE_POOL = "compressor_state"
STATE_FORMAT = "f32"                                           # the compressor's running sums
POOL_FORMATS = {f"kv-{fmt.value}": fmt for fmt in CacheFormat}  # a pool option's format -> its cache format


@dataclass(frozen=True)
class PoolPart:
    """The layers of one pool that one GPU (pipeline stage) holds."""

    pool: KVPool | None          # None: the per-sequence compressor state
    layers: int                  # layers of the pool in this part
    gpu: Tier | None


def _pool_bytes(pool: KVPool | None, layout: KVLayout, part_layers: int, workload: Workload) -> tuple[int, int]:
    """(resident bytes, bytes read per decode step) of ``part_layers`` layers of the pool, whole batch."""
    if pool is None:
        return layout.fixed_bytes_per_sequence * workload.batch, layout.fixed_bytes_per_sequence * workload.batch
    share = part_layers / len(pool.layers)
    resident = pool.bytes(workload.context_tokens, workload.batch) * share
    read = pool.read_bytes_per_step(workload.context_tokens) * workload.batch * share
    return round(resident), round(read)


def _host_cost(read_bytes: float, layers: int, host: Tier, gpu: Tier | None) -> Cost:
    if gpu is None:                                      # CPU-only machine: the CPU reads its own RAM
        if not host.bandwidth_bytes_per_s:
            return UNAVAILABLE
        return Cost(read_bytes / host.read_bytes_per_s("kv"), "cpu", limit="host bandwidth")
    if not gpu.link_bytes_per_s:
        return UNAVAILABLE
    return Cost(read_bytes / gpu.link_bytes_per_s + layers * gpu.latency_s, "fetch", limit="host link (KV fetch)")


def kv_item(part: PoolPart, layout: KVLayout, workload: Workload, host: Tier | None, replicas: int = 1) -> Item:
    """``replicas``: copies a sharded GPU tier keeps (MLA / V4's single KV head is replicated across
    tensor-parallel ranks; each rank reads its own copy, in parallel)."""
    resident, read = _pool_bytes(part.pool, layout, part.layers, workload)
    name = part.pool.name if part.pool is not None else STATE_POOL
    fmt = f"kv-{layout.cache_format.value}" if part.pool is not None else STATE_FORMAT
    options = []
    if part.gpu is not None:
        gpu_cost = Cost(read * replicas / part.gpu.read_bytes_per_s("kv"), "gpu", limit=f"{part.gpu.name} bandwidth")
        options.append(Option(part.gpu, fmt, resident * replicas, gpu_cost, Cost(0.0, "gpu", limit=gpu_cost.limit),
                              gpu_cost.seconds))
    if host is not None:
        decode = _host_cost(read, part.layers, host, part.gpu)
        prefill = _host_cost(resident, part.layers, host, part.gpu)
        if decode is not UNAVAILABLE:
            options.append(Option(host, fmt, resident, decode, prefill, decode.seconds))
    return Item(name, ItemKind.KV, None, None, tuple(options))


def kv_items(layout: KVLayout, workload: Workload, stage_layers: list[tuple[Tier | None, set[int]]],
             host: Tier | None, replicas: int = 1) -> list[Item]:
    """One item per pool per stage (``stage_layers``: each GPU with the layers it runs)."""
    items = []
    for gpu, layers in stage_layers:
        for pool in layout.pools:
            count = sum(1 for layer in pool.layers if layer in layers)
            if count:
                items.append(kv_item(PoolPart(pool, count, gpu), layout, workload, host, replicas))
        if layout.fixed_bytes_per_sequence and gpu is stage_layers[0][0]:
            items.append(kv_item(PoolPart(None, 1, gpu), layout, workload, host, replicas))
    return items


def cache_format(option: Option) -> CacheFormat | None:
    """The cache format of a KV pool's option (None: another item, or the compressor state)."""
    return POOL_FORMATS.get(option.format)


PoolUse = NamedTuple("PoolUse", [("name", str), ("tier", str), ("bytes", int)])


@dataclass(frozen=True)
class KvCacheUse(JsonResult):
    """The ``kv_cache`` block of the plan: pools with their tiers, GPU bytes saved by host tiering and the
    decode time per step that costs (host fetch minus what the GPU read would have taken)."""

    pools: tuple[PoolUse, ...]
    gpu_bytes_saved: int
    added_s_per_token: float


def kv_summary(placed: list[Placed]) -> KvCacheUse:
    pools, saved, added = [], 0, 0.0
    for p in placed:
        pools.append(PoolUse(p.item.name, p.option.tier.name, p.bytes))
        if p.option.tier.kind is TierKind.HOST:
            gpu = p.item.option(TierKind.GPU)
            if gpu is not None:
                saved += gpu.bytes
                added += p.option.decode.seconds - gpu.decode.seconds
    return KvCacheUse(tuple(pools), saved, added)
