"""Engram tables (V4.1): GPU, pinned host RAM, or NVMe through the page cache; lookups are prefetched.

A decoded token gathers ``hash_columns`` rows from each Engram layer's table (V4.1-Flash: 24 rows x
264 B per layer, 48 rows = 12.7 KB per token). The row indices depend only on token ids, so the
gather starts as soon as the token is known and overlaps the layers before the Engram layer; only
the part that outlasts that window adds to the step. Lookup cost per tier:

- GPU: rows x row bytes / GPU bandwidth.
- host: rows x max(row, 64 B cache line) over the host link (UVA gather) + one transfer latency.
- NVMe: one 4 KiB page per row at the drive's random-read rate + one read latency, then the link.

Host RAM left free after placement is page cache for NVMe-resident tables (hot rows stay there);
GPU memory left free could cache hot rows too, but the hit rate of an n-gram table is not in any
profile, so the plan reports that space without counting hits.
"""

from __future__ import annotations

from dataclasses import dataclass

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.plan.costs import Cost
from mv4deploy.plan.groups import Group
from mv4deploy.plan.items import Item, ItemKind, Option, Placed
from mv4deploy.plan.tiers import PAGE_BYTES, Tier, TierKind
from mv4deploy.plan.workload import Workload

CACHE_LINE_BYTES = 64
LIMIT = "Engram lookups (not overlapped)"


def lookup_s(rows: int, row_bytes: int, tier: Tier, gpu: Tier | None, host: Tier | None) -> float:
    """Seconds to gather ``rows`` rows of ``row_bytes`` from ``tier`` into the GPU (or the CPU)."""
    if tier.kind is TierKind.GPU:
        return rows * row_bytes / tier.bandwidth_bytes_per_s
    to_gpu = 0.0
    if gpu is not None and gpu.link_bytes_per_s:
        to_gpu = gpu.latency_s + rows * max(row_bytes, CACHE_LINE_BYTES) / gpu.link_bytes_per_s
    elif host is not None and host.bandwidth_bytes_per_s:
        to_gpu = rows * max(row_bytes, CACHE_LINE_BYTES) / host.bandwidth_bytes_per_s
    if tier.kind is TierKind.HOST:
        return to_gpu
    random = tier.random_read_bytes_per_s or tier.bandwidth_bytes_per_s
    return tier.latency_s + rows * PAGE_BYTES / random + to_gpu


def engram_item(group: Group, workload: Workload, gpu: Tier | None, host: Tier | None, nvme: Tier | None) -> Item:
    row_bytes = group.native_bytes // group.rows
    options = []
    for tier in (gpu, host, nvme):
        reachable = gpu.link_bytes_per_s if gpu is not None else tier is not None and tier.bandwidth_bytes_per_s
        if tier is None or (tier.kind is not TierKind.GPU and not reachable):
            continue
        decode = lookup_s(group.rows_read(workload.batch), row_bytes, tier, gpu, host)
        prefill = lookup_s(group.rows_read(workload.chunk_tokens), row_bytes, tier, gpu, host)
        options.append(Option(tier, group.main_format, group.native_bytes, Cost(decode, "lookup", limit=LIMIT),
                              Cost(prefill, "lookup", limit=LIMIT), 0.0))
    return Item(group.name, ItemKind.ENGRAM, group.cls, group.layer, tuple(options), 1, group)


def exposed_s(lookup: float, window: float) -> float:
    """What a prefetched lookup adds: the part that outlasts the work it overlaps."""
    return max(0.0, lookup - window)


@dataclass(frozen=True)
class EngramTable:
    layer: int
    tier: str
    bytes: int
    rows: int
    lookup_s: float
    overlap_window_s: float
    exposed_s: float


@dataclass(frozen=True)
class EngramUse(JsonResult):
    """The ``engram`` block: where each table lives, per-token traffic, the overlap check."""

    tables: tuple[EngramTable, ...]
    rows_per_token: int
    row_bytes: int
    bytes_per_token: int
    traffic_bytes_per_s: float | None     # filled in by the plan once the decode speed is known
    lookup_s_per_token: float
    exposed_s_per_token: float
    fits_overlap_window: bool
    page_cache_bytes: int
    gpu_free_bytes_for_hot_rows: int


def engram_summary(placed: list[Placed], windows: dict[int, float], free_bytes: dict[str, int]) -> EngramUse:
    tables, lookup_total, exposed_total, fits = [], 0.0, 0.0, True
    for p in placed:
        group, lookup = p.item.group, p.option.decode.seconds
        window = windows.get(p.item.layer, 0.0)
        exposed = exposed_s(lookup, window)
        fits &= lookup <= window
        lookup_total += lookup
        exposed_total += exposed
        tables.append(EngramTable(p.item.layer, p.option.tier.name, p.bytes, group.rows, lookup, window, exposed))
    first = placed[0].item.group
    row_bytes = first.native_bytes // first.rows
    rows = sum(p.item.group.rows_per_token for p in placed)
    on_nvme = any(p.option.tier.kind is TierKind.NVME for p in placed)
    return EngramUse(tuple(tables), rows, row_bytes, rows * row_bytes, None, lookup_total, exposed_total, fits,
                     free_bytes.get("host", 0) if on_nvme else 0,
                     sum(v for k, v in free_bytes.items() if k.startswith("gpu")))
