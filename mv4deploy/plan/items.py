"""Placement items: a weight group, a KV pool or an Engram table, with what it costs on each tier.

An ``Option`` is one tier an item may live on: its resident bytes there, its format, and the cost of one
decode step and one prefill chunk (``costs.Cost``). Options are listed fastest tier first. Routed
experts are divisible (``units`` = experts): the placement may cut a layer's experts at an expert
boundary, so a GPU is filled to the byte instead of to the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mv4deploy.plan.costs import UNAVAILABLE, Cost, Work, attention_flops, ep_imbalance, mean_attention_flops, \
    on_gpu, on_host, on_nvme
from mv4deploy.plan.groups import Group, GroupClass
from mv4deploy.plan.policy import Policy, main_format
from mv4deploy.plan.tiers import Tier, TierKind
from mv4deploy.plan.workload import ACTIVATION_BYTES, Workload
from mv4deploy.formats import FORMATS

NO_LINK = Tier("no-stream", TierKind.GPU, (), None)   # a GPU tier that cannot receive streamed weights


class ItemKind(str, Enum):
    WEIGHTS = "weights"
    KV = "kv_cache"
    ENGRAM = "engram"


@dataclass(frozen=True)
class Option:
    tier: Tier
    format: str
    bytes: int
    decode: Cost              # one decode step of the batch
    prefill: Cost             # one prefill chunk
    bound_decode_s: float     # what the fractional bound charges (Engram lookups: 0, they overlap)


@dataclass(frozen=True)
class Item:
    name: str
    kind: ItemKind
    cls: GroupClass | None    # the weight group's or Engram table's class; None for a KV pool
    layer: int | None
    options: tuple[Option, ...]
    units: int = 1            # > 1: may be cut into whole units (experts)
    group: Group | None = None

    def option(self, kind: TierKind) -> Option | None:
        return next((o for o in self.options if o.tier.kind is kind), None)


@dataclass(frozen=True)
class Placed:
    item: Item
    option: Option
    start: int = 0            # unit range [start, stop) when the item was cut
    stop: int = 1

    @property
    def fraction(self) -> float:
        return (self.stop - self.start) / self.item.units

    @property
    def name(self) -> str:
        if self.item.units > 1 and (self.start, self.stop) != (0, self.item.units):
            return f"{self.item.name}[{self.start}:{self.stop}]"
        return self.item.name

    @property
    def bytes(self) -> int:
        units, total = self.item.units, self.option.bytes     # telescopes: the pieces sum to the whole
        return total * self.stop // units - total * self.start // units

    @property
    def decode_s(self) -> float:
        return self.option.decode.seconds * self.fraction

    @property
    def prefill_s(self) -> float:
        return self.option.prefill.seconds * self.fraction


def scaled(cost: Cost, factor: float, extra_s: float = 0.0) -> Cost:
    if factor == 1.0 and not extra_s:
        return cost
    return Cost(cost.seconds * factor + extra_s, cost.mode, cost.compute_known, cost.limit)


def _compute(fmt: str) -> str:
    return FORMATS[fmt].compute if fmt in FORMATS else "bf16"


@dataclass(frozen=True)
class GroupWork:
    """What a weight group asks of whichever tier holds it, under one policy and workload: its resident bytes
    and format, and the work of one decode step and one prefill chunk. The same for every engine and layout,
    so the planner works it out once per grouping (``planner.group_works``)."""

    resident: int
    format: str
    decode: Work
    prefill: Work


def group_work(group: Group, policy: Policy, spec, workload: Workload) -> GroupWork:
    resident = group.resident_bytes(policy.target)
    fmt = main_format(group, policy)
    compute = _compute(fmt)
    batch, chunk, context = workload.batch, workload.chunk_tokens, workload.context_tokens
    attn_d = attn_p = 0.0
    if group.cls is GroupClass.ATTENTION and group.layer is not None:
        attn_d, attn_p = attention_flops(spec, group.layer, context), mean_attention_flops(spec, group.layer, context)
    decode = Work(resident * group.touched_fraction(batch), batch * (group.flops_per_token + attn_d), compute, resident)
    prefill = Work(resident * group.touched_fraction(chunk), chunk * (group.flops_per_token + attn_p), compute, resident)
    return GroupWork(resident, fmt, decode, prefill)


def weight_item(group: Group, work: GroupWork, spec, workload: Workload, gpu: Tier | None, host: Tier | None,
                nvme: Tier | None, shards: int = 1, stream_prefill: bool = True, cache: dict | None = None) -> Item:
    """Options on the group's GPU, host RAM and NVMe with their roofline costs. ``shards`` > 1: the GPU tier
    is sharded over that many GPUs and routed experts spread whole over them pay the expert-parallel imbalance.
    ``stream_prefill`` False: no stream buffer on the GPU, so prefill runs host-resident weights on the CPU.
    ``cache``: options already priced for identical work on the same tiers (layers repeat; one machine)."""
    cache = {} if cache is None else cache
    imbalance = 1.0
    if group.experts and shards > 1:
        imbalance = ep_imbalance(round(workload.batch * group.expert_probability * group.experts), shards)
    key = (work, imbalance, gpu.name if gpu else None, stream_prefill)
    options = cache.get(key)
    if options is None:
        costs = _costs(work.decode, work.prefill, imbalance, spec, workload, gpu, host, nvme, stream_prefill)
        options = cache[key] = tuple(Option(tier, work.format, work.resident, d, p, d.seconds) for tier, d, p in costs)
    units = group.experts if group.cls is GroupClass.ROUTED_EXPERTS and group.experts > 1 else 1
    return Item(group.name, ItemKind.WEIGHTS, group.cls, group.layer, options, units, group)


def _costs(decode: Work, prefill: Work, imbalance: float, spec, workload: Workload, gpu: Tier | None,
           host: Tier | None, nvme: Tier | None, stream_prefill: bool) -> tuple[tuple[Tier, Cost, Cost], ...]:
    out = []
    if gpu is not None:
        out.append((gpu, scaled(on_gpu(decode, gpu), imbalance), on_gpu(prefill, gpu)))
    hop_d = workload.batch * spec.hidden_size * ACTIVATION_BYTES
    hop_p = workload.chunk_tokens * spec.hidden_size * ACTIVATION_BYTES
    # no stream buffer: prefill runs host-resident weights on the CPU, where the engine can (an engine that
    # only streams offloaded weights, vLLM's --cpu-offload-gb, streams them for prefill as for decode)
    no_stream = NO_LINK if gpu is not None and not stream_prefill and host is not None and host.can_execute \
        else None
    if host is not None:
        out.append((host, on_host(decode, host, gpu, activation_bytes=hop_d),
                    on_host(prefill, host, gpu, activation_bytes=hop_p, stream_gpu=no_stream)))
    if nvme is not None and host is not None:
        out.append((nvme, on_nvme(decode, nvme, host, gpu, hop_d),
                    on_nvme(prefill, nvme, host, gpu, hop_p, no_stream)))
    return tuple(c for c in out if c[1] is not UNAVAILABLE)
